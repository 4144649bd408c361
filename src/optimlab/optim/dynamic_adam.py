"""DynamicAdam: Adam whose beta1 is set every step by a small gate network, meta-learned online.

The math (design notes, section 3), with g_t the gradient after maximize and L2 decay:

    beta1_t = lo + (hi - lo) * sigmoid(gate(x_t)),   x_t = [slog(mean g_t), slog(var g_t)]
    m_t = beta1_t m_{t-1} + (1 - beta1_t) g_t,        v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    P_t = prod_{s<=t} beta1_s,  mhat = m_t / (1 - P_t),  vhat = v_t / (1 - beta2^t)
    theta_{t+1} = theta_t - lr * mhat / (sqrt(vhat) + eps)

The gate descends the one-step hypergradient dL/dbeta1_t = <grad L(theta_{t+1}), u_t> with
u_t = dtheta_{t+1}/dbeta1_t in closed form: no create_graph, no second-order graph.
See docs/dynamic_adam.md for the derivation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optimlab.optim.adam import Adam, check_adam_arguments
from optimlab.optim.gate import (
    CHUNK_NUMEL,
    chunk_features,
    flatten,
    gate_beta1,
    gate_gradients,
    make_gate,
)

HYPERGRADIENTS = ("lookahead", "online")
DIRECTION = "beta1_direction"  # online mode, per parameter: u_t = dtheta_{t+1}/dbeta1_t


def dynamic_adam_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    beta1: float,
    beta1_product: float,
    step: int,
    lr: float,
    beta2: float,
    eps: float,
    decoupled_decay: float,
    with_direction: bool,
) -> list[Tensor] | None:
    """One DynamicAdam update, in place, of tensors that share `step` (t) and `beta1_product`
    (P_{t-1}); `grads` already carry maximize and L2 decay, `decoupled_decay` is lr * wd for
    AdamW-style decay (else 0). Returns u = dtheta_{t+1}/dbeta1 per tensor if `with_direction`
    (the decoupled decay does not depend on beta1, so it does not enter u)."""
    bias_correction1 = 1.0 - beta1_product * beta1  # 1 - P_t
    if decoupled_decay:
        torch._foreach_mul_(params, 1.0 - decoupled_decay)
    direction = torch._foreach_sub(exp_avgs, grads) if with_direction else None  # m_{t-1} - g_t
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    # lr * mhat / (sqrt(vhat) + eps) = step_size * m_t / denom, the bias corrections in scalars
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    step_size = lr * bias_correction2_sqrt / bias_correction1
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps * bias_correction2_sqrt)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -step_size)
    if direction is None:
        return None
    # dmhat/dbeta1 = (m_{t-1} - g_t) / (1 - P_t) + m_t P_{t-1} / (1 - P_t)^2, hence
    # u = -step_size * (m_{t-1} - g_t + m_t P_{t-1} / (1 - P_t)) / denom
    torch._foreach_add_(direction, exp_avgs, alpha=beta1_product / bias_correction1)
    torch._foreach_div_(direction, denom)
    torch._foreach_mul_(direction, -step_size)
    return direction


@dataclass
class _Bucket:
    """Parameters of one group with one step count, beta1 product, dtype and device, up to
    CHUNK_NUMEL elements (or one larger tensor): the unit of the vectorised update."""

    group: dict[str, Any]
    step: int
    beta1_product: float
    numel: int = 0
    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)


class DynamicAdam(Optimizer):
    """Adam with beta1_t = lo + (hi - lo) * sigmoid(gate(x_t)), the gate meta-learned online.

    hypergradient="lookahead": `step(closure=None, meta_closure=None)`. After the update the
    optimizer calls `meta_closure()` (the meta loss on held-out data, at theta_{t+1}), takes
    its gradient with torch.autograd.grad (nothing reaches the model's .grad) and steps the
    gate. Without a meta_closure the gate sets beta1 but does not learn.
    hypergradient="online": hypergradient descent on the training loss (Baydin et al. 2018), a
    drop-in for Adam, `step(closure=None)`: the next step's gradient trains the gate.

    One gate serves all parameter groups (its input reads the whole gradient), so beta1 is
    shared; groups may set lr, eps, weight_decay and betas[1]. With `gate_lr=0` the gate stays
    at its initial output betas[0], and DynamicAdam is Adam (AdamW with
    decoupled_weight_decay=True). A non-finite training gradient raises FloatingPointError
    before anything is modified; a non-finite meta loss or hypergradient skips the gate update
    (counted in `skipped_gate_updates`, warned once).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        gate_lr: float = 1e-3,
        gate_hidden: int = 16,
        beta1_range: tuple[float, float] = (0.0, 0.999),
        hypergradient: str = "lookahead",
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
    ) -> None:
        check_adam_arguments(lr, betas, eps, weight_decay)
        if not 0.0 <= gate_lr:
            raise ValueError(f"Invalid gate_lr value: {gate_lr}")
        if isinstance(gate_hidden, bool) or not isinstance(gate_hidden, int) or gate_hidden < 1:
            raise ValueError(f"Invalid gate_hidden value: {gate_hidden} (need an integer >= 1)")
        if len(beta1_range) != 2 or not 0.0 <= beta1_range[0] < beta1_range[1] < 1.0:
            raise ValueError(f"Invalid beta1_range: {beta1_range} (need 0 <= lo < hi < 1)")
        if hypergradient not in HYPERGRADIENTS:
            raise ValueError(
                f"Invalid hypergradient: {hypergradient!r} (use 'lookahead' or 'online')"
            )
        if not beta1_range[0] < betas[0] < beta1_range[1]:
            raise ValueError(
                f"betas[0]={betas[0]} must lie strictly inside beta1_range={beta1_range}"
            )
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
        )
        super().__init__(params, defaults)
        first = self.param_groups[0]["params"][0]  # the gate takes its dtype and device
        self.hypergradient = hypergradient
        self.beta1_range = (float(beta1_range[0]), float(beta1_range[1]))
        self.gate = make_gate(
            gate_hidden, betas[0], self.beta1_range, dtype=first.dtype, device=first.device
        )
        # foreach: one call per operation for the gate's four small tensors
        self.gate_optimizer = Adam(self.gate.parameters(), lr=gate_lr, foreach=True)
        self.beta1_history: list[float] = []
        self.skipped_gate_updates = 0
        self._features: Tensor | None = None  # online mode: x_t, the gate input of the last step
        self._warned_skip = False

    def __getstate__(self) -> dict[str, Any]:
        """torch's Optimizer pickles (and deep-copies) only defaults, state and param_groups."""
        own = ["hypergradient", "beta1_range", "gate", "gate_optimizer", "beta1_history"]
        own += ["skipped_gate_updates", "_features", "_warned_skip"]
        return {**super().__getstate__(), **{name: getattr(self, name) for name in own}}

    @property
    def last_beta1(self) -> float | None:
        """The beta1 of the last step (None before the first step)."""
        return self.beta1_history[-1] if self.beta1_history else None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = {**self.defaults, **param_group}
        check_adam_arguments(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        if group["betas"][0] != self.defaults["betas"][0]:
            raise ValueError(
                f"betas[0]={group['betas'][0]} differs from {self.defaults['betas'][0]}: "
                "one gate sets beta1 for all parameter groups"
            )
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], Any] | None = None,
        meta_closure: Callable[[], Tensor] | None = None,
    ) -> Any:
        """One update; in lookahead mode, `meta_closure()` then trains the gate (see class)."""
        if meta_closure is not None and self.hypergradient != "lookahead":
            raise ValueError("meta_closure needs hypergradient='lookahead'")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        buckets, new_states, gradless = self._gather()
        if not buckets:
            return loss
        chunks = [flatten(bucket.grads) for bucket in buckets]  # the whole gradient, in pieces
        features = chunk_features(chunks).to(self.param_groups[0]["params"][0])
        online = self.hypergradient == "online"

        if online:  # first train the gate on <g_t, u_{t-1}>, then pick beta1_t with it
            hypergradient = self._online_hypergradient(buckets, chunks).to(features)
            values = torch.cat([features, hypergradient]).tolist()  # one sync
            _raise_if_not_finite(values[:2])
            if self._features is not None:
                self._step_gate(self._features, hypergradient, values[2])
            beta1 = gate_beta1(self.gate, features, *self.beta1_range).item()
        else:
            beta1_tensor = gate_beta1(self.gate, features, *self.beta1_range)
            values = torch.cat([features, beta1_tensor]).tolist()  # one sync
            _raise_if_not_finite(values[:2])
            beta1 = values[2]

        for param, state in new_states:
            self.state[param] = state
        if online:  # u_{t-1} is spent: free it before u_t is allocated (peak memory)
            for param in gradless:  # not moved this step: dtheta/dbeta1 = 0
                self.state[param].pop(DIRECTION, None)
            for state in (state for bucket in buckets for state in bucket.states):
                state.pop(DIRECTION, None)
        with_direction = online or meta_closure is not None
        directions = [self._update(bucket, beta1, with_direction) for bucket in buckets]
        self.beta1_history.append(beta1)
        if online:
            for bucket, direction in zip(buckets, directions, strict=True):
                for state, u in zip(bucket.states, direction, strict=True):
                    state[DIRECTION] = u
            self._features = features
        elif meta_closure is not None:
            self._lookahead(meta_closure, features, buckets, directions)
        return loss

    def _gather(self) -> tuple[list[_Bucket], list[tuple[Tensor, dict]], list[Tensor]]:
        """Buckets of the parameters with a gradient, the states still to create, and the
        parameters with state but no gradient. Nothing is modified yet."""
        buckets: list[_Bucket] = []
        new_states: list[tuple[Tensor, dict]] = []
        gradless: list[Tensor] = []
        for group in self.param_groups:
            params = []
            for p in group["params"]:
                if p.grad is not None:
                    params.append(p)
                elif p in self.state:
                    gradless.append(p)
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse or g.is_complex() for g in grads):
                raise RuntimeError("DynamicAdam does not support sparse or complex gradients")
            if group["maximize"]:
                grads = torch._foreach_neg(grads)
            if group["weight_decay"] and not group["decoupled_weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            open_buckets: dict[tuple, _Bucket] = {}
            for param, grad in zip(params, grads, strict=True):
                state = self.state.get(param)
                if not state:
                    state = _initial_state(param)
                    new_states.append((param, state))
                key = (state["step"], state["beta1_product"], param.dtype, param.device)
                bucket = open_buckets.get(key)
                if bucket is None or bucket.params and bucket.numel + param.numel() > CHUNK_NUMEL:
                    bucket = open_buckets[key] = _Bucket(group, *key[:2])
                    buckets.append(bucket)
                bucket.numel += param.numel()
                bucket.params.append(param)
                bucket.grads.append(grad)
                bucket.states.append(state)
        return buckets, new_states, gradless

    def _update(self, bucket: _Bucket, beta1: float, with_direction: bool) -> list[Tensor] | None:
        group, step, lr = bucket.group, bucket.step + 1, float(bucket.group["lr"])
        direction = dynamic_adam_update(
            bucket.params,
            bucket.grads,
            [state["exp_avg"] for state in bucket.states],
            [state["exp_avg_sq"] for state in bucket.states],
            beta1=beta1,
            beta1_product=bucket.beta1_product,
            step=step,
            lr=lr,
            beta2=group["betas"][1],
            eps=group["eps"],
            decoupled_decay=lr * group["weight_decay"] if group["decoupled_weight_decay"] else 0.0,
            with_direction=with_direction,
        )
        for state in bucket.states:
            state["step"] = step
            state["beta1_product"] = bucket.beta1_product * beta1
        return direction

    def _online_hypergradient(self, buckets: list[_Bucket], chunks: list[Tensor]) -> Tensor:
        """dL_train/dbeta1_{t-1} = <g_t, u_{t-1}>, shape (1,); u = 0 where none is kept."""
        dots = []
        for bucket, chunk in zip(buckets, chunks, strict=True):
            directions = [state.get(DIRECTION) for state in bucket.states]
            if any(u is not None for u in directions):
                dots.append(torch.dot(chunk, flatten(_or_zeros(directions, bucket.grads))))
        return _sum(dots) if dots else chunks[0].new_zeros(1)

    def _lookahead(
        self,
        meta_closure: Callable[[], Tensor],
        features: Tensor,
        buckets: list[_Bucket],
        directions: list[list[Tensor] | None],
    ) -> None:
        """The meta loss at theta_{t+1}, its exact hypergradient <grad L_meta, u_t>, a gate step."""
        with torch.enable_grad():
            meta_loss = meta_closure()
            if not isinstance(meta_loss, Tensor) or meta_loss.numel() != 1:
                raise TypeError("meta_closure must return the meta loss as a scalar tensor")
            params = [p for bucket in buckets for p in bucket.params]
            meta_grads = iter(torch.autograd.grad(meta_loss, params, allow_unused=True))
        dots = []
        for bucket, direction in zip(buckets, directions, strict=True):
            grads = _or_zeros([next(meta_grads) for _ in bucket.params], bucket.params)
            dot = torch.dot(flatten(grads), flatten(direction))
            dots.append(-dot if bucket.group["maximize"] else dot)  # maximize: the gate ascends
        hypergradient = _sum(dots).to(features)
        value = hypergradient.item() if math.isfinite(meta_loss.item()) else math.nan
        self._step_gate(features, hypergradient, value)

    def _step_gate(self, features: Tensor, hypergradient: Tensor, value: float) -> None:
        """Put dL/dphi = dL/dbeta1 * dbeta1/dphi at `features` in the gate's .grad and step its
        Adam; a non-finite `value` (the hypergradient, read once) skips the update instead."""
        if not math.isfinite(value):
            for p in self.gate.parameters():
                p.grad = None
            self.skipped_gate_updates += 1
            if not self._warned_skip:
                self._warned_skip = True
                message = "DynamicAdam: non-finite meta loss or hypergradient, gate update skipped"
                message += " (counted in skipped_gate_updates; this warning is shown once)"
                warnings.warn(message, RuntimeWarning, stacklevel=4)
            return
        params, grads = gate_gradients(self.gate, features, hypergradient, *self.beta1_range)
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
        self.gate_optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state plus a "dynamic_adam" entry: gate, its optimizer, history."""
        state_dict = super().state_dict()
        state_dict["dynamic_adam"] = {
            "hypergradient": self.hypergradient,
            "beta1_range": list(self.beta1_range),
            "gate": self.gate.state_dict(),
            "gate_optimizer": self.gate_optimizer.state_dict(),
            "beta1_history": list(self.beta1_history),
            "skipped_gate_updates": self.skipped_gate_updates,
            "features": self._features,
        }
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("dynamic_adam", None)
        if extra is None:
            raise ValueError("not a DynamicAdam state_dict: it has no 'dynamic_adam' entry")
        saved = (extra["hypergradient"], tuple(extra["beta1_range"]))
        if saved != (self.hypergradient, self.beta1_range):
            raise ValueError(
                f"state_dict is from a DynamicAdam with hypergradient={saved[0]!r}, "
                f"beta1_range={saved[1]}; this one has {self.hypergradient!r}, {self.beta1_range}"
            )
        shapes = {name: tuple(t.shape) for name, t in self.gate.state_dict().items()}
        if {name: tuple(t.shape) for name, t in extra["gate"].items()} != shapes:
            raise ValueError("state_dict has a gate of another shape (gate_hidden differs)")
        super().load_state_dict(state_dict)
        self.gate.load_state_dict(extra["gate"])
        self.gate_optimizer.load_state_dict(extra["gate_optimizer"])
        self.beta1_history = list(extra["beta1_history"])
        self.skipped_gate_updates = int(extra["skipped_gate_updates"])
        features = extra["features"]
        self._features = (
            None if features is None else features.to(self.param_groups[0]["params"][0])
        )


def _initial_state(param: Tensor) -> dict[str, Any]:
    return {
        "step": 0,
        "beta1_product": 1.0,  # P_0, the empty product; a Python float is a float64
        "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
    }


def _sum(scalars: list[Tensor]) -> Tensor:
    """The sum of 0-d tensors, as shape (1,)."""
    return scalars[0].reshape(1) if len(scalars) == 1 else torch.stack(scalars).sum().reshape(1)


def _or_zeros(tensors: list[Tensor | None], likes: list[Tensor]) -> list[Tensor]:
    """`tensors` with zeros shaped like `likes` in place of None (no gradient, no direction)."""
    pairs = zip(tensors, likes, strict=True)
    return [torch.zeros_like(like) if t is None else t for t, like in pairs]


def _raise_if_not_finite(statistics: list[float]) -> None:
    """A non-finite gradient stops training before it reaches any state."""
    if not all(map(math.isfinite, statistics)):
        raise FloatingPointError(
            f"DynamicAdam: the gradient is not finite (gate input {statistics}); "
            "parameters, moments and gate were left unchanged"
        )
