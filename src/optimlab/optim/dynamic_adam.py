"""DynamicAdam: Adam whose beta1 is set every step by a small gate network, meta-learned online.

The math (design notes, section 3), with g_t the gradient after maximize and L2 decay:

    beta1_t = lo + (hi - lo) * sigmoid(gate(x_t)),   x_t = [slog(mean g_t), slog(var g_t)]
    m_t = beta1_t m_{t-1} + (1 - beta1_t) g_t,        v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    P_t = prod_{s<=t} beta1_s,  mhat = m_t / (1 - P_t),  vhat = v_t / (1 - beta2^t)
    theta_{t+1} = theta_t - lr * mhat / (sqrt(vhat) + eps)

The gate descends the one-step hypergradient dL/dbeta1_t = <grad L(theta_{t+1}), u_t> with
u_t = dtheta_{t+1}/dbeta1_t in closed form: no create_graph, no second-order graph.
See docs/algorithms.md (DynamicAdam) for the derivation. The state lives in flat buckets
(dynamic_adam_buckets.py) and the gate in one flat tensor (gate.py): on a small model the
step costs per torch call, so the step is written with few of them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optimlab.optim._common import check_compilable
from optimlab.optim.adam import check_adam_arguments
from optimlab.optim.dynamic_adam_buckets import Plan
from optimlab.optim.dynamic_adam_compiled import (
    compiled_bucket_dots,
    compiled_bucket_sums,
    compiled_bucket_updates,
)
from optimlab.optim.gate import (
    GateAdam,
    GateTensors,
    gate_forward,
    gate_gradients,
    make_gate,
    sigmoid,
    standard_tensors,
    write_gate_gradient,
)
from optimlab.optim.gate_input import chunk_moments, combine_moments, slog_value

HYPERGRADIENTS = ("lookahead", "online")


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
    (counted in `skipped_gate_updates`, warned once). The per-parameter state tensors are views
    of flat buffers: replace them through load_state_dict, not by assignment.

    compile=True runs the gradient statistics, the update and the lookahead dot products
    through torch.compile (dynamic_adam_compiled.py), each one pass over memory, compiled once
    per layout of parameters at the first step (seconds); the gate stays eager. It is the
    optimizer's choice of path, not state: a state dict of either path loads into either.
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
        compile: bool = False,
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
        if compile:
            check_compilable([p for group in self.param_groups for p in group["params"]])
        first = self.param_groups[0]["params"][0]  # the gate takes its dtype and device
        self.hypergradient = hypergradient
        self.compile = bool(compile)
        self.beta1_range = (float(beta1_range[0]), float(beta1_range[1]))
        self.gate = make_gate(
            gate_hidden, betas[0], self.beta1_range, dtype=first.dtype, device=first.device
        )
        self.gate_optimizer: Any = GateAdam(self.gate, lr=gate_lr)
        self.beta1_history: list[float] = []
        self.skipped_gate_updates = 0
        self._features: Tensor | None = None  # online mode: x_t, the gate input of the last step
        self._warned_skip = False
        self._clear_caches()

    def _clear_caches(self) -> None:
        self._plan: Plan | None = None  # the buckets, rebuilt from self.state when stale
        self._activations: tuple[Tensor, GateTensors | None, float] | None = None  # x, -, s

    def __getstate__(self) -> dict[str, Any]:
        """torch's Optimizer pickles (and deep-copies) only defaults, state and param_groups."""
        own = ["hypergradient", "beta1_range", "gate", "gate_optimizer", "beta1_history"]
        own += ["skipped_gate_updates", "_features", "_warned_skip", "compile"]
        return {**super().__getstate__(), **{name: getattr(self, name) for name in own}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("compile", False)  # pickled before compile=True existed
        self._clear_caches()

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
        online = self.hypergradient == "online"
        plan = self._plan
        if plan is None or not plan.matches(self.param_groups):
            plan = Plan(self.param_groups, self.state, online)  # installed once all is finite
        if not plan.buckets:
            return loss
        # g_t, flat, per bucket; the compiled kernels read the .grad themselves
        grads = None if self.compile else [bucket.gradient() for bucket in plan.buckets]
        features, hypergradient = self._statistics(plan, grads)  # raises if not finite
        if not plan.installed:
            plan.install(self.state)
            self._plan = plan

        tensors = standard_tensors(self.gate)  # None unless it is Linear -> Tanh -> Linear
        if online and self._features is not None:  # first train the gate on <g_t, u_{t-1}>
            self._train_gate(self._features, hypergradient, tensors)
        first = self.param_groups[0]["params"][0]
        x = torch.as_tensor(features, dtype=first.dtype, device=first.device)
        beta1 = self._beta1(x, tensors)  # then pick beta1_t with the gate as it is now
        self.beta1_history.append(beta1)
        with_direction = online or meta_closure is not None
        if grads is None:
            directions = compiled_bucket_updates(plan.buckets, beta1, with_direction)
        else:
            directions = [
                bucket.update(grad, beta1, with_direction)
                for bucket, grad in zip(plan.buckets, grads, strict=True)
            ]
        if online:
            self._features = x
        elif meta_closure is not None:
            self._lookahead(meta_closure, x, tensors, plan, directions)
        return loss

    def _statistics(self, plan: Plan, grads: list[Tensor] | None) -> tuple[list[float], float]:
        """The gate input x_t = [slog(mean g_t), slog(var g_t)] and, online, the hypergradient
        <g_t, u_{t-1}> = dL_train/dbeta1_{t-1}, read with one synchronisation: per bucket
        sum(g), sum(g^2) (and the dot product) in one call (compiled: in one pass for all
        buckets, `grads` None). A non-finite x_t raises here, before anything is modified."""
        buckets = plan.buckets
        if grads is None:
            values = compiled_bucket_sums(buckets).tolist()
        else:
            values = _read([b.raw_moments(g) for b, g in zip(buckets, grads, strict=True)], plan)
        stride, numel = (3 if plan.online else 2), max(plan.numel, 1)
        mean = sum(values[0::stride]) / numel
        var = sum(values[1::stride]) / numel - mean * mean
        if not mean * mean <= var:  # |mean| > std (or not finite): two passes, no cancellation
            grads = grads or [bucket.gradient() for bucket in buckets]
            moments = _read([torch.stack(chunk_moments(g)) for g in grads], plan)
            mean, var = combine_moments(plan.counts, moments[0::2], moments[1::2])
        features = [slog_value(mean), slog_value(var)]
        if not (math.isfinite(features[0]) and math.isfinite(features[1])):
            raise FloatingPointError(
                f"DynamicAdam: the gradient is not finite (gate input {features}); "
                "parameters, moments and gate were left unchanged"
            )
        if not plan.online:
            return features, 0.0
        dots = zip(buckets, values[2::3], strict=True)  # <g_t, w_{t-1}>, u_{t-1} = c w_{t-1}
        return features, sum([bucket.direction_scale * dot for bucket, dot in dots])

    def _beta1(self, x: Tensor, tensors: GateTensors | None) -> float:
        """beta1_t = lo + (hi - lo) * sigmoid(gate(x_t)); the standard gate keeps its
        activations in `tensors` for its gradient."""
        s = sigmoid(self.gate(x).item()) if tensors is None else gate_forward(tensors, x)
        self._activations = (x, tensors, s)
        lo, hi = self.beta1_range
        return lo + (hi - lo) * s

    def _lookahead(
        self,
        meta_closure: Callable[[], Tensor],
        x: Tensor,
        tensors: GateTensors | None,
        plan: Plan,
        directions: list[Tensor | None],
    ) -> None:
        """The meta loss at theta_{t+1}, its exact hypergradient <grad L_meta, u_t>, a gate step."""
        with torch.enable_grad():
            meta_loss = meta_closure()
            if not isinstance(meta_loss, Tensor) or meta_loss.numel() != 1:
                raise TypeError("meta_closure must return the meta loss as a scalar tensor")
            meta_grads = torch.autograd.grad(meta_loss, plan.params, allow_unused=True)
        if self.compile:
            dots = compiled_bucket_dots(plan.buckets, meta_grads)
            values = [meta_loss.item(), *dots.tolist()]
        else:
            values = self._dots(plan, meta_loss, meta_grads, directions)
        hypergradient = sum(  # u_t = c_t w_t; with maximize the gate ascends
            (-dot if bucket.group["maximize"] else dot) * bucket.direction_scale
            for bucket, dot in zip(plan.buckets, values[1:], strict=True)
        )
        self._train_gate(x, hypergradient if math.isfinite(values[0]) else math.nan, tensors)

    @staticmethod
    def _dots(
        plan: Plan, meta_loss: Tensor, meta_grads: tuple, directions: list[Tensor | None]
    ) -> list[float]:
        """[L_meta, <grad L_meta, w_t> per bucket], read with one synchronisation."""
        dots, start = [meta_loss.reshape(()) if meta_loss.dim() else meta_loss], 0
        for bucket, direction in zip(plan.buckets, directions, strict=True):
            end = start + len(bucket.params)
            dots.append(torch.dot(bucket.flatten(meta_grads[start:end]), direction))
            start = end
        return _read([torch.stack(dots)], plan) if plan.one_device else [d.item() for d in dots]

    def _train_gate(self, x: Tensor, hypergradient: float, tensors: GateTensors | None) -> None:
        """Put dL/dphi = dL/dbeta1 * dbeta1/dphi at input x in the gate's .grad and step its
        optimizer; a non-finite hypergradient (or meta loss) skips the update instead."""
        gate = self.gate
        if not math.isfinite(hypergradient):
            for p in gate.parameters():
                p.grad = None
            self.skipped_gate_updates += 1
            if not self._warned_skip:
                self._warned_skip = True
                message = "DynamicAdam: non-finite meta loss or hypergradient, gate update skipped"
                message += " (counted in skipped_gate_updates; this warning is shown once)"
                warnings.warn(message, RuntimeWarning, stacklevel=4)
            return
        lo, hi = self.beta1_range
        optimizer = self.gate_optimizer
        if tensors is not None and type(optimizer) is GateAdam and optimizer.gate is gate:
            cached = self._activations  # the flat fast path
            valid = cached is not None and cached[0] is x and cached[1] is tensors
            s = cached[2] if valid else gate_forward(tensors, x)  # e.g. after load_state_dict
            gate.attach_grad()
            write_gate_gradient(tensors, x, hypergradient * (hi - lo) * s * (1.0 - s))
        else:  # any gate module, any optimizer
            upstream = torch.tensor([hypergradient], dtype=x.dtype, device=x.device)
            params, grads = gate_gradients(gate, x, upstream, lo, hi)
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad
        optimizer.step()

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
        self._clear_caches()


def _read(tensors: list[Tensor], plan: Plan) -> list[float]:
    """The values of 1-D tensors, concatenated, as Python floats, read with one device
    synchronisation where they share a device."""
    if len(tensors) == 1:
        return tensors[0].tolist()
    if plan.one_device:
        return torch.cat(tensors).tolist()
    return [value for t in tensors for value in t.tolist()]
