"""Shared helpers for the benchmarks: robust timing and atomic JSON results."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from optimlab import __version__
from optimlab.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def time_call(
    fn: Callable[[], Any], *, repeats: int = 20, warmup: int = 3, min_time: float = 0.0
) -> float:
    """Median seconds per call of `fn` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environment() -> dict[str, Any]:
    return {
        "optimlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
    }


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write `payload` (plus the environment) to results/<name>.json atomically."""
    path = RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "environment": environment(), **payload})
    return path
