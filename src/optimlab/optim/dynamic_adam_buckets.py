"""DynamicAdam's state in flat buckets, and its update as a few whole-bucket operations.

On a small model the step costs per torch call, not per element, and per-tensor state would
take about ten calls per parameter tensor. Here the parameters that share a group, dtype,
device, step count t and P_{t-1} are packed into buckets (small tensors together, up to
CHUNK_NUMEL elements; a larger tensor alone), each with its moments (and, in online mode,
its direction) in one flat tensor, so that a step is about ten calls per bucket. The
per-parameter state tensors torch's Optimizer sees (`state_dict()`) are views of these flat
tensors. A `Plan` holds the buckets for as long as the same parameters have a gradient;
when that set changes it is rebuilt from the per-parameter state.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from optimlab.optim.gate_input import CHUNK_NUMEL

# Online mode, per parameter: u_t = dtheta_{t+1}/dbeta1_t = c_t w_t, kept as the tensor w_t
# and the float c_t (a whole-tensor scaling saved per step).
DIRECTION, DIRECTION_SCALE = "beta1_direction", "beta1_direction_scale"


class StepScalars(NamedTuple):
    """A bucket's scalars for step t (Bucket.scalars); the first seven, in this order, are a
    row of the compiled update's coefficients."""

    beta1: float
    beta2: float
    step_size: float  # lr sqrt(1 - beta2^t) / (1 - P_t)
    eps_hat: float  # eps sqrt(1 - beta2^t)
    grad_weight: float  # 1 - P_{t-1}, in w_t = m_{t-1} - (1 - P_{t-1}) g_t
    l2: float  # weight decay added to the gradient (0 if decoupled)
    shrink: float  # 1 - lr weight_decay if decoupled, else 1
    step: int
    product: float  # P_t


