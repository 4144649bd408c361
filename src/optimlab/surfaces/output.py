"""The benchmark's result files, and its progress display.

DIR/trajectories.npz   per function: points, gaps, diverged_at (stacked over optimizers) and
                       the gap on a grid over the plotting window; what the figures are
                       drawn from (`plots.draw_all(DIR)` redraws them without rerunning)
DIR/run.json           settings, functions (domain, window, minima, f*), optimizers, search
                       ranges, timings
DIR/tuning.json        every tuning trial and the chosen hyperparameters
DIR/summary.{csv,json,md}
DIR/state.json         the config the directory belongs to, each finished tuning round and,
                       once every file above is written, the rows: a rerun with the same
                       config resumes from it, one with another config is refused
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimlab.atomic import (
    atomic_path,
    is_temporary,
    remove_temporary_files,
    write_csv,
    write_json,
    write_text,
)
from optimlab.errors import UsageError
from optimlab.surfaces.batched import Variant
from optimlab.surfaces.functions import Surface, grid
from optimlab.surfaces.metrics import COLUMNS, gaps_and_distances
from optimlab.surfaces.runner import Block, Trajectories

GRID = 160  # grid points per axis for the surface and contour plots
STATE = "state.json"
KIND = "optimlab surfaces"
RESULTS = ["run.json", "tuning.json", "trajectories.npz", "summary.csv", "summary.json",
           "summary.md"]  # fmt: skip


@dataclass
class State:
    """A run's progress in DIR/state.json, rewritten atomically after each step."""

    path: Path
    config: dict[str, Any]
    rounds: list[dict[str, list[dict[str, Any]]]] = field(default_factory=list)
    rows: list[dict[str, Any]] | None = None  # set once every result file is written

    def save(self) -> None:
        # Plain json (not write_json): infinite gaps must read back as inf, not null.
        state = {"kind": KIND, "config": self.config, "rounds": self.rounds, "rows": self.rows}
        write_text(self.path, json.dumps(state) + "\n")

    def add_round(self, k: int, trials: dict[str, list[dict[str, Any]]]) -> None:
        self.rounds[k:] = [trials]
        self.save()

    def finish(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.save()

    def finished(self) -> bool:
        """Every result file is there: nothing to do (figures: `plots.draw_all(DIR)`)."""
        return self.rows is not None and all((self.path.parent / n).is_file() for n in RESULTS)


def claim(out: Path, config: dict[str, Any], *, create: bool = True) -> State:
    """The state of `out` for a run of `config`: a new one for a missing or empty directory
    (saved there with `create`), the saved one for the same config; UsageError for a
    different config or a directory with other files."""
    config = json.loads(json.dumps(config))  # as it reads back (lists, not tuples)
    path = out / STATE
    if not path.exists():
        if out.exists() and any(not is_temporary(p.name) for p in out.iterdir()):
            raise UsageError(
                f"{out} is not empty and holds no surfaces run; use an empty or new --out"
            )
        state = State(path, config)
        if create:
            state.save()
        return state
    try:
        saved = json.loads(path.read_text())
        usable = (
            saved.get("kind") == KIND
            and isinstance(saved.get("config"), dict)
            and isinstance(saved.get("rounds"), list)
            and isinstance(saved.get("rows"), list | None)
        )
    except (OSError, ValueError, AttributeError):
        usable = False
    if not usable:
        raise UsageError(f"{path} is not a readable surfaces run state; use another --out")
    remove_temporary_files(out)  # a kill mid-write left them; this run rewrites those files
    state = State(path, saved["config"], saved["rounds"], saved["rows"])
    changed = [k for k in config | state.config if config.get(k) != state.config.get(k)]
    if changed:
        differences = "; ".join(
            f"{k}: {state.config.get(k)!r} there, {config.get(k)!r} now" for k in changed
        )
        raise UsageError(
            f"{out} holds a surfaces run with a different config ({differences}); "
            "rerun with the same options or use another --out"
        )
    return state


def round_record(asked: dict, scores: dict) -> dict[str, list[dict[str, Any]]]:
    """A tuning round as saved: per "function/optimizer", each trial's params and score."""
    return {
        f"{f}/{o}": [
            {"params": t.params, "score": s} for t, s in zip(ts, scores[f, o], strict=True)
        ]
        for (f, o), ts in asked.items()
    }


def saved_scores(asked: dict, saved: Mapping[str, list[dict[str, Any]]]) -> dict | None:
    """The saved scores of a round, if the samplers proposed exactly the saved params."""
    scores = {}
    try:
        for (f, o), trials in asked.items():
            entries = saved[f"{f}/{o}"]
            if [e["params"] for e in entries] != [t.params for t in trials]:
                return None
            scores[f, o] = [float(e["score"]) for e in entries]
    except (KeyError, TypeError, ValueError):  # an unreadable record: run the round
        return None
    return scores


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
