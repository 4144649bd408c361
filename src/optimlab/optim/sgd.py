"""Stochastic gradient descent with momentum, dampening and Nesterov momentum.

Reproduces torch.optim.SGD, quirks included: the momentum buffer starts as a copy of the first
gradient, so dampening only applies from the second step on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optimlab.optim._common import (
    Closure,
    ParamsT,
    check_lr,
    check_nonnegative,
    evaluate,
    params_with_grad,
    use_foreach,
)


class SGD(Optimizer):
    """SGD: theta <- theta - lr * g, where g is the gradient, optionally with momentum.

    Same arguments, defaults, error messages and state ("momentum_buffer") as torch.optim.SGD;
    `fused` and `differentiable` are not offered.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative(momentum, "momentum value")
        check_nonnegative(weight_decay, "weight_decay value")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = evaluate(closure)
        for group in self.param_groups:
            params = params_with_grad(group, "SGD")
            has_momentum = group["momentum"] != 0
            buffers = [self.state[p].get("momentum_buffer") for p in params] if has_momentum else []
            sgd(
                params,
                [p.grad for p in params],
                buffers,
                lr=group["lr"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                weight_decay=group["weight_decay"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
                foreach=group["foreach"],
            )
            if has_momentum:  # keep the buffers created on the first step
                for p, buffer in zip(params, buffers, strict=True):
                    self.state[p]["momentum_buffer"] = buffer
        return loss


def sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    foreach: bool | None = None,
) -> None:
    """One SGD step, in place; a None in `momentum_buffers` is replaced by a new buffer."""
    step = _multi_tensor_sgd if use_foreach(foreach, params) else _single_tensor_sgd
    step(
        params,
        grads,
        momentum_buffers,
        lr=float(lr),
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
    )


def _single_tensor_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
) -> None:
    for i, (theta, g) in enumerate(zip(params, grads, strict=True)):
        g = -g if maximize else g
        if weight_decay != 0:
            g = g.add(theta, alpha=weight_decay)  # g_t + lambda theta_{t-1}
        if momentum != 0:
            b = momentum_buffers[i]
            if b is None:  # t = 1: b_1 = g_1, no dampening
                b = momentum_buffers[i] = g.clone()
            else:  # b_t = mu b_{t-1} + (1 - tau) g_t
                b.mul_(momentum).add_(g, alpha=1 - dampening)
            g = g.add(b, alpha=momentum) if nesterov else b
        theta.add_(g, alpha=-lr)  # theta_t = theta_{t-1} - lr g_t


def _multi_tensor_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
) -> None:
    if not params:
        return
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum != 0:
        if any(b is None for b in momentum_buffers):
            for i, (b, g) in enumerate(zip(momentum_buffers, grads, strict=True)):
                if b is None:
                    momentum_buffers[i] = g.clone()
                else:
                    b.mul_(momentum).add_(g, alpha=1 - dampening)
        else:
            torch._foreach_mul_(momentum_buffers, momentum)
            torch._foreach_add_(momentum_buffers, grads, alpha=1 - dampening)
        if nesterov:
            grads = torch._foreach_add(grads, momentum_buffers, alpha=momentum)
        else:
            grads = momentum_buffers
    torch._foreach_add_(params, grads, alpha=-lr)
