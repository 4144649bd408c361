"""The benchmark's result files, and its progress display.

DIR/trajectories.npz   per function: points, gaps, diverged_at (stacked over optimizers) and
                       the gap on a grid over the plotting window; what the figures are
                       drawn from (`plots.draw_all(DIR)` redraws them without rerunning)
DIR/run.json           settings, functions (domain, window, minima, f*), optimizers, search
                       ranges, timings
DIR/tuning.json        every tuning trial and the chosen hyperparameters
DIR/summary.{csv,json,md}
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimlab.atomic import atomic_path, write_csv, write_json, write_text
from optimlab.surfaces.batched import Variant
from optimlab.surfaces.functions import Surface, grid
from optimlab.surfaces.metrics import COLUMNS, gaps_and_distances
from optimlab.surfaces.runner import Block, Trajectories

GRID = 160  # grid points per axis for the surface and contour plots


class Progress:
    """A rich progress bar on stderr, one phase at a time (a no-op when disabled)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._total = 0

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def phase(self, description: str, total: int) -> None:
        if self._bar is not None:
            if self._task is not None:
                self._bar.update(self._task, completed=self._total)
            self._task = self._bar.add_task(description, total=total)
            self._total = total

    def update(self, completed: int) -> None:
        if self._bar is not None and (completed % 25 == 0 or completed == self._total):
            self._bar.update(self._task, completed=completed)


def write_all(
    out: Path,
    surfaces: list[Surface],
    variants: list[Variant],
    blocks: list[Block],
    results: list[Trajectories],
    rows: list[dict[str, Any]],
    tuned: dict[tuple[str, str], dict[str, Any]],
    settings: dict[str, Any],
    timings: dict[str, float],
    bar: Progress,
    started: float,
) -> None:
    """Write every result file into `out`, then draw the figures from them."""
    from optimlab.surfaces import plots

    out.mkdir(parents=True, exist_ok=True)
    write_trajectories(out / "trajectories.npz", surfaces, blocks, results)
    run = {
        "settings": settings,
        "functions": [describe(s) for s in surfaces],
        "optimizers": [v.name for v in variants],
        "search": {v.name: v.search for v in variants},
        "timings": timings,
    }
    write_json(out / "run.json", run)
    write_json(
        out / "tuning.json",
        {f"{f}/{o}": entry for (f, o), entry in tuned.items()},
    )
    write_summary(out, rows, settings)
    figures_started = time.perf_counter()
    plots.draw_all(out, bar)
    run["timings"] = {
        **timings,
        "figures_s": time.perf_counter() - figures_started,
        "total_s": time.perf_counter() - started,
    }
    write_json(out / "run.json", run)


def describe(surface: Surface) -> dict[str, Any]:
    return {
        "name": surface.name,
        "description": surface.description,
        "domain": surface.domain,
        "window": surface.window,
        "minima": surface.minima,
        "value": surface.value,
        "start": surface.start,
        "log_scale": surface.log_scale,
    }


def write_trajectories(
    path: Path, surfaces: list[Surface], blocks: list[Block], results: list[Trajectories]
) -> None:
    """Per function, arrays stacked over optimizers (in the order run.json lists them)."""
    arrays: dict[str, np.ndarray] = {}
    for surface in surfaces:
        mine = [(b, r) for b, r in zip(blocks, results, strict=True) if b.surface is surface]
        gaps = [gaps_and_distances(surface, r)[0] for _, r in mine]
        arrays[f"{surface.name}/points"] = np.stack([r.points.numpy() for _, r in mine])
        arrays[f"{surface.name}/gaps"] = np.stack(gaps)
        arrays[f"{surface.name}/diverged_at"] = np.stack([r.diverged_at.numpy() for _, r in mine])
        xs, ys = grid(surface.window, GRID)
        with torch.no_grad():
            zs = (surface.fn(xs, ys) - surface.value).clamp_min(0)
        arrays[f"{surface.name}/grid"] = torch.stack([xs, ys, zs]).numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_summary(out: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    write_csv(out / "summary.csv", rows, COLUMNS)
    write_json(out / "summary.json", {"rows": [{k: row[k] for k in COLUMNS} for row in rows]})
    write_text(out / "summary.md", markdown(rows, settings))


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """The summary as a Markdown table, with the settings that produced it."""
    tuning = (
        f"lr{' and momentum' if any(r['momentum'] is not None for r in rows) else ''} tuned "
        f"with {settings['tune_trials']} Optuna trials on {settings['tune_starts']} separate "
        "start points"
        if settings["tune_trials"]
        else "hyperparameters given, not tuned"
    )
    lines = [
        "# Surfaces benchmark",
        "",
        f"{settings['steps']} steps from {settings['starts']} start points per function "
        f"(the canonical start, then a Sobol spread); {tuning}; gradient noise "
        f"{settings['noise']:g}; seed {settings['seed']}. Success: final point within "
        f"{settings['tol']:g} of a global minimum. Gap: f - f* at the last step, median "
        "[25%, 75%] over starts (inf: diverged runs).",
        "",
        "| function | optimizer | lr | momentum | final gap median [25%, 75%] | success "
        "| steps to tol | diverged |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        gaps = f"{_g(r['final_gap_median'])} [{_g(r['final_gap_q25'])}, {_g(r['final_gap_q75'])}]"
        lines.append(
            f"| {r['function']} | {r['optimizer']} | {_g(r['lr'])} | {_g(r['momentum'])} "
            f"| {gaps} | {r['success_rate']:.0%} | {_g(r['steps_to_tol_median'])} "
            f"| {r['diverged']}/{r['starts']} |"
        )
    return "\n".join(lines) + "\n"


def _g(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"