class Bucket:
    """Parameters of one group with one dtype, device, step count and P, state in flat tensors.

    A packed bucket (several small tensors) also keeps `rows` = [1; g_t; w]: the gradients
    are copied into the middle row, and one product rows @ g_t gives sum(g_t), sum(g_t^2)
    and <w_{t-1}, g_t>. A tensor alone is read where it is, without a copy.
    """

    def __init__(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        old_states: list[dict[str, Any] | None],
        step: int,
        beta1_product: float,
        online: bool,
    ) -> None:
        self.group, self.params, self.online = group, params, online
        self.step, self.beta1_product = step, beta1_product  # t - 1 and P_{t-1} before a step
        self.numel = sum(p.numel() for p in params)
        self.packed = len(params) > 1
        self.exp_avg = self._flat(old_states, "exp_avg")
        self.exp_avg_sq = self._flat(old_states, "exp_avg_sq")
        self.direction, self.direction_scale = (
            self._directions(old_states) if online else (None, 1.0)
        )
        if self.packed:
            self.rows = self.exp_avg.new_ones(3, self.numel)
            self.grad, self.grad_views = self.rows[1], self.views(self.rows[1])
            if self.direction is not None:
                self.rows[2].copy_(self.direction)
            self.direction = self.rows[2]  # online: w; lookahead: scratch for w
            self.moment_rows = self.rows if online else self.rows[:2]
            self.sums = self.rows.new_empty(len(self.moment_rows))  # moment_rows @ g_t
            self.denom = self.exp_avg.new_empty(self.numel)  # scratch
            self.denom_views = self.views(self.denom)
        self.exp_avg_views = self.views(self.exp_avg)
        self.states = [
            {"step": step, "beta1_product": beta1_product, "exp_avg": m, "exp_avg_sq": v}
            for m, v in zip(self.exp_avg_views, self.views(self.exp_avg_sq), strict=True)
        ]
        if online:
            for state, w in zip(self.states, self.views(self.direction), strict=True):
                state[DIRECTION], state[DIRECTION_SCALE] = w, self.direction_scale

    def views(self, flat: Tensor) -> list[Tensor]:
        """`flat` cut into tensors shaped like the parameters (views)."""
        pieces = flat.split([p.numel() for p in self.params])
        return [piece.view(p.shape) for piece, p in zip(pieces, self.params, strict=True)]

    def _flat(self, old_states: list[dict[str, Any] | None], key: str) -> Tensor:
        """The parameters' state `key` (zeros where there is none) as one new flat tensor; a
        parameter alone keeps its own tensor if it is contiguous."""
        old = [None if state is None else state.get(key) for state in old_states]
        parts = [
            torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
            if t is None
            else t.contiguous().view(-1)  # a copy only where t is not contiguous
            for t, p in zip(old, self.params, strict=True)
        ]
        return torch.cat(parts) if self.packed else parts[0]

    def _directions(self, old_states: list[dict[str, Any] | None]) -> tuple[Tensor, float]:
        """The online direction (w, c) from the parameters' state, zeros where there is none.
        Parameters that come from one bucket share c; any others are stored as c w, c = 1."""
        olds = [state for state in old_states if state and DIRECTION in state]
        scales = {state.get(DIRECTION_SCALE, 1.0) for state in olds}
        if len(scales) <= 1:
            return self._flat(old_states, DIRECTION), scales.pop() if scales else 1.0
        rescaled = [
            {DIRECTION: state[DIRECTION] * state.get(DIRECTION_SCALE, 1.0)} if state else None
            for state in old_states
        ]
        return self._flat(rescaled, DIRECTION), 1.0

    def gradient(self) -> Tensor:
        """g_t of the bucket, flat: the gradients after the maximize sign and L2 decay (the
        parameters' .grad are left as they are)."""
        group = self.group
        decay = 0.0 if group["decoupled_weight_decay"] else group["weight_decay"]
        if self.packed:
            torch._foreach_copy_(self.grad_views, [p.grad for p in self.params])
            if group["maximize"]:
                self.grad.neg_()
            if decay:
                torch._foreach_add_(self.grad_views, self.params, alpha=decay)
            return self.grad
        param = self.params[0]
        grad = param.grad.reshape(-1)
        if group["maximize"]:
            grad = torch.neg(grad)
        if decay:
            grad = torch.add(grad, param.reshape(-1), alpha=decay)
        return grad

    def raw_moments(self, grad: Tensor) -> Tensor:
        """[sum(g_t), sum(g_t^2)] and, online, <w_{t-1}, g_t> (u_{t-1} = c w_{t-1}), as one
        tensor."""
        if self.packed:
            return torch.mv(self.moment_rows, grad, out=self.sums)
        sums = [grad.sum(), torch.dot(grad, grad)]
        if self.online:
            sums.append(torch.dot(grad, self.direction))
        return torch.stack(sums)

    def flatten(self, tensors: tuple[Tensor | None, ...]) -> Tensor:
        """Per-parameter tensors (None for zeros) in this bucket's flat layout (for the meta
        gradient; this overwrites the gradient row)."""
        if not self.packed:
            t = tensors[0]
            return self.exp_avg.new_zeros(self.numel) if t is None else t.reshape(-1)
        if all(t is not None for t in tensors):
            torch._foreach_copy_(self.grad_views, list(tensors))
        else:
            for view, t in zip(self.grad_views, tensors, strict=True):
                view.zero_() if t is None else view.copy_(t)
        return self.grad

    def update(self, grad: Tensor, beta1: float, with_direction: bool) -> Tensor | None:
        """One DynamicAdam step of the bucket with g_t = `grad` and beta1_t = `beta1`, in place;
        returns w_t (flat), with u_t = dtheta_{t+1}/dbeta1_t = direction_scale * w_t, if
        `with_direction`. Decoupled decay does not depend on beta1, so it does not enter u_t."""
        scalars = self.scalars(beta1)
        if self.group["decoupled_weight_decay"] and self.group["weight_decay"]:
            torch._foreach_mul_(self.params, scalars.shrink)
        direction = None
        if with_direction:  # reads m_{t-1}, before it moves
            direction = direction_numerator(self.exp_avg, grad, self.beta1_product, self.direction)
        moments_update_(self.exp_avg, self.exp_avg_sq, grad, beta1, scalars.beta2)
        if self.packed:
            denom, denoms = torch.sqrt(self.exp_avg_sq, out=self.denom), self.denom_views
        else:
            denom = self.exp_avg_sq.sqrt()
            denoms = [denom.view(self.params[0].shape)]
        denom.add_(scalars.eps_hat)  # sqrt(v_t) + eps sqrt(1 - beta2^t)
        # theta_{t+1} = theta_t - lr mhat / (sqrt(vhat) + eps) = theta_t - step_size m_t / denom
        torch._foreach_addcdiv_(self.params, self.exp_avg_views, denoms, -scalars.step_size)
        if direction is not None:
            # u_t = -lr dmhat/dbeta1 / (sqrt(vhat) + eps) = c_t w_t, the scalar c_t kept apart
            direction.div_(denom)
        self.advance(scalars, with_direction)
        return direction

    def scalars(self, beta1: float) -> StepScalars:
        """The scalars of the coming step t with beta1_t = `beta1` (double precision)."""
        group = self.group
        lr, beta2, weight_decay = float(group["lr"]), group["betas"][1], group["weight_decay"]
        step = self.step + 1
        product = self.beta1_product * beta1  # P_t
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
        decoupled = group["decoupled_weight_decay"]
        return StepScalars(
            beta1=beta1,
            beta2=beta2,
            step_size=lr * bias_correction2_sqrt / (1.0 - product),
            eps_hat=group["eps"] * bias_correction2_sqrt,
            grad_weight=1.0 - self.beta1_product,  # w_t = m_{t-1} - (1 - P_{t-1}) g_t
            l2=0.0 if decoupled else weight_decay,
            shrink=1.0 - lr * weight_decay if decoupled else 1.0,
            step=step,
            product=product,
        )

    def advance(self, scalars: StepScalars, with_direction: bool) -> None:
        """Count the step just taken in the bucket and in the per-parameter states."""
        if with_direction:
            self.direction_scale = -scalars.step_size / (1.0 - scalars.product)
        self.step, self.beta1_product = scalars.step, scalars.product
        counts = {"step": scalars.step, "beta1_product": scalars.product}
        if self.online:
            counts[DIRECTION_SCALE] = self.direction_scale
        for state in self.states:
            state.update(counts)


