"""Statistics of final runs: mean with a t-based confidence interval, Welch's t-test.

Few seeds (5 by default) make the normal approximation too narrow; the t distribution with
n - 1 degrees of freedom gives honest intervals. Welch's test does not assume that two
optimizers have the same spread across seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """Mean of `n` values with its (1 - alpha) confidence interval (None when n < 2)."""

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Welch's t-test of `a` against `b`: difference of means (a - b), t statistic, p-value."""

    diff: float
    t: float
    p: float

    def to_dict(self) -> dict:
        return asdict(self)


def finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> Estimate:
    """Mean and t-based confidence interval of the finite `values`."""
    x = np.asarray(finite(values), dtype=np.float64)
    n = len(x)
    if n == 0:
        return Estimate(0, None, None, None, None)
    mean = float(x.mean())
    if n < 2:
        return Estimate(1, mean, None, None, None)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Estimate(n, mean, std, mean - half, mean + half)


def welch(a: Sequence[float | None], b: Sequence[float | None]) -> Comparison | None:
    """Welch's t-test of the finite values of `a` against `b` (None if it is undefined)."""
    xa, xb = finite(a), finite(b)
    if len(xa) < 2 or len(xb) < 2 or (np.ptp(xa) == 0 and np.ptp(xb) == 0):
        return None  # too few values, or no spread at all: the test is undefined
    result = stats.ttest_ind(xa, xb, equal_var=False)
    return Comparison(
        float(np.mean(xa) - np.mean(xb)), float(result.statistic), float(result.pvalue)
    )
