"""Adam: steps along bias-corrected moving averages of the gradient and its square.

Reproduces torch.optim.Adam (AMSGrad, L2 or decoupled weight decay, maximize). The update
folds both bias corrections into scalars, as Kingma and Ba's paper suggests (section 2), so
a step makes one pass fewer over memory than torch's for-loop path; the result is the same
up to rounding.

`compile=True` runs the same update through torch.compile instead: `_adam_group_update`,
written like the equations, becomes one fused loop per tensor that reads theta, g, m and v
once and writes theta, m and v once (28 bytes per float32 parameter, as torch's fused kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from optimlab.optim._common import (
    ADAM_FOREACH_CPU_MAX_NUMEL,
    Closure,
    ParamsT,
    check_compilable,
    check_lr,
    check_nonnegative,
    compiled_once,
    evaluate,
    explain_compile_failures,
    layout,
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


def check_compile_option(optimizer: Optimizer, foreach: bool | None, compile: bool) -> None:
    """Refuse two paths at once, and compile=True where torch.compile cannot run (at
    construction rather than at the first step)."""
    if compile and foreach:
        raise ValueError("`compile` and `foreach` cannot be `True` together.")
    if compile:
        check_compilable([p for group in optimizer.param_groups for p in group["params"]])


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with torch.optim.Adam's arguments, defaults, error messages
    and state ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"). A tensor `lr` or `betas`
    is read as a number at each step, on every path. `capturable`, `differentiable` and
    `fused` are not offered; `compile=True` (ours) compiles the update with torch.compile at
    the first step, a one-off cost of seconds, for a faster step on large models."""

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
        compile: bool = False,
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
            "compile": compile,
        }
        super().__init__(params, defaults)
        check_compile_option(self, foreach, compile)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A state dict saved without "compile" (torch.optim's) keeps this optimizer's choice;
        `load_state_dict` ends here."""
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("compile", self.defaults.get("compile", False))

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
        compile=group["compile"],
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
    compile: bool = False,
) -> None:
    """One Adam step, in place; `max_exp_avg_sqs` is used (and may be empty) only for AMSGrad."""
    if compile:
        step = _compiled_adam
    elif use_foreach(foreach, params, cpu_max_numel=ADAM_FOREACH_CPU_MAX_NUMEL):
        step = _multi_tensor_adam
    else:
        step = _single_tensor_adam
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


def _compiled_adam(
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
    """The step through `_adam_group_update` compiled. The scalars of this step (lr, betas,
    the bias corrections) enter as a tensor, not as constants baked into the kernel, so that
    it compiles once; they are computed here, in double precision, as on the eager path, for
    t = step + 1 (the kernel counts the step itself, in the same pass)."""
    if not params:
        return
    coefficients = torch.tensor(
        [adam_coefficients(step.item() + 1, lr, beta1, beta2, eps, weight_decay) for step in steps],
        dtype=torch.float64,
        device=params[0].device,
    )
    decay = "none" if weight_decay == 0 else "decoupled" if decoupled_weight_decay else "l2"
    update = _compiled_adam_group(params, amsgrad, maximize, decay)
    with explain_compile_failures():
        update(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            steps,
            coefficients,
            amsgrad=amsgrad,
            maximize=maximize,
            decay=decay,
        )


def adam_coefficients(
    t: float, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float
) -> tuple[float, ...]:
    """Step t's scalars, in the order `_adam_group_update` reads them, with both bias
    corrections folded in as on the eager path: lr mhat / (sqrt(vhat) + eps) =
    (lr sqrt(bc2) / bc1) m / (sqrt(v) + eps sqrt(bc2))."""
    bias_correction1 = 1 - beta1**t
    bias_correction2_sqrt = math.sqrt(1 - beta2**t)
    step_size = lr * bias_correction2_sqrt / bias_correction1
    return (step_size, eps * bias_correction2_sqrt, beta1, beta2, weight_decay, lr)


def _adam_group_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    coefficients: Tensor,
    *,
    amsgrad: bool,
    maximize: bool,
    decay: Literal["none", "l2", "decoupled"],
) -> None:
    """One Adam step of a group, in place, written for torch.compile, which fuses each tensor's
    update into one loop. Row i of `coefficients` holds tensor i's scalars for this step
    (`adam_coefficients`)."""
    for i, (theta, g, m, v, step) in enumerate(
        zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True)
    ):
        step_size, eps_hat, beta1, beta2, lam, lr = coefficients[i].unbind()
        step += 1
        g = -g if maximize else g
        if decay == "decoupled":
            theta.mul_(1 - lr * lam)  # theta <- theta (1 - lr lambda)
        elif decay == "l2":
            g = g + lam * theta  # g_t + lambda theta_{t-1}
        m.mul_(beta1).add_((1 - beta1) * g)  # m_t = b1 m_{t-1} + (1 - b1) g_t
        v.mul_(beta2).add_((1 - beta2) * g * g)  # v_t = b2 v_{t-1} + (1 - b2) g_t^2
        if amsgrad:
            v = max_exp_avg_sqs[i].copy_(torch.maximum(max_exp_avg_sqs[i], v))
        theta.sub_(step_size * m / (v.sqrt() + eps_hat))  # lr mhat / (sqrt(vhat) + eps)


_COMPILED_GROUP_UPDATES: dict[tuple[Any, ...], Callable[..., None]] = {}


def _compiled_adam_group(
    params: list[Tensor], amsgrad: bool, maximize: bool, decay: str
) -> Callable[..., None]:
    """`_adam_group_update` compiled for these options and this layout of parameters, made
    at first use and kept for the process (`_common.compiled_once`)."""
    key = (amsgrad, maximize, decay, layout(params))
    return compiled_once(_COMPILED_GROUP_UPDATES, key, _adam_group_update)