def direction_numerator(
    exp_avg: Tensor, grad: Tensor, beta1_product_before: float, out: Tensor | None
) -> Tensor:
    """(1 - P_t)^2 dmhat_t/dbeta1_t = m_{t-1} - (1 - P_{t-1}) g_t, into `out` if given.

    Algebraically equal to the quotient rule's (m_{t-1} - g_t)(1 - P_t) + m_t P_{t-1}, but
    without its cancellation: it is exactly 0 at t = 1 (m_0 = 0, P_0 = 1)."""
    return torch.add(exp_avg, grad, alpha=-(1.0 - beta1_product_before), out=out)


def moments_update_(
    exp_avg: Tensor, exp_avg_sq: Tensor, grad: Tensor, beta1: float, beta2: float
) -> None:
    """m_t = beta1 m_{t-1} + (1 - beta1) g_t (a lerp, as torch's Adam) and
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2, in place."""
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)


class Plan:
    """The buckets of the parameters that have a gradient, with per-parameter state built from
    the optimizer's `state` but not yet installed there (`install`, once the step is sure to go
    ahead). It stays valid while the same parameters have a gradient at every step."""

    def __init__(self, param_groups: list[dict[str, Any]], state: Any, online: bool) -> None:
        self.masks = _gradient_masks(param_groups)
        self.gradless: list[Tensor] = []  # parameters with state but no gradient this step
        self.buckets: list[Bucket] = []
        self.online, self.installed = online, False
        for group in param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            self.gradless += [p for p in group["params"] if p.grad is None and p in state]
            if any(p.grad.is_sparse or p.grad.is_complex() for p in params):
                raise RuntimeError("DynamicAdam does not support sparse or complex gradients")
            self.buckets += _buckets(group, params, state, online)
        self.params = [p for bucket in self.buckets for p in bucket.params]
        self.counts = [bucket.numel for bucket in self.buckets]
        self.numel = sum(self.counts)
        self.one_device = len({p.device for p in self.params}) == 1

    def matches(self, param_groups: list[dict[str, Any]]) -> bool:
        """Whether exactly the parameters of this plan have a gradient now."""
        return _gradient_masks(param_groups) == self.masks

    def install(self, state: Any) -> None:
        """Make the buckets' views the optimizer's per-parameter state."""
        for bucket in self.buckets:
            for param, param_state in zip(bucket.params, bucket.states, strict=True):
                state[param] = param_state
        if self.online:  # not moved this step: dtheta_{t+1}/dbeta1_t = 0
            for param in self.gradless:
                state[param].pop(DIRECTION, None)
                state[param].pop(DIRECTION_SCALE, None)
        self.installed = True


def _gradient_masks(param_groups: list[dict[str, Any]]) -> list[list[bool]]:
    """Which parameters have a gradient, group by group."""
    return [[p.grad is not None for p in group["params"]] for group in param_groups]


def _buckets(group: dict[str, Any], params: list[Tensor], state: Any, online: bool) -> list[Bucket]:
    """Buckets of `params` (one group): a tensor over CHUNK_NUMEL elements alone, the others
    packed by (step, P, dtype, device), up to CHUNK_NUMEL elements each."""
    buckets: list[Bucket] = []
    packs: dict[tuple, list[tuple[Tensor, dict | None]]] = {}
    for param in params:
        old = state.get(param) or None
        key = (0, 1.0) if old is None else (old["step"], old["beta1_product"])  # P_0 = 1
        if param.numel() > CHUNK_NUMEL:
            buckets.append(Bucket(group, [param], [old], *key, online))
        else:
            packs.setdefault((*key, param.dtype, param.device), []).append((param, old))
    for (step, product, _, _), members in packs.items():
        start, numel = 0, 0
        for i, (param, _) in enumerate(members):
            if numel and numel + param.numel() > CHUNK_NUMEL:
                buckets.append(_bucket(group, members[start:i], step, product, online))
                start, numel = i, 0
            numel += param.numel()
        buckets.append(_bucket(group, members[start:], step, product, online))
    return buckets


def _bucket(
    group: dict[str, Any],
    members: list[tuple[Tensor, dict | None]],
    step: int,
    product: float,
    online: bool,
) -> Bucket:
    params, olds = [p for p, _ in members], [old for _, old in members]
    return Bucket(group, params, olds, step, product, online)
