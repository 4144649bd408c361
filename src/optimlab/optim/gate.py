"""The beta1 gate of DynamicAdam: gradient features -> small MLP -> beta1 in (lo, hi).

These are plain functions so that other code (the batched 2-D version in the surfaces
benchmark, the tests) can reproduce the gate exactly:

    x_t     = gradient_features(grads)             # [slog(mean g), slog(var g)], detached
    beta1_t = beta1_from_output(gate(x_t), lo, hi) # lo + (hi - lo) * sigmoid(gate(x_t))

and the gate's side of the hypergradient, dL/dphi = dL/dbeta1 * dbeta1/dphi (gate_gradients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

FEATURES = 2

# Gradient elements per chunk: small tensors are concatenated into one reduction (fewer
# Python-level ops), large ones are reduced in place (no full copy of the gradient).
CHUNK_NUMEL = 1 << 16


def slog(z: Tensor) -> Tensor:
    """Signed log, sign(z) * log1p(|z|): identity near 0, logarithmic for large |z|.

    Gradient statistics span many orders of magnitude across models and training time;
    slog keeps the gate input O(1)-O(10) without a scale to tune, and keeps the sign.
    """
    return torch.copysign(torch.log1p(torch.abs(z)), z)


def gradient_features(grads: Sequence[Tensor]) -> Tensor:
    """The gate input: [slog(mean), slog(var)] of all elements of all `grads`, detached.

    `var` is the population variance (unbiased=False) of the concatenation of every
    gradient. Returns shape (2,), in the dtype and on the device of `grads[0]`.
    """
    chunks: list[Tensor] = []
    run: list[Tensor] = []  # consecutive small tensors, up to CHUNK_NUMEL elements in all
    run_numel = 0
    for g in grads:
        if run and run_numel + g.numel() > CHUNK_NUMEL:
            chunks.append(flatten(run))
            run, run_numel = [], 0
        run.append(g)
        run_numel += g.numel()
    chunks.append(flatten(run))
    return chunk_features(chunks)


def chunk_features(chunks: Sequence[Tensor]) -> Tensor:
    """gradient_features of the concatenation of the 1-D `chunks`, without concatenating.

    Each chunk is reduced in two passes (its mean, then squared deviations from it, read
    while the chunk is in cache) and the chunks are combined exactly (Chan et al.), so the
    variance stays accurate when |mean| >> std.
    """
    with torch.no_grad():
        means, squared_deviations = zip(
            *[_mean_and_squared_deviation(c) for c in chunks], strict=True
        )
        numel = sum(chunk.numel() for chunk in chunks)
        if len(chunks) == 1:
            return slog(torch.stack([means[0], squared_deviations[0] / numel]))
        counts = torch.tensor([c.numel() for c in chunks], dtype=means[0].dtype)
        counts = counts.to(means[0].device)
        chunk_means = torch.stack(means)
        mean = (counts * chunk_means).sum() / numel
        between = (counts * (chunk_means - mean) ** 2).sum()
        return slog(torch.stack([mean, (torch.stack(squared_deviations).sum() + between) / numel]))


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors as one 1-D tensor: a view for one tensor, a concatenated copy for several."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


def _mean_and_squared_deviation(chunk: Tensor) -> tuple[Tensor, Tensor]:
    """mean(chunk) and sum((chunk - mean)^2), reading the chunk twice while it is in cache."""
    mean = chunk.mean()
    deviation = chunk - mean
    return mean, torch.dot(deviation, deviation)


def beta1_from_output(output: Tensor, lo: float, hi: float) -> Tensor:
    """Map the gate's raw output to beta1 = lo + (hi - lo) * sigmoid(output)."""
    return lo + (hi - lo) * torch.sigmoid(output)


