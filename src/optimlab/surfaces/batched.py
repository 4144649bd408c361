"""Optimizer updates on a batch of independent 2-D problems, one row of an (N, 2) tensor each.

Each rule is the library optimizer's update (optimlab.optim, torch.optim semantics) written on
rows: hyperparameters are (N, 1) tensors, so one batch holds many start points, tuning trials
and even several functions at once, and costs about as much per step as a single run (for
tensors this small, the time goes into per-operation overhead, not arithmetic). Nothing is
pooled across rows; tests check each row against the library optimizer run alone.

A rule is called once per step as `rule(theta, grad, meta_grad) -> new theta`, where
`meta_grad` is the noise-free gradient at theta (DynamicAdam's lookahead meta loss is the
function itself, so the gradient it needs at theta_{t+1} is the next step's clean gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from optimlab.optim.gate import make_gate, slog


class SGD:
    """torch.optim.SGD with momentum, dampening 0: the buffer starts as the first gradient."""

    def __init__(self, theta: Tensor, *, lr: Tensor, momentum: Tensor) -> None:
        self.lr, self.momentum = lr, momentum
        self.b: Tensor | None = None

    def __call__(self, theta: Tensor, g: Tensor, meta_g: Tensor) -> Tensor:
        self.b = g.clone() if self.b is None else self.b * self.momentum + g
        return torch.addcmul(theta, self.b, -self.lr)  # fused, as theta.add_(b, alpha=-lr)


class Adagrad:
    """torch.optim.Adagrad with lr_decay 0 and a zero initial accumulator."""

    def __init__(self, theta: Tensor, *, lr: Tensor, eps: float = 1e-10) -> None:
        self.lr, self.eps = lr, eps
        self.sum = torch.zeros_like(theta)

    def __call__(self, theta: Tensor, g: Tensor, meta_g: Tensor) -> Tensor:
        self.sum = torch.addcmul(self.sum, g, g)  # s_t = s_{t-1} + g_t^2
        return theta - self.lr * g / (self.sum.sqrt() + self.eps)


class RMSprop:
    """torch.optim.RMSprop, not centered, without momentum: eps after the square root."""

    def __init__(
        self, theta: Tensor, *, lr: Tensor, alpha: float = 0.99, eps: float = 1e-8
    ) -> None:
        self.lr, self.alpha, self.eps = lr, alpha, eps
        self.square_avg = torch.zeros_like(theta)

    def __call__(self, theta: Tensor, g: Tensor, meta_g: Tensor) -> Tensor:
        # v_t = a v_{t-1} + (1 - a) g_t^2
        self.square_avg = torch.addcmul(self.square_avg * self.alpha, g, g, value=1 - self.alpha)
        return theta - self.lr * g / (self.square_avg.sqrt() + self.eps)


class Adam:
    """optimlab.optim.Adam (torch.optim.Adam up to rounding), bias corrections folded into
    the step size and eps as the library does. Also DynamicAdam's gate optimizer."""

    def __init__(
        self,
        theta: Tensor,
        *,
        lr: Tensor | float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.m, self.v = torch.zeros_like(theta), torch.zeros_like(theta)
        self.t = 0

    def __call__(self, theta: Tensor, g: Tensor, meta_g: Tensor) -> Tensor:
        self.t += 1
        self.m = self.m.lerp(g, 1 - self.beta1)  # m_t = b1 m + (1 - b1) g
        self.v = torch.addcmul(self.v * self.beta2, g, g, value=1 - self.beta2)  # v_t
        bias_correction1 = 1 - self.beta1**self.t
        bias_correction2_sqrt = math.sqrt(1 - self.beta2**self.t)
        denom = self.v.sqrt() + self.eps * bias_correction2_sqrt
        return theta + -self.lr * bias_correction2_sqrt / bias_correction1 * self.m / denom


class DynamicAdam:
    """optimlab.optim.DynamicAdam per row: each row has its own gate, gate optimizer and state.

    The gate's parameters are one flat (N, 4H + 1) tensor per batch, [W1 (H x 2), b1, w2, b2],
    and its hypergradient is written out by hand (dbeta1/dphi of the 2-layer MLP, the chain
    rule autograd applies through the gate), without a graph per step. `lookahead` (N, 1)
    picks, per row, the meta gradient at theta_{t+1}: the noise-free gradient (lookahead, the
    meta loss being the function) or the training gradient g_{t+1} (online). Either way the
    gate learns at the start of step t+1, before beta1_{t+1} is computed, as in the library.
    """

    def __init__(
        self,
        theta: Tensor,
        *,
        lr: Tensor,
        lookahead: Tensor,
        gate: Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        beta1_range: tuple[float, float] = (0.0, 0.999),
        gate_lr: float = 1e-3,
    ) -> None:
        self.lr, self.lookahead, self.beta2, self.eps = lr, lookahead.bool(), betas[1], eps
        self.lo, self.hi = beta1_range
        self.hidden = (gate.shape[1] - 1) // 4
        self.phi = gate.clone()
        self.gate_optimizer = Adam(self.phi, lr=gate_lr)
        self.m, self.v = torch.zeros_like(theta), torch.zeros_like(theta)
        self.P = torch.ones_like(theta[:, :1])  # P_t = prod_{s <= t} beta1_s
        self.t = 0
        self.one = torch.ones((), dtype=theta.dtype)
        self.pending: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # x_t, h, s, u_t

    def _gate(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """beta1 = lo + (hi - lo) sigmoid(w2 . tanh(W1 x + b1) + b2), and the activations."""
        H = self.hidden
        W1 = self.phi[:, : 2 * H].view(-1, H, 2)
        b1, w2, b2 = self.phi[:, 2 * H : 3 * H], self.phi[:, 3 * H : 4 * H], self.phi[:, 4 * H :]
        h = torch.tanh(torch.bmm(W1, x.unsqueeze(2)).squeeze(2) + b1)
        # not torch.sigmoid: it rounds its vectorised body and its scalar tail differently (by
        # an ulp), so a row's beta1 would depend on where the row sits in the batch
        s = 1 / (1 + torch.exp(-((w2 * h).sum(1, keepdim=True) + b2)))
        return self.lo + (self.hi - self.lo) * s, h, s

    def _train_gate(self, dL_dbeta1: Tensor, x: Tensor, h: Tensor, s: Tensor) -> None:
        """dL/dphi = dL/dbeta1 dbeta1/dphi, then one step of the gate's own Adam."""
        w2 = self.phi[:, 3 * self.hidden : 4 * self.hidden]
        dz = dL_dbeta1 * (self.hi - self.lo) * (1 - s) * s
        da = dz * w2 * torch.addcmul(self.one, h, h, value=-1)  # tanh' = 1 - h^2, fused
        grad = torch.cat([(da.unsqueeze(2) * x.unsqueeze(1)).flatten(1), da, dz * h, dz], 1)
        self.phi = self.gate_optimizer(self.phi, grad, grad)

    def __call__(self, theta: Tensor, g: Tensor, meta_g: Tensor) -> Tensor:
        if self.pending is not None:  # the hypergradient of the previous step's beta1
            x, h, s, u = self.pending
            g_next = torch.where(self.lookahead, meta_g, g)
            self._train_gate((g_next * u).sum(1, keepdim=True), x, h, s)
        mean = g.sum(1, keepdim=True) / 2
        deviation = g - mean
        var = (deviation * deviation).sum(1, keepdim=True) / 2
        x = slog(torch.cat([mean, var], 1))  # gate input: [slog(mean g), slog(var g)] per row
        beta1, h, s = self._gate(x)
        self.t += 1
        m_prev, P_prev = self.m, self.P
        self.m = m_prev.lerp(g, 1 - beta1)  # m_t = beta1_t m_{t-1} + (1 - beta1_t) g_t
        self.v = torch.addcmul(self.v * self.beta2, g, g, value=1 - self.beta2)
        self.P = P_prev * beta1
        bias_correction1 = 1 - self.P
        denom = self.v.sqrt() / math.sqrt(1 - self.beta2**self.t) + self.eps
        # u_t = dtheta_{t+1}/dbeta1_t = -lr dmhat/dbeta1 / denom, with
        # dmhat/dbeta1 = (m_{t-1} - (1 - P_{t-1}) g_t) / (1 - P_t)^2 (0 at t = 1)
        dmhat = m_prev - (1 - P_prev) * g  # times (1 - P_t)^2
        self.pending = (x, h, s, dmhat / denom * (-self.lr / bias_correction1**2))
        return theta + -self.lr / bias_correction1 * self.m / denom


@dataclass(frozen=True)
class Variant:
    """A named optimizer setting of the benchmark: its batched rule, the library optimizer it
    reproduces, and which hyperparameters are tuned (name -> (low, high, log scale))."""

    name: str
    rule: type
    library: str
    library_options: dict[str, Any] = field(default_factory=dict)
    rule_options: dict[str, Any] = field(default_factory=dict)
    search: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    defaults: dict[str, float] = field(default_factory=dict)


# Tuning ranges (low, high, log scale): wide enough that no tuned value sat at a bound in
# the default benchmark; steps of Adam-like rules are about lr per coordinate, SGD's are lr
# times a gradient that spans 1e-2 to 1e5 across these functions.
_ADAM_LR = (1e-3, 10.0, True)
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "sgd", SGD, "sgd",
            search={"lr": (1e-7, 1.0, True), "momentum": (0.0, 0.99, False)},
            defaults={"lr": 1e-3, "momentum": 0.9},
        ),
        Variant("adagrad", Adagrad, "adagrad", search={"lr": (1e-3, 30.0, True)},
                defaults={"lr": 1.0}),
        Variant("rmsprop", RMSprop, "rmsprop", search={"lr": (1e-4, 1.0, True)},
                defaults={"lr": 0.03}),
        Variant("adam", Adam, "adam", search={"lr": _ADAM_LR}, defaults={"lr": 0.1}),
        Variant(
            "dynamic_adam_online", DynamicAdam, "dynamic_adam",
            library_options={"hypergradient": "online"}, rule_options={"lookahead": False},
            search={"lr": _ADAM_LR}, defaults={"lr": 0.1},
        ),
        Variant(
            "dynamic_adam", DynamicAdam, "dynamic_adam",
            library_options={"hypergradient": "lookahead"}, rule_options={"lookahead": True},
            search={"lr": _ADAM_LR}, defaults={"lr": 0.1},
        ),
    )
}  # fmt: skip
OPTIMIZER_VARIANTS: tuple[str, ...] = tuple(VARIANTS)


def gate_parameters(gate: torch.nn.Sequential) -> Tensor:
    """A library gate's parameters as one flat row [W1, b1, w2, b2] (the batched layout)."""
    first, last = gate[0], gate[2]
    return torch.cat(
        [first.weight.reshape(-1), first.bias, last.weight.reshape(-1), last.bias]
    ).detach()


def default_gate(
    seed: int, hidden: int = 16, beta1: float = 0.9, beta1_range: tuple[float, float] = (0, 0.999)
) -> Tensor:
    """The gate DynamicAdam builds after torch.manual_seed(seed), as a flat float64 row.

    Every row of a benchmark run starts from this same gate, so a start point run alone or
    in a batch follows the same trajectory; torch's global generator is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gate = make_gate(hidden, beta1, beta1_range, dtype=torch.float64, device="cpu")
    return gate_parameters(gate)
