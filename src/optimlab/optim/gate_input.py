"""DynamicAdam's gate input: [slog(mean g), slog(var g)] of the whole gradient, detached.

Plain functions, so that other code (the references, the tests) can reproduce the input
exactly; DynamicAdam itself reads the same statistics from its flat buckets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# Gradient elements per chunk: small tensors are concatenated into one reduction (fewer
# Python-level ops), large ones are reduced in place (no full copy of the gradient).
CHUNK_NUMEL = 1 << 16


def slog(z: Tensor) -> Tensor:
    """Signed log, sign(z) * log1p(|z|): identity near 0, logarithmic for large |z|.

    Gradient statistics span many orders of magnitude across models and training time;
    slog keeps the gate input O(1)-O(10) without a scale to tune, and keeps the sign.
    """
    return torch.copysign(torch.log1p(torch.abs(z)), z)


def slog_value(z: float) -> float:
    """slog of a Python float (NaN and infinities pass through)."""
    return math.copysign(math.log1p(abs(z)), z)


# --- the gate input ------------------------------------------------------------------------


def gradient_features(grads: Sequence[Tensor]) -> Tensor:
    """The gate input: [slog(mean), slog(var)] of all elements of all `grads`, detached.

    `var` is the population variance (unbiased=False) of the concatenation of every
    gradient. Returns shape (2,), in the dtype and on the device of `grads[0]`.
    """
    chunks: list[Tensor] = []
    run: list[Tensor] = []  # consecutive small tensors, up to CHUNK_NUMEL elements in all
    run_numel = 0
    with torch.no_grad():
        for g in grads:
            if run and run_numel + g.numel() > CHUNK_NUMEL:
                chunks.append(torch.cat([t.reshape(-1) for t in run]))
                run, run_numel = [], 0
            run.append(g)
            run_numel += g.numel()
        chunks.append(torch.cat([t.reshape(-1) for t in run]))
        moments = torch.stack([m for chunk in chunks for m in chunk_moments(chunk)]).tolist()
    counts = [c.numel() for c in chunks]
    mean, var = combine_moments(counts, moments[0::2], moments[1::2])
    options = {"dtype": grads[0].dtype, "device": grads[0].device}
    return torch.tensor([slog_value(mean), slog_value(var)], **options)


def chunk_moments(chunk: Tensor) -> tuple[Tensor, Tensor]:
    """mean(chunk) and |chunk - mean|, the Euclidean distance to it, of a 1-D chunk: two
    passes, so that the variance |chunk - mean|^2 / n stays accurate when |mean| >> std."""
    mean = chunk.mean()
    return mean, torch.dist(chunk, mean)


def combine_moments(
    counts: Sequence[int], means: Sequence[float], distances: Sequence[float]
) -> tuple[float, float]:
    """Mean and population variance of the union of chunks, from each chunk's count, mean and
    distance to its mean (chunk_moments), combined exactly (Chan et al.) in float64. NaN and
    infinities propagate (a non-finite gradient gives non-finite statistics)."""
    numel = sum(counts)
    if numel == 0:
        return 0.0, 0.0  # no elements (only empty parameters): nothing to describe
    if len(counts) == 1:
        return means[0], distances[0] * distances[0] / numel
    chunks = [chunk for chunk in zip(counts, means, distances, strict=True) if chunk[0]]
    mean = sum(count * chunk_mean for count, chunk_mean, _ in chunks) / numel
    squares = 0.0
    for count, chunk_mean, distance in chunks:
        between = chunk_mean - mean
        squares += distance * distance + count * between * between
    return mean, squares / numel