def gate_beta1(gate: nn.Module, x: Tensor, lo: float, hi: float) -> Tensor:
    """beta1 = lo + (hi - lo) * sigmoid(gate(x)) for one input x, as a tensor of shape (1,).

    The standard gate is evaluated as two addmv calls, without the cost of four nn.Module
    calls (paid at every optimizer step); any other gate module is called.
    """
    layers = _standard_layers(gate)
    if layers is None:
        return beta1_from_output(gate(x), lo, hi).reshape(1)
    first, last = layers
    hidden = torch.tanh(torch.addmv(first.bias, first.weight, x))
    return beta1_from_output(torch.addmv(last.bias, last.weight, hidden), lo, hi)


def gate_gradients(
    gate: nn.Module, x: Tensor, upstream: Tensor, lo: float, hi: float
) -> tuple[list[Tensor], list[Tensor]]:
    """The gate's parameters phi and upstream * dbeta1/dphi at input x (upstream: shape (1,)).

    The standard gate is backpropagated by hand, with h = tanh(W1 x + b1),
    s = sigmoid(W2 h + b2), beta1 = lo + (hi - lo) s:
        dz = upstream (hi - lo) s (1 - s);  dW2 = dz h^T,  db2 = dz;
        da = (W2^T dz) (1 - h^2);            dW1 = da x^T,  db1 = da.
    These are autograd's numbers (tested) in ten small ops: on CPU an autograd graph costs
    more than this whole gate. Any other gate module is differentiated by autograd.
    """
    layers = _standard_layers(gate)
    if layers is None:
        params = list(gate.parameters())
        with torch.enable_grad():
            beta1 = gate_beta1(gate, x, lo, hi)
            return params, list(
                torch.autograd.grad(beta1, params, upstream, materialize_grads=True)
            )
    (first, last), aten = layers, torch.ops.aten
    with torch.no_grad():
        h = torch.tanh(torch.addmv(first.bias, first.weight, x))
        s = torch.sigmoid(torch.addmv(last.bias, last.weight, h))
        dz = aten.sigmoid_backward(upstream * (hi - lo), s)
        da = aten.tanh_backward(dz @ last.weight, h)
        grads = [torch.outer(da, x), da, torch.outer(dz, h), dz]
    return [first.weight, first.bias, last.weight, last.bias], grads


def _standard_layers(gate: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """The two Linear layers of a Linear -> Tanh -> Linear(., 1) gate, else None."""
    if not (type(gate) is nn.Sequential and len(gate) == 3):
        return None
    first, tanh, last = gate
    kinds = (type(first), type(tanh), type(last)) == (nn.Linear, nn.Tanh, nn.Linear)
    return (first, last) if kinds and last.out_features == 1 else None


def make_gate(
    hidden: int,
    beta1: float,
    beta1_range: tuple[float, float],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> nn.Sequential:
    """The gate MLP, Linear(2, hidden) -> Tanh -> Linear(hidden, 1), that outputs `beta1`.

    The last layer starts with zero weight and bias logit((beta1 - lo) / (hi - lo)), so
    beta1_from_output(gate(x)) == beta1 for every x: an untrained DynamicAdam is Adam. The
    first layer has nn.Linear's default initialisation, drawn from torch's global generator
    (reproducible from torch.manual_seed) without advancing it, so building a DynamicAdam
    does not change the random numbers a training loop draws afterwards.
    """
    lo, hi = beta1_range
    with torch.random.fork_rng(devices=[]):
        gate = nn.Sequential(
            nn.Linear(FEATURES, hidden, dtype=torch.float64),
            nn.Tanh(),
            nn.Linear(hidden, 1, dtype=torch.float64),
        )
    with torch.no_grad():
        gate[2].weight.zero_()
        gate[2].bias.fill_(logit((beta1 - lo) / (hi - lo)))
    return gate.to(device=device, dtype=dtype)


def logit(q: float) -> float:
    """The inverse of the sigmoid, log(q / (1 - q)), for 0 < q < 1."""
    return math.log(q / (1.0 - q))
