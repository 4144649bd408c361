"""DynamicAdam's update with compile=True: the bucket math of dynamic_adam_buckets.py as
whole-bucket expressions for torch.compile, which fuses each bucket's work into one loop.

Per step three compiled calls replace the eager ops: the gradient statistics (one pass over
g_t, and online over w_{t-1}), the update (one pass that reads theta, g, m, v and writes
theta, m, v and w_t) and, in lookahead mode, the dot products <grad L_meta, w_t>. The step's
scalars (beta1_t, the bias corrections) enter as a tensor, so that each kernel compiles once
per layout of buckets; the gate stays eager. The kernels are the eager path's equations;
tests/test_dynamic_adam_compile.py checks they give its numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from optimlab.optim._common import compiled_once, explain_compile_failures, layout
from optimlab.optim.dynamic_adam_buckets import Bucket


def compiled_bucket_sums(buckets: list[Bucket]) -> Tensor:
    """Every bucket's raw_moments, concatenated, computed by one compiled call that reads each
    gradient (and, online, each direction) once."""
    online = buckets[0].online
    kinds = tuple(_kind(bucket.group) for bucket in buckets)
    l2 = _coefficients([[_l2(bucket.group)] for bucket in buckets], buckets)
    kernel = _compiled(_bucket_sums, (kinds, online), buckets)
    with explain_compile_failures():
        return kernel(
            [bucket.params for bucket in buckets],
            [[p.grad for p in bucket.params] for bucket in buckets],
            [bucket.direction if online else None for bucket in buckets],
            l2,
            kinds=kinds,
        )


def compiled_bucket_updates(
    buckets: list[Bucket], beta1: float, with_direction: bool
) -> list[Tensor | None]:
    """Bucket.update of every bucket, by one compiled call that reads theta, g, m and v once
    and writes theta, m, v (and w) once per element; returns the buckets' w_t as update does."""
    scalars = [bucket.scalars(beta1) for bucket in buckets]
    coefficients = _coefficients([list(s[:7]) for s in scalars], buckets)
    if with_direction:
        for bucket in buckets:
            if bucket.direction is None:  # a tensor alone in lookahead mode: w_t's buffer
                bucket.direction = torch.empty_like(bucket.exp_avg)
    kinds = tuple(_kind(bucket.group) for bucket in buckets)
    kernel = _compiled(_bucket_updates, (kinds, with_direction), buckets)
    directions = [bucket.direction if with_direction else None for bucket in buckets]
    with explain_compile_failures():
        kernel(
            [bucket.params for bucket in buckets],
            [[p.grad for p in bucket.params] for bucket in buckets],
            [bucket.exp_avg for bucket in buckets],
            [bucket.exp_avg_sq for bucket in buckets],
            directions,
            coefficients,
            kinds=kinds,
        )
    for bucket, step_scalars in zip(buckets, scalars, strict=True):
        bucket.advance(step_scalars, with_direction)
    return directions


def compiled_bucket_dots(buckets: list[Bucket], tensors: tuple[Tensor | None, ...]) -> Tensor:
    """<t, w_t> per bucket for per-parameter tensors t (None for zeros) in the buckets' order,
    by one compiled call (lookahead: t = grad L_meta(theta_{t+1}), and u_t = c_t w_t)."""
    pieces, start = [], 0
    for bucket in buckets:
        pieces.append(list(tensors[start : start + len(bucket.params)]))
        start += len(bucket.params)
    present = tuple(tuple(t is not None for t in piece) for piece in pieces)
    kernel = _compiled(_bucket_dots, (present,), buckets)
    sizes = tuple(tuple(p.numel() for p in bucket.params) for bucket in buckets)
    with explain_compile_failures():
        return kernel(pieces, [bucket.direction for bucket in buckets], sizes=sizes)


def _kind(group: dict[str, Any]) -> tuple[bool, str]:
    """What the kernel is compiled for: the maximize sign and the kind of weight decay."""
    decay = "decoupled" if group["decoupled_weight_decay"] else "l2"
    return bool(group["maximize"]), decay if group["weight_decay"] else "none"


def _l2(group: dict[str, Any]) -> float:
    return 0.0 if group["decoupled_weight_decay"] else float(group["weight_decay"])


def _coefficients(rows: list[list[float]], buckets: list[Bucket]) -> Tensor:
    """Per-step scalars as a tensor (double precision), so that the kernel compiles once."""
    return torch.tensor(rows, dtype=torch.float64, device=buckets[0].exp_avg.device)


def _flat(tensors: list[Tensor]) -> Tensor:
    if len(tensors) == 1:
        return tensors[0].reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


