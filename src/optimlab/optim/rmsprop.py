"""RMSprop: steps divided by the root of a moving average of squared gradients.

Reproduces torch.optim.RMSprop: eps is added after the square root; the centered variant
divides by sqrt(E[g^2] - E[g]^2); with momentum the scaled gradient goes through a buffer.
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
    new_step_counter,
    params_with_grad,
    use_foreach,
)


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture 6e; centered: Graves, 2013) with torch.optim.RMSprop's
    arguments, defaults, error messages and state ("step", "square_avg", "momentum_buffer",
    "grad_avg"). `capturable`/`differentiable` are not offered, so `foreach` and `maximize` are
    keyword-only here."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        check_lr(lr)
        check_nonnegative(eps, "epsilon value")
        check_nonnegative(momentum, "momentum value")
        check_nonnegative(weight_decay, "weight_decay value")
        check_nonnegative(alpha, "alpha value")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        """The group's parameters with a gradient, their gradients and state tensors (the
        buffers a group's options need are created on a parameter's first step, as in torch)."""
        params = params_with_grad(group, "RMSprop")
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = new_step_counter()
                state["square_avg"] = torch.zeros_like(p)
                if group["momentum"] > 0:
                    state["momentum_buffer"] = torch.zeros_like(p)
                if group["centered"]:
                    state["grad_avg"] = torch.zeros_like(p)
        states = [self.state[p] for p in params]
        return (
            params,
            [p.grad for p in params],
            [s["square_avg"] for s in states],
            [s["grad_avg"] for s in states] if group["centered"] else [],
            [s["momentum_buffer"] for s in states] if group["momentum"] > 0 else [],
            [s["step"] for s in states],
        )

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = evaluate(closure)
        for group in self.param_groups:
            rmsprop(
                *self._init_group(group),
                lr=group["lr"],
                alpha=group["alpha"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                centered=group["centered"],
                maximize=group["maximize"],
                foreach=group["foreach"],
            )
        return loss


def rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    foreach: bool | None = None,
) -> None:
    """One RMSprop step, in place. `grad_avgs` is used when centered, `momentum_buffers` when
    momentum > 0; the step counters are only counted (torch keeps them in the state too)."""
    step = _multi_tensor_rmsprop if use_foreach(foreach, params) else _single_tensor_rmsprop
    step(
        params,
        grads,
        square_avgs,
        grad_avgs,
        momentum_buffers,
        steps,
        lr=float(lr),
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        maximize=maximize,
    )


def _single_tensor_rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
) -> None:
    for i, (theta, g, square_avg, step) in enumerate(
        zip(params, grads, square_avgs, steps, strict=True)
    ):
        step += 1
        g = -g if maximize else g
        if weight_decay != 0:
            g = g.add(theta, alpha=weight_decay)  # g_t + lambda theta_{t-1}
        square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)  # v_t = a v_{t-1} + (1-a) g_t^2
        if centered:
            grad_avg = grad_avgs[i].lerp_(g, 1 - alpha)  # gbar_t = a gbar_{t-1} + (1-a) g_t
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()  # sqrt(v - gbar^2)
        else:
            avg = square_avg.sqrt()
        avg.add_(eps)
        if momentum > 0:
            b = momentum_buffers[i].mul_(momentum).addcdiv_(g, avg)  # b_t = mu b + g / avg
            theta.add_(b, alpha=-lr)
        else:
            theta.addcdiv_(g, avg, value=-lr)  # theta_t = theta_{t-1} - lr g_t / avg


def _multi_tensor_rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
) -> None:
    if not params:
        return
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
    if centered:
        torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
        avgs = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_sqrt_(avgs)
    else:
        avgs = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(avgs, eps)
    if momentum > 0:
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_addcdiv_(momentum_buffers, grads, avgs)
        torch._foreach_add_(params, momentum_buffers, alpha=-lr)
    else:
        torch._foreach_addcdiv_(params, grads, avgs, value=-lr)
