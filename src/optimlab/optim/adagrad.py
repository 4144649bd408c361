"""Adagrad: per-coordinate steps divided by the root of the sum of all past squared gradients.

Reproduces torch.optim.Adagrad, quirks included: the learning rate decays as
lr / (1 + (t - 1) lr_decay), and every accumulator starts at the constructor's
`initial_accumulator_value` (a per-group value is ignored, as in torch).
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


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011), with torch.optim.Adagrad's arguments, defaults, error
    messages and state ("step", "sum"). State is created lazily, on a parameter's first step
    with a gradient (torch creates it in the constructor); `fused`/`differentiable` are not
    offered."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
    ) -> None:
        check_lr(lr)
        check_nonnegative(lr_decay, "lr_decay value")
        check_nonnegative(weight_decay, "weight_decay value")
        check_nonnegative(initial_accumulator_value, "initial_accumulator_value value")
        check_nonnegative(eps, "epsilon value")
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        """The group's parameters with a gradient, their gradients, sums and step counters."""
        params = params_with_grad(group, "Adagrad")
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = new_step_counter()
                state["sum"] = torch.full_like(p, self.defaults["initial_accumulator_value"])
        sums = [self.state[p]["sum"] for p in params]
        steps = [self.state[p]["step"] for p in params]
        return params, [p.grad for p in params], sums, steps

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = evaluate(closure)
        for group in self.param_groups:
            adagrad(
                *self._init_group(group),
                lr=group["lr"],
                lr_decay=group["lr_decay"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                foreach=group["foreach"],
            )
        return loss


def adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    foreach: bool | None = None,
) -> None:
    """One Adagrad step, in place (parameters, sums and step counters)."""
    step = _multi_tensor_adagrad if use_foreach(foreach, params) else _single_tensor_adagrad
    step(
        params,
        grads,
        state_sums,
        steps,
        lr=float(lr),
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        eps=eps,
        maximize=maximize,
    )


def _single_tensor_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    for theta, g, state_sum, step in zip(params, grads, state_sums, steps, strict=True):
        step += 1
        t = step.item()
        g = -g if maximize else g
        if weight_decay != 0:
            g = g.add(theta, alpha=weight_decay)  # g_t + lambda theta_{t-1}
        clr = lr / (1 + (t - 1) * lr_decay)  # decayed learning rate
        state_sum.addcmul_(g, g, value=1)  # s_t = s_{t-1} + g_t^2
        std = state_sum.sqrt().add_(eps)
        theta.addcdiv_(g, std, value=-clr)  # theta_t = theta_{t-1} - clr g_t / (sqrt(s_t) + eps)


def _multi_tensor_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    if not params:
        return
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    minus_clrs = [-lr / (1 + (step.item() - 1) * lr_decay) for step in steps]
    torch._foreach_addcmul_(state_sums, grads, grads, value=1)
    stds = torch._foreach_sqrt(state_sums)
    torch._foreach_add_(stds, eps)
    torch._foreach_addcdiv_(params, grads, stds, minus_clrs)
