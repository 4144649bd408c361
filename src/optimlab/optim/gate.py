"""The beta1 gate of DynamicAdam: gradient features -> small MLP -> beta1 in (lo, hi).

Plain functions and a module, so that other code (the batched 2-D version in the surfaces
benchmark, the references, the tests) can reproduce the gate exactly:

    x_t     = gradient_features(grads)             # [slog(mean g), slog(var g)], detached
    beta1_t = beta1_from_output(gate(x_t), lo, hi) # lo + (hi - lo) * sigmoid(gate(x_t))

and the gate's side of the hypergradient, dL/dphi = dL/dbeta1 * dbeta1/dphi (gate_gradients).
The gate is a `Gate`, an nn.Sequential whose four parameters are views of one flat tensor:
DynamicAdam runs its forward and backward by hand (gate_forward, write_gate_gradient) and
trains it with `GateAdam`, a few whole-tensor operations a step. On a small model the
optimizer step costs per torch call, and the gate is most of the calls.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from optimlab.optim.gate_input import CHUNK_NUMEL, gradient_features, slog

__all__ = [
    "CHUNK_NUMEL",
    "FEATURES",
    "Gate",
    "GateAdam",
    "GateTensors",
    "beta1_from_output",
    "gate_forward",
    "gate_gradients",
    "gradient_features",
    "make_gate",
    "slog",
    "standard_tensors",
    "write_gate_gradient",
]

FEATURES = 2  # the gate input: [slog(mean g), slog(var g)] (gate_input.py)


def beta1_from_output(output: Tensor, lo: float, hi: float) -> Tensor:
    """Map the gate's raw output to beta1 = lo + (hi - lo) * sigmoid(output)."""
    return lo + (hi - lo) * torch.sigmoid(output)


class GateTensors(NamedTuple):
    """What the hand-written forward and backward of the standard gate work on: the weights
    W1 (hidden x 2), b1, w2 and last = [w2, b2]; `jacobian`, dz/dphi = [k x^T, k, h, 1] for
    z = w2 . h + b2 (k = w2 (1 - h^2)), with views of its parts: hidden = [h, 1], where the
    forward writes h (head), and k (also as a column) and k x^T; and the gradient `grad`."""

    w1: Tensor
    b1: Tensor
    w2: Tensor
    last: Tensor
    jacobian: Tensor
    hidden: Tensor
    head: Tensor
    k: Tensor
    k_column: Tensor
    k_x: Tensor
    grad: Tensor

    @classmethod
    def new(cls, w1: Tensor, b1: Tensor, last: Tensor, grad: Tensor) -> GateTensors:
        """Around given weights and a flat gradient, both laid out as [W1, b1, w2, b2]."""
        jacobian = grad.new_ones(grad.numel())
        k_x, k, hidden = jacobian.split([w1.numel(), b1.numel(), last.numel()])
        return cls(
            w1, b1, last[:-1], last, jacobian, hidden, hidden[:-1],
            k, k.view(-1, 1), k_x.view(w1.shape), grad,
        )  # fmt: skip


class Gate(nn.Sequential):
    """The gate MLP, Linear(2, hidden) -> Tanh -> Linear(hidden, 1), an ordinary nn.Sequential
    (gate[0].weight, state_dict keys "0.weight"..., autograd through its forward) whose four
    parameters are views of one flat tensor, phi = [W1 (row-major), b1, w2, b2] (the layout
    of the batched gate in optimlab.surfaces), and whose .grad are views of another, phi_grad.

    The optimizer then computes dbeta1/dphi into phi_grad and takes the gate's Adam step as
    a handful of single-tensor operations instead of a handful per parameter. `tensors`
    (GateTensors) holds the views its hand-written forward and backward use.
    """

    def __init__(self, hidden: int, *, dtype: torch.dtype, device: torch.device | str) -> None:
        options = {"dtype": dtype, "device": device}
        super().__init__(
            nn.Linear(FEATURES, hidden, **options), nn.Tanh(), nn.Linear(hidden, 1, **options)
        )
        self._share_storage()

    def flat(self) -> Tensor:
        """phi, the tensor the four parameters are views of. If something gave a parameter
        storage of its own (copy.deepcopy, pickling, Module.to, load_state_dict(assign=True)),
        phi is first rebuilt from the parameters' values."""
        first, _, last = self._modules.values()
        (w1, b1), (w2, b2) = first._parameters.values(), last._parameters.values()
        base = self.phi.data_ptr()  # phi is alive: a parameter at base + offset is in it
        offsets = (w1.data_ptr() - base, b1.data_ptr() - base, w2.data_ptr() - base)
        if (*offsets, b2.data_ptr() - base) != self._offsets:
            self._share_storage()
        return self.phi

    def attach_grad(self) -> None:
        """Make phi_grad's views the parameters' .grad (call after flat())."""
        for p, grad in zip(self._params, self._grad_views, strict=True):
            if p.grad is not grad:
                p.grad = grad

    def _share_storage(self) -> None:
        """Copy the parameters into a new phi and make them views of it; a new phi_grad and
        new GateTensors around them."""
        first, _, last = self._modules.values()
        params = [first.weight, first.bias, last.weight, last.bias]
        with torch.no_grad():
            self.phi = torch.cat([p.detach().reshape(-1) for p in params])
        self.phi_grad = torch.zeros_like(self.phi)
        sizes = [p.numel() for p in params]
        views = [v.view_as(p) for v, p in zip(self.phi.split(sizes), params, strict=True)]
        grads = [v.view_as(p) for v, p in zip(self.phi_grad.split(sizes), params, strict=True)]
        for p, view in zip(params, views, strict=True):
            p.data = view
            p.grad = None
        self._params, self._grad_views = params, grads
        self._offsets = tuple(p.data_ptr() - self.phi.data_ptr() for p in params)
        last_layer = self.phi[sizes[0] + sizes[1] :]  # [w2, b2]
        self.tensors = GateTensors.new(views[0], views[1], last_layer, self.phi_grad)


