"""Run many independent 2-D optimizations as one batch: start points x hyperparameters x
functions x optimizer variants, with divergence handled per row.

Rows are grouped by update rule (so each rule runs once per step on a contiguous slice) and
by surface (so each function and its gradient are evaluated once per step).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from optimlab.errors import UsageError
from optimlab.surfaces.batched import (
    SGD,
    VARIANTS,
    Adagrad,
    Adam,
    DynamicAdam,
    RMSprop,
    Variant,
    default_gate,
)
from optimlab.surfaces.functions import Surface


@dataclass
class Block:
    """Rows that share a surface and a variant: one independent run per start point.

    `hyper` holds the variant's tuned hyperparameters, each a number or one value per row;
    `noise_rows` says which row of the noise table each run reads (default: its own index);
    `gate` overrides the initial DynamicAdam gates, one flat row per run or one for all.
    """

    surface: Surface
    variant: str
    starts: Tensor
    hyper: dict[str, Tensor | float]
    noise_rows: Tensor | None = None
    gate: Tensor | None = None


@dataclass
class Trajectories:
    """One block's runs: points and f at every step (or only the last when not recorded),
    and the step at which each run diverged (-1 if it did not)."""

    points: Tensor  # (steps + 1, n, 2), or (1, n, 2)
    values: Tensor  # (steps + 1, n), or (1, n)
    diverged_at: Tensor  # (n,)


def run(
    blocks: Sequence[Block],
    steps: int,
    *,
    noise: Tensor | None = None,
    record: bool = True,
    gate_seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> list[Trajectories]:
    """Run every block for `steps` steps as one batch, in float64.

    `noise` (steps, S, 2), if given, is added to the gradients (row r of a block reads
    noise[t, noise_rows[r]]). A run diverges at step t when theta_t leaves its surface's
    divergence box (NaN and inf included; the run stays at theta_{t-1}) or when f or its
    gradient is not finite at theta_t (it stays there); either way it is frozen, marked
    diverged at t, and the other rows go on untouched.
    """
    layout = sorted(range(len(blocks)), key=lambda i: _RULES.index(_variant(blocks[i]).rule))
    ordered = [blocks[i] for i in layout]
    sizes = [len(b.starts) for b in ordered]
    bounds = [0, *itertools.accumulate(sizes)]
    theta = torch.cat([b.starts.to(torch.float64).reshape(-1, 2) for b in ordered])
    rules = []
    for rule, group in itertools.groupby(
        range(len(ordered)), key=lambda i: _variant(ordered[i]).rule
    ):
        members = list(group)
        a, b = bounds[members[0]], bounds[members[-1] + 1]
        options = _row_options([ordered[i] for i in members], gate_seed)
        rules.append((a, b, rule(theta[a:b], **options)))
    parts = _surface_rows(ordered, bounds)
    box = torch.cat([_box_rows(b) for b in ordered])
    lo, hi = box[:, :, 0], box[:, :, 1]
    noise_rows = torch.cat(
        [torch.arange(len(b.starts)) if b.noise_rows is None else b.noise_rows for b in ordered]
    )
    n = len(theta)
    diverged_at = torch.full((n,), -1, dtype=torch.long)
    alive = torch.ones(n, dtype=torch.bool)
    kept = steps + 1 if record else 1
    points = torch.empty(kept, n, 2, dtype=torch.float64)
    values = torch.empty(kept, n, dtype=torch.float64)
    with torch.no_grad(), _one_thread():
        for t in range(steps + 1):
            f, clean = _evaluate(parts, theta)
            finite = torch.isfinite(f) & torch.isfinite(clean).all(1)
            diverged_at.masked_fill_(alive & ~finite, t)
            alive &= finite
            if record or t == steps:
                points[t if record else 0], values[t if record else 0] = theta, f
            if t == steps:
                break
            g = clean if noise is None else clean + noise[t].index_select(0, noise_rows)
            new = torch.cat([rule(theta[a:b], g[a:b], clean[a:b]) for a, b, rule in rules])
            ok = ((new >= lo) & (new <= hi)).all(1)  # NaN fails both comparisons
            diverged_at.masked_fill_(alive & ~ok, t + 1)
            alive &= ok
            theta = torch.where(alive.unsqueeze(1), new, theta)
            if on_step is not None:
                on_step(t + 1)
    out: list[Trajectories | None] = [None] * len(blocks)
    for k, i in enumerate(layout):
        rows = slice(bounds[k], bounds[k + 1])
        out[i] = Trajectories(points[:, rows], values[:, rows], diverged_at[rows])
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tensors this small gain nothing from intra-op threads, and their start-up and spinning
    cost 10-20x the work when the cores are busy (measured with 2 threads on 2 shared cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_RULES: list[type] = [SGD, Adagrad, RMSprop, Adam, DynamicAdam]


def _variant(block: Block) -> Variant:
    try:
        return VARIANTS[block.variant]
    except KeyError:
        raise UsageError(
            f"unknown optimizer {block.variant!r}; valid: {', '.join(VARIANTS)}"
        ) from None


def _row_options(blocks: list[Block], gate_seed: int) -> dict[str, Tensor]:
    """The per-row (n, 1) options of blocks that share a rule, stacked in row order."""
    columns: dict[str, list[Tensor]] = {}
    for block in blocks:
        variant, n = _variant(block), len(block.starts)
        missing = set(variant.search) - set(block.hyper)
        if missing:
            raise UsageError(f"{variant.name}: missing hyperparameters {sorted(missing)}")
        for name, value in {**block.hyper, **variant.rule_options}.items():
            column = torch.as_tensor(value, dtype=torch.float64).reshape(-1, 1)
            columns.setdefault(name, []).append(column.expand(n, 1))
        if variant.rule is DynamicAdam:
            gate = default_gate(gate_seed) if block.gate is None else block.gate
            columns.setdefault("gate", []).append(gate.to(torch.float64).expand(n, -1))
    return {name: torch.cat(parts) for name, parts in columns.items()}


def _surface_rows(blocks: list[Block], bounds: list[int]) -> list[tuple[Surface, Tensor | None]]:
    """Each surface with the rows it owns (None: all of them)."""
    rows: dict[int, tuple[Surface, list[int]]] = {}
    for k, block in enumerate(blocks):
        rows.setdefault(id(block.surface), (block.surface, []))[1].extend(
            range(bounds[k], bounds[k + 1])
        )
    if len(rows) == 1:
        return [(surface, None) for surface, _ in rows.values()]
    return [(surface, torch.tensor(index)) for surface, index in rows.values()]


def _box_rows(block: Block) -> Tensor:
    box = torch.tensor(block.surface.divergence_box(), dtype=torch.float64)
    return box.expand(len(block.starts), 2, 2)


def _evaluate(parts: list[tuple[Surface, Tensor | None]], theta: Tensor) -> tuple[Tensor, Tensor]:
    """f and its gradient at every row: one autograd call per surface."""
    f, grad = torch.empty(len(theta), dtype=theta.dtype), torch.empty_like(theta)
    for surface, index in parts:
        x = (theta if index is None else theta.index_select(0, index)).detach().requires_grad_()
        with torch.enable_grad():
            fx = surface.fn(x[:, 0], x[:, 1])
            (gx,) = torch.autograd.grad(fx.sum(), x)
        if index is None:
            return fx.detach(), gx
        f.index_copy_(0, index, fx.detach())
        grad.index_copy_(0, index, gx)
    return f, grad
