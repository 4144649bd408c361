"""What the benchmark measures, per (function, optimizer), over the evaluation start points.

- gap: f(theta_t) - f*, clamped at 0; a diverged run's gap is inf from its divergence on.
- success: the final point lies within `tol` (Euclidean distance) of a global minimum.
- steps to tolerance: the first step from which the run stays within `tol` of a global
  minimum until the end (a fly-by does not count); its median is over the successful runs.
- divergence: the iterate became non-finite or left the domain enlarged tenfold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optimlab.surfaces.batched import VARIANTS
from optimlab.surfaces.functions import Surface
from optimlab.surfaces.runner import Block, Trajectories

HYPERPARAMETERS: list[str] = list(dict.fromkeys(k for v in VARIANTS.values() for k in v.search))
COLUMNS: list[str] = [
    "function",
    "optimizer",
    *HYPERPARAMETERS,
    "final_gap_median",
    "final_gap_q25",
    "final_gap_q75",
    "success_rate",
    "steps_to_tol_median",
    "diverged",
    "starts",
    "steps",
    "canonical_final_gap",
    "canonical_success",
    "tune_score",
]


def gaps_and_distances(surface: Surface, result: Trajectories) -> tuple[np.ndarray, np.ndarray]:
    """Per step and run (steps + 1, n): the gap f - f*, and the distance to the nearest
    global minimum; both inf once the run has diverged."""
    values, points = result.values.numpy(), result.points.numpy()
    diverged_at = result.diverged_at.numpy()
    step = np.arange(len(values))[:, None]
    gone = (diverged_at >= 0) & (step >= diverged_at)
    gap = np.where(gone, np.inf, np.maximum(values - surface.value, 0.0))
    minima = np.asarray(surface.minima)
    distance = np.linalg.norm(points[:, :, None, :] - minima, axis=-1).min(-1)
    return gap, np.where(gone, np.inf, distance)


def steps_to_tolerance(distance: np.ndarray, tol: float) -> np.ndarray:
    """Per run: the first step from which it stays within `tol` to the end (NaN if never)."""
    settled = np.logical_and.accumulate((distance <= tol)[::-1], axis=0)[::-1]
    return np.where(settled[-1], settled.argmax(0), np.nan)


def quantile(x: np.ndarray, q: float) -> float:
    """np.quantile that lets inf (diverged runs) take part: a median among infs is inf."""
    big = np.finfo(np.float64).max
    value = float(np.quantile(np.minimum(x, big), q))
    return np.inf if value >= big / 4 else value


def summary_row(
    block: Block, result: Trajectories, tuned: dict[str, Any], tol: float
) -> dict[str, Any]:
    """One row of summary.csv: hyperparameters used and what they achieved."""
    gap, distance = gaps_and_distances(block.surface, result)
    final = gap[-1]
    reached = steps_to_tolerance(distance, tol)
    success = ~np.isnan(reached)
    params = tuned["params"]
    return {
        "function": block.surface.name,
        "optimizer": block.variant,
        **{name: _number(params.get(name)) for name in HYPERPARAMETERS},
        "final_gap_median": quantile(final, 0.5),
        "final_gap_q25": quantile(final, 0.25),
        "final_gap_q75": quantile(final, 0.75),
        "success_rate": float(success.mean()),
        "steps_to_tol_median": float(np.median(reached[success])) if success.any() else None,
        "diverged": int((result.diverged_at >= 0).sum()),
        "starts": len(final),
        "steps": len(gap) - 1,
        "canonical_final_gap": float(final[0]),
        "canonical_success": bool(success[0]),
        "tune_score": tuned.get("score"),
    }


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