STREAMS, BLOCK = 8, 256  # one core reads faster from several places at once than from one


def _sum(x: Tensor) -> Tensor:
    """sum(x) of a flat tensor, read as STREAMS equal parts side by side, BLOCK elements of each
    at a time (and the rest after): these read-only passes are bound by how many reads one core
    keeps in flight, and eight streams ran 4-20% faster here than one. The sums of blocks of
    STREAMS * BLOCK elements are summed in turn, so this is no less accurate than one reduction."""
    used = x.numel() - x.numel() % (STREAMS * BLOCK)
    if used == 0:
        return x.sum()
    total = x[:used].view(STREAMS, -1, BLOCK).sum((0, 2)).sum()
    return total + x[used:].sum() if used < x.numel() else total


def _gradient(params: list[Tensor], grads: list[Tensor], l2: Tensor, kind: tuple) -> Tensor:
    """g_t of a bucket, flat, as Bucket.gradient computes it."""
    maximize, decay = kind
    g = _flat(grads)
    if maximize:
        g = -g
    if decay == "l2":
        g = g + l2 * _flat(params)  # g_t + lambda theta_t
    return g


def _bucket_sums(
    params: list[list[Tensor]],
    grads: list[list[Tensor]],
    directions: list[Tensor | None],
    l2: Tensor,
    *,
    kinds: tuple[tuple[bool, str], ...],
) -> Tensor:
    """[sum(g), sum(g^2)] (and <w_{t-1}, g_t> where a direction is given) per bucket."""
    sums = []
    for i, (ps, gs, w) in enumerate(zip(params, grads, directions, strict=True)):
        g = _gradient(ps, gs, l2[i, 0], kinds[i])
        sums += [_sum(g), _sum(g * g)]
        if w is not None:
            sums.append(_sum(g * w))
    return torch.stack(sums)


def _bucket_dots(
    tensors: list[list[Tensor | None]],
    directions: list[Tensor],
    *,
    sizes: tuple[tuple[int, ...], ...],
) -> Tensor:
    dots = []
    for ts, w, numels in zip(tensors, directions, sizes, strict=True):
        pieces = w.split(numels)
        terms = [
            _sum(t.reshape(-1) * w_p) for t, w_p in zip(ts, pieces, strict=True) if t is not None
        ]
        dots.append(torch.stack(terms).sum() if terms else w.new_zeros(()))
    return torch.stack(dots)


def _bucket_updates(
    params: list[list[Tensor]],
    grads: list[list[Tensor]],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    directions: list[Tensor | None],
    coefficients: Tensor,
    *,
    kinds: tuple[tuple[bool, str], ...],
) -> None:
    """One DynamicAdam step of every bucket, in place, written for torch.compile, which fuses
    each bucket's update into one loop. Row i of `coefficients` is bucket i's StepScalars."""
    for i, (ps, gs, m, v, w) in enumerate(
        zip(params, grads, exp_avgs, exp_avg_sqs, directions, strict=True)
    ):
        beta1, beta2, step_size, eps_hat, grad_weight, l2, shrink = coefficients[i].unbind()
        g = _gradient(ps, gs, l2, kinds[i])
        theta = _flat(ps)
        if kinds[i][1] == "decoupled":
            theta = theta * shrink  # theta (1 - lr lambda)
        m_t = m + (1 - beta1) * (g - m)  # beta1 m_{t-1} + (1 - beta1) g_t, as lerp
        v_t = beta2 * v + (1 - beta2) * g * g
        scale = 1 / (v_t.sqrt() + eps_hat)  # 1 / (sqrt(v_t) + eps sqrt(1 - beta2^t)), one division
        theta = theta - step_size * m_t * scale  # theta_t - lr mhat / (sqrt(vhat) + eps)
        if w is not None:
            w.copy_((m - grad_weight * g) * scale)  # w_t = (m_{t-1} - (1 - P_{t-1}) g_t) / denom
        m.copy_(m_t)
        v.copy_(v_t)
        for p, new in zip(ps, theta.split([p.numel() for p in ps]), strict=True):
            p.copy_(new.view(p.shape))


_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}


def _compiled(
    function: Callable[..., Any], options: tuple[Any, ...], buckets: list[Bucket]
) -> Callable[..., Any]:
    """`function` compiled for these options and this layout of buckets, made at first use
    and kept for the process, as Adam's kernels (`_common.compiled_once`)."""
    key = (function.__name__, options, tuple(layout(bucket.params) for bucket in buckets))
    return compiled_once(_COMPILED, key, function)