def make_gate(
    hidden: int,
    beta1: float,
    beta1_range: tuple[float, float],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> Gate:
    """The gate MLP, Linear(2, hidden) -> Tanh -> Linear(hidden, 1), that outputs `beta1`.

    The last layer starts with zero weight and bias logit((beta1 - lo) / (hi - lo)), so
    beta1_from_output(gate(x)) == beta1 for every x: an untrained DynamicAdam is Adam. The
    first layer has nn.Linear's default initialisation, drawn from torch's global generator
    (reproducible from torch.manual_seed) without advancing it, so building a DynamicAdam
    does not change the random numbers a training loop draws afterwards.
    """
    lo, hi = beta1_range
    with torch.random.fork_rng(devices=[]):
        gate = Gate(hidden, dtype=torch.float64, device="cpu")
    with torch.no_grad():
        gate[2].weight.zero_()
        gate[2].bias.fill_(logit((beta1 - lo) / (hi - lo)))
    gate = gate.to(device=device, dtype=dtype)
    gate.flat()  # phi in the new dtype and device
    return gate


def logit(q: float) -> float:
    """The inverse of the sigmoid, log(q / (1 - q)), for 0 < q < 1."""
    return math.log(q / (1.0 - q))


def standard_tensors(gate: nn.Module) -> GateTensors | None:
    """GateTensors of a Linear -> Tanh -> Linear(., 1) gate: a Gate's own (views of phi, kept
    between calls), or new ones for an equivalent nn.Sequential; None for any other module."""
    if type(gate) is Gate:
        gate.flat()
        return gate.tensors
    if not (isinstance(gate, nn.Sequential) and len(gate) == 3):
        return None
    first, tanh, last = gate
    kinds = (type(first), type(tanh), type(last)) == (nn.Linear, nn.Tanh, nn.Linear)
    return _new_tensors(first, last) if kinds and last.out_features == 1 else None


def _new_tensors(first: nn.Linear, last: nn.Linear) -> GateTensors:
    """GateTensors with copies of the weights, new activations and a new gradient."""
    with torch.no_grad():
        weights = (first.weight, first.bias, torch.cat([last.weight.reshape(-1), last.bias]))
        grad = first.weight.new_empty(sum(w.numel() for w in weights))
        return GateTensors.new(*weights, grad)


# --- the gate's forward and backward by hand ------------------------------------------------


def gate_forward(tensors: GateTensors, x: Tensor) -> float:
    """s = sigmoid(w2 . h + b2) with h = tanh(W1 x + b1) written into tensors.head: the forward
    of the standard gate in three calls, without the cost of four nn.Module calls."""
    torch.addmv(tensors.b1, tensors.w1, x, out=tensors.head).tanh_()
    return sigmoid(torch.dot(tensors.last, tensors.hidden).item())  # [w2, b2] . [h, 1]


def sigmoid(z: float) -> float:
    """The logistic function 1 / (1 + exp(-z)) of a float, without overflow."""
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    exp_z = math.exp(z)  # NaN lands here and stays NaN
    return exp_z / (1.0 + exp_z)


def write_gate_gradient(tensors: GateTensors, x: Tensor, dz: float) -> None:
    """dL/dphi = dz dz/dphi into tensors.grad, with dz = dL/dbeta1 (hi - lo) s (1 - s) the
    gradient at the sigmoid's input, from the activations h of the last gate_forward at x:
        dz/dphi = [k x^T, k, h, 1]  for phi = [W1, b1, w2, b2],  k = w2 (1 - h^2) (tanh').
    """
    h, k = tensors.head, tensors.k
    torch.mul(tensors.w2, h, out=k)
    torch.addcmul(tensors.w2, k, h, value=-1.0, out=k)  # w2 - w2 h h
    torch.mul(tensors.k_column, x, out=tensors.k_x)  # the outer product k x^T
    torch.mul(tensors.jacobian, dz, out=tensors.grad)


def gate_gradients(
    gate: nn.Module, x: Tensor, upstream: Tensor, lo: float, hi: float
) -> tuple[list[Tensor], list[Tensor]]:
    """The gate's parameters phi and upstream * dbeta1/dphi at input x (upstream: shape (1,)).

    The standard gate is backpropagated by hand (write_gate_gradient; autograd's numbers,
    tested): on CPU an autograd graph costs more than this whole gate. Any other gate module
    is differentiated by autograd.
    """
    params = list(gate.parameters())
    if standard_tensors(gate) is None:
        with torch.enable_grad():
            beta1 = beta1_from_output(gate(x), lo, hi).reshape(1)
            grads = torch.autograd.grad(beta1, params, upstream, materialize_grads=True)
        return params, list(grads)
    tensors = _new_tensors(gate[0], gate[2])  # not a Gate's own: its activations stay as they are
    with torch.no_grad():
        s = gate_forward(tensors, x)
        write_gate_gradient(tensors, x, float(upstream) * (hi - lo) * s * (1.0 - s))
    sizes = [p.numel() for p in params]
    return params, [g.view_as(p) for g, p in zip(tensors.grad.split(sizes), params, strict=True)]


# --- the gate's optimizer --------------------------------------------------------------------


class GateAdam:
    """Adam on a Gate's flat parameters phi, with torch.optim.Adam's update (no weight decay):

        m_t = lerp(m_{t-1}, g_t, 1 - beta1),  v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
        phi_t = phi_{t-1} - lr m_t / (1 - beta1^t) / (sqrt(v_t / (1 - beta2^t)) + eps)

    with g_t in gate.phi_grad (the parameters' .grad): six single-tensor operations a step,
    instead of an Optimizer.step over four small tensors (several times the cost on CPU).
    `lr` may be changed between steps.
    """

    def __init__(
        self,
        gate: Gate,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.gate = gate
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), eps
        self.steps = 0
        phi = gate.flat()
        self._set_moments(torch.zeros_like(phi), torch.zeros_like(phi))

    def _set_moments(self, exp_avg: Tensor, exp_avg_sq: Tensor) -> None:
        """The moments, and a scratch tensor like them for the update's denominator."""
        self.exp_avg, self.exp_avg_sq = exp_avg, exp_avg_sq
        self.denom = torch.empty_like(exp_avg_sq)

    def step(self) -> None:
        """One Adam step of phi with the gradient g in gate.phi_grad, the bias corrections
        folded into scalars: phi -= lr sqrt(1 - beta2^t) / (1 - beta1^t) m_t / denom_t,
        denom_t = sqrt(v_t) + eps sqrt(1 - beta2^t) (written into the scratch tensor)."""
        self.steps += 1
        (beta1, beta2), t = self.betas, self.steps
        phi, grad = self.gate.flat(), self.gate.phi_grad
        exp_avg, exp_avg_sq = self.exp_avg, self.exp_avg_sq
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
        denom = torch.sqrt(exp_avg_sq, out=self.denom).add_(self.eps * bias_correction2_sqrt)
        phi.addcdiv_(exp_avg, denom, value=-self.lr * bias_correction2_sqrt / (1.0 - beta1**t))

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "step": self.steps,
            "exp_avg": self.exp_avg,
            "exp_avg_sq": self.exp_avg_sq,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads state_dict() output, or a torch-style Adam state dict over the gate's four
        parameters (the format of DynamicAdam checkpoints before the flat gate)."""
        if "param_groups" in state_dict:
            state_dict = _flat_adam_state(state_dict, self.gate)
        phi = self.gate.flat()
        moments = state_dict["exp_avg"], state_dict["exp_avg_sq"]
        if any(tuple(m.shape) != tuple(phi.shape) for m in moments):
            raise ValueError("state_dict has a gate optimizer for a gate of another shape")
        self.lr, self.eps = float(state_dict["lr"]), float(state_dict["eps"])
        self.betas = (float(state_dict["betas"][0]), float(state_dict["betas"][1]))
        self.steps = int(state_dict["step"])
        self._set_moments(*(m.to(phi, copy=True) for m in moments))


def _flat_adam_state(state_dict: dict[str, Any], gate: Gate) -> dict[str, Any]:
    """A torch-style Adam state dict over [W1, b1, W2, b2] in GateAdam.state_dict()'s form."""
    (group,) = state_dict["param_groups"]
    states = [state_dict["state"].get(index, {}) for index in group["params"]]
    params = list(gate.parameters())
    moments = {
        key: torch.cat([s[key].reshape(-1) if s else torch.zeros_like(p).reshape(-1)
                        for s, p in zip(states, params, strict=True)])
        for key in ("exp_avg", "exp_avg_sq")
    }  # fmt: skip
    step = int(states[0]["step"]) if states[0] else 0
    return {
        "lr": group["lr"],
        "betas": group["betas"],
        "eps": group["eps"],
        "step": step,
        **moments,
    }
