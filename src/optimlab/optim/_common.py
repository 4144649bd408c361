"""What the five optimizers share: torch.optim's argument checks, state layout and path choice.

Nothing here calls into torch.optim: only `torch.optim.Optimizer`, the base class, is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]
Closure = Callable[[], Any] | None


def check_lr(lr: float | Tensor) -> None:
    """torch.optim's learning-rate check: a non-negative float or a 1-element tensor."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    check_nonnegative(lr, "learning rate")


def check_nonnegative(value: float | Tensor, what: str) -> None:
    """Raise torch.optim's message for a negative (or NaN) `value`, e.g. "Invalid epsilon
    value: -1.0"."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {value}")


def evaluate(closure: Closure) -> Any:
    """The closure's loss, computed with gradients on (`step` itself runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_with_grad(group: dict[str, Any], optimizer: str) -> list[Tensor]:
    """The group's parameters that have a gradient: the others are skipped and get no state."""
    params = [p for p in group["params"] if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            raise RuntimeError(f"{optimizer} does not support sparse gradients")
        if p.is_complex():
            raise RuntimeError(f"{optimizer} does not support complex parameters")
    return params


def new_step_counter() -> Tensor:
    """A step count kept as torch.optim keeps it (a float32 0-dim CPU tensor), so that state
    dicts move between optimlab's and torch's optimizers."""
    return torch.tensor(0.0, dtype=torch.float32)


def use_foreach(foreach: bool | None, params: list[Tensor]) -> bool:
    """The multi-tensor path when asked for, else where it is the faster one: on CUDA.

    On CPU the `torch._foreach_*` ops run tensor by tensor anyway and allocate whole lists of
    temporaries, so the for-loop path is faster there on large tensors (benchmarks/
    optimizer_step.py; torch.optim makes the same choice).
    """
    if foreach is not None:
        return foreach
    return bool(params) and all(p.device.type == "cuda" for p in params)
