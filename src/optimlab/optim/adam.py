"""Adam: steps along bias-corrected moving averages of the gradient and its square.

Reproduces torch.optim.Adam (AMSGrad, L2 or decoupled weight decay, maximize). The update
folds both bias corrections into scalars, as Kingma and Ba's paper suggests (section 2), so
a step makes one pass fewer over memory than torch's for-loop path; the result is the same
up to rounding.
"""

from __future__ import annotations

import math
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

Betas = tuple[float | Tensor, float | Tensor]


def check_adam_arguments(
    lr: float | Tensor, betas: Betas, eps: float, weight_decay: float | Tensor
) -> None:
    """torch.optim.Adam's checks, in its order and with its messages."""
    check_lr(lr)
    check_nonnegative(eps, "epsilon value")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    check_nonnegative(weight_decay, "weight_decay value")
    if not (
        all(isinstance(beta, float) for beta in betas)
        or all(isinstance(beta, Tensor) for beta in betas)
    ):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, beta in enumerate(betas):
        if isinstance(beta, Tensor) and beta.numel() != 1:
            raise ValueError(f"Tensor betas[{i}] must be 1-element")


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with torch.optim.Adam's arguments, defaults, error messages
    and state ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"). A tensor `lr` or `betas`
    is read as a number at each step, on either path. `capturable`, `differentiable` and
    `fused` are not offered."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: Betas = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        check_adam_arguments(lr, betas, eps, weight_decay)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Closure = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = evaluate(closure)
        for group in self.param_groups:
            adam_group_step(self.state, group, "Adam")
        return loss


def adam_group_step(state: dict[Tensor, dict[str, Any]], group: dict[str, Any], name: str) -> None:
    """Create the missing state of the group's parameters that have a gradient, then step them
    (shared by Adam and AdamW, whose groups differ only in `decoupled_weight_decay`)."""
    params = params_with_grad(group, name)
    for p in params:
        if not state[p]:
            state[p]["step"] = new_step_counter()
            state[p]["exp_avg"] = torch.zeros_like(p)
            state[p]["exp_avg_sq"] = torch.zeros_like(p)
            if group["amsgrad"]:
                state[p]["max_exp_avg_sq"] = torch.zeros_like(p)
    beta1, beta2 = group["betas"]
    adam(
        params,
        [p.grad for p in params],
        [state[p]["exp_avg"] for p in params],
        [state[p]["exp_avg_sq"] for p in params],
        [state[p]["max_exp_avg_sq"] for p in params] if group["amsgrad"] else [],
        [state[p]["step"] for p in params],
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        amsgrad=group["amsgrad"],
        maximize=group["maximize"],
        decoupled_weight_decay=group["decoupled_weight_decay"],
        foreach=group["foreach"],
    )


def adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool = False,
    foreach: bool | None = None,
) -> None:
    """One Adam step, in place; `max_exp_avg_sqs` is used (and may be empty) only for AMSGrad."""
    step = _multi_tensor_adam if use_foreach(foreach, params) else _single_tensor_adam
    step(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        steps,
        lr=float(lr),
        beta1=float(beta1),
        beta2=float(beta2),
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay,
    )


def _single_tensor_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    for i, (theta, g, m, v, step) in enumerate(
        zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True)
    ):
        step += 1
        t = step.item()
        g = -g if maximize else g
        if weight_decay != 0:
            if decoupled_weight_decay:
                theta.mul_(1 - lr * weight_decay)  # theta <- theta (1 - lr lambda)
            else:
                g = g.add(theta, alpha=weight_decay)  # g_t + lambda theta_{t-1}
        m.lerp_(g, 1 - beta1)  # m_t = b1 m_{t-1} + (1 - b1) g_t
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v_t = b2 v_{t-1} + (1 - b2) g_t^2
        if amsgrad:
            v = torch.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])  # max(vmax, v_t)
        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        # theta_t = theta_{t-1} - lr mhat / (sqrt(vhat) + eps), mhat = m / bc1, vhat = v / bc2
        denom = v.sqrt().add_(eps * bias_correction2_sqrt)
        theta.addcdiv_(m, denom, value=-lr * bias_correction2_sqrt / bias_correction1)


def _multi_tensor_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    if not params:
        return
    torch._foreach_add_(steps, 1)
    ts = [step.item() for step in steps]
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    if amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        exp_avg_sqs = max_exp_avg_sqs
    bias_correction2_sqrts = [math.sqrt(1 - beta2**t) for t in ts]
    step_sizes = [
        -lr * bc2_sqrt / (1 - beta1**t)
        for t, bc2_sqrt in zip(ts, bias_correction2_sqrts, strict=True)
    ]
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, [eps * bc2_sqrt for bc2_sqrt in bias_correction2_sqrts])
    torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)
