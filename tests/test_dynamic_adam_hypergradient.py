"""DynamicAdam's closed-form hypergradients against autograd (create_graph) and finite differences.

The references rebuild theta_{t+1} as a differentiable function of the gate parameters phi
the way the published code does (loss.backward(create_graph=True), fast weights from the
live parameters), or perturb phi and rerun the real update; both hold the step's state fixed,
which is the one-step objective the optimizer differentiates.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import torch
from test_dynamic_adam import backward, make_problem, mse
from torch import nn
from torch.func import functional_call

from optimlab.optim.adam import Adam
from optimlab.optim.dynamic_adam import DynamicAdam
from optimlab.optim.gate import beta1_from_output, gate_gradients, make_gate

ROOT = Path(__file__).resolve().parents[1]


def create_graph_hypergradient(model, optimizer, gate, batch, objective):
    """dL/dphi through the whole training update (autograd, second-order graph kept).

    `model` is at theta_t with `optimizer` holding the state before step t, `gate` a copy of
    the gate at phi_t; `objective(params)` is the loss at theta_{t+1}.
    """
    (group,) = optimizer.param_groups
    lr, (_, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    lo, hi = optimizer.beta1_range
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(mse(model, batch), params, create_graph=True)
    grads = [g + wd * p for g, p in zip(grads, params, strict=True)]
    everything = torch.cat([g.detach().reshape(-1) for g in grads])
    x = torch.stack([everything.mean(), everything.var(unbiased=False)])
    beta1 = lo + (hi - lo) * torch.sigmoid(gate(x.sign() * x.abs().log1p()))
    fast = {}
    for name, p, g in zip(names, params, grads, strict=True):
        state = optimizer.state[p]
        m = beta1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - beta1) * g
        v = beta2 * state.get("exp_avg_sq", torch.zeros_like(p)) + (1 - beta2) * g**2
        product, t = state.get("beta1_product", 1.0) * beta1, state.get("step", 0) + 1
        fast[name] = p - lr * (m / (1 - product)) / ((v / (1 - beta2**t)).sqrt() + eps)
    return torch.autograd.grad(objective(fast), list(gate.parameters()))


def trained(hypergradient: str, steps: int = 6, weight_decay: float = 0.0):
    """A problem after a few steps with a learning gate (so every gate weight matters)."""
    model, batch, meta_batch = make_problem()
    optimizer = DynamicAdam(
        model.parameters(),
        lr=2e-2,
        gate_lr=0.05,
        weight_decay=weight_decay,
        beta1_range=(0.05, 0.99),
        hypergradient=hypergradient,
    )
    meta_closure = (lambda: mse(model, meta_batch)) if hypergradient == "lookahead" else None
    for _ in range(steps):
        backward(model, optimizer, batch)
        optimizer.step(meta_closure=meta_closure)
    assert optimizer.gate[2].weight.abs().min() > 0
    return model, optimizer, batch, meta_batch


def gate_grads(optimizer: DynamicAdam) -> list[torch.Tensor]:
    return [p.grad.clone() for p in optimizer.gate.parameters()]


def assert_all_close(actual, expected, rtol, atol):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)
    assert max(e.abs().max() for e in expected) > 1e-6  # a non-trivial hypergradient


@pytest.mark.parametrize("weight_decay", [0.0, 0.03])
def test_lookahead_hypergradient_equals_create_graph_autograd(weight_decay):
    model, optimizer, batch, meta_batch = trained("lookahead", weight_decay=weight_decay)
    gate = copy.deepcopy(optimizer.gate)
    expected = create_graph_hypergradient(
        model, optimizer, gate, batch, lambda fast: mse_at(model, fast, meta_batch)
    )
    backward(model, optimizer, batch)
    optimizer.step(meta_closure=lambda: mse(model, meta_batch))
    assert_all_close(gate_grads(optimizer), expected, rtol=1e-10, atol=1e-14)


def mse_at(model, params: dict, batch) -> torch.Tensor:
    prediction = functional_call(model, params, (batch[0],))
    return ((prediction - batch[1]) ** 2).mean()


def test_lookahead_hypergradient_equals_finite_differences():
    model, optimizer, batch, meta_batch = trained("lookahead")

    def one_step_meta_loss(phi: list[torch.Tensor]) -> float:
        net, opt = copy.deepcopy((model, optimizer))
        with torch.no_grad():
            for p, value in zip(opt.gate.parameters(), phi, strict=True):
                p.copy_(value)
        backward(net, opt, batch)
        opt.step()  # no meta_closure: the update with this phi, the gate untouched
        with torch.no_grad():
            return mse(net, meta_batch).item()

    phi = [p.detach().clone() for p in optimizer.gate.parameters()]
    h = 1e-6
    expected = []
    for k, tensor in enumerate(phi):
        derivative = torch.zeros_like(tensor)
        for i in range(tensor.numel()):
            plus, minus = copy.deepcopy(phi), copy.deepcopy(phi)
            plus[k].view(-1)[i] += h
            minus[k].view(-1)[i] -= h
            difference = one_step_meta_loss(plus) - one_step_meta_loss(minus)
            derivative.view(-1)[i] = difference / (2 * h)
        expected.append(derivative)
    backward(model, optimizer, batch)
    optimizer.step(meta_closure=lambda: mse(model, meta_batch))
    assert_all_close(gate_grads(optimizer), expected, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("weight_decay", [0.0, 0.03])
def test_online_hypergradient_equals_autograd_of_the_next_training_loss(weight_decay):
    """At step t+1 the gate gets dL_{t+1}(theta_{t+1})/dphi_t; with L2 decay the decay term
    (wd/2)|theta|^2 is part of the loss the optimizer minimises, so of L_{t+1}."""
    model, optimizer, batch, _ = trained("online", weight_decay=weight_decay)
    _, next_batch, _ = make_problem(seed=1)

    def next_loss(fast: dict) -> torch.Tensor:
        decay = sum((p**2).sum() for p in fast.values())
        return mse_at(model, fast, next_batch) + weight_decay / 2 * decay

    before = copy.deepcopy((model, optimizer))
    backward(model, optimizer, batch)
    optimizer.step()  # step t: trains the gate on u_{t-1}, then picks beta1_t with phi_t
    gate = copy.deepcopy(optimizer.gate)  # phi_t, unchanged until step t+1 trains it
    expected = create_graph_hypergradient(*before, gate, batch, next_loss)
    backward(model, optimizer, next_batch)
    optimizer.step()
    assert_all_close(gate_grads(optimizer), expected, rtol=1e-10, atol=1e-14)


def test_online_gate_learns_before_choosing_the_next_beta1():
    """Step t+1 first trains the gate on <g_{t+1}, u_t>, then computes beta1_{t+1}."""
    model, optimizer, batch, _ = trained("online")
    backward(model, optimizer, batch)
    gate_before = copy.deepcopy(optimizer.gate)
    optimizer.step()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    features = torch.stack([grads.mean(), grads.var(unbiased=False)])
    features = features.sign() * features.abs().log1p()
    lo, hi = optimizer.beta1_range
    with torch.no_grad():
        expected = lo + (hi - lo) * torch.sigmoid(optimizer.gate(features)).item()
        stale = lo + (hi - lo) * torch.sigmoid(gate_before(features)).item()
    assert optimizer.last_beta1 == pytest.approx(expected, rel=1e-14)
    assert abs(stale - expected) > 1e-6  # the gate did move within the step


def test_meta_closure_misuse_is_reported():
    model, batch, _ = make_problem()
    optimizer = DynamicAdam(model.parameters(), hypergradient="online")
    backward(model, optimizer, batch)
    with pytest.raises(ValueError, match="meta_closure needs hypergradient='lookahead'"):
        optimizer.step(meta_closure=lambda: mse(model, batch))
    lookahead = DynamicAdam(model.parameters())
    backward(model, lookahead, batch)
    with pytest.raises(TypeError, match="scalar tensor"):
        lookahead.step(meta_closure=lambda: model(batch[0]))


# --- the gate's side: by hand for the standard gate, autograd for any other ------------------


def test_gate_gradients_of_the_standard_gate_are_autograds():
    lo, hi = 0.1, 0.95
    gate = make_gate(16, 0.5, (lo, hi), dtype=torch.float64, device="cpu")
    with torch.no_grad():
        gate[2].weight.normal_()
    x, upstream = torch.tensor([0.3, -1.7], dtype=torch.float64), torch.tensor([0.7]).double()
    params, grads = gate_gradients(gate, x, upstream, lo, hi)
    assert params == list(gate.parameters())
    expected = torch.autograd.grad(beta1_from_output(gate(x), lo, hi), params, upstream)
    assert_all_close(grads, expected, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])  # autograd; by hand, not flat
def test_any_other_gate_module_with_any_optimizer_is_trained(activation):
    model, batch, meta_batch = make_problem()
    optimizer = DynamicAdam(model.parameters(), lr=2e-2, beta1_range=(0.05, 0.99))
    optimizer.gate = nn.Sequential(nn.Linear(2, 5), activation(), nn.Linear(5, 1)).double()
    optimizer.gate_optimizer = Adam(optimizer.gate.parameters(), lr=0.05)
    for _ in range(4):
        backward(model, optimizer, batch)
        optimizer.step(meta_closure=lambda: mse(model, meta_batch))
    gate = copy.deepcopy(optimizer.gate)
    expected = create_graph_hypergradient(
        model, optimizer, gate, batch, lambda fast: mse_at(model, fast, meta_batch)
    )
    backward(model, optimizer, batch)
    optimizer.step(meta_closure=lambda: mse(model, meta_batch))
    assert_all_close(gate_grads(optimizer), expected, rtol=1e-10, atol=1e-14)


# --- the benchmark's create_graph reference computes what DynamicAdam computes ---------------


def test_benchmark_create_graph_reference_matches_lookahead(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("benchmarks.training_step")
    net, batch, meta_batch = bench.build(bench.Model("tiny", (6, 8, 3), 16, 1, 1))
    net.double()
    batch, meta_batch = (batch[0].double(), batch[1]), (meta_batch[0].double(), meta_batch[1])
    reference = bench.CreateGraphReference(copy.deepcopy(net))
    optimizer = DynamicAdam(
        net.parameters(), lr=bench.LR, betas=bench.BETAS, eps=bench.EPS, gate_lr=bench.GATE_LR
    )
    reference.gate.load_state_dict(optimizer.gate.state_dict())
    loss_fn = nn.functional.cross_entropy
    for _ in range(4):  # at step 1 the hypergradient is 0: mhat_1 = g_1 whatever beta1 is
        reference.step(loss_fn, batch, meta_batch)
        optimizer.zero_grad()
        loss_fn(net(batch[0]), batch[1]).backward()
        optimizer.step(meta_closure=lambda: loss_fn(net(meta_batch[0]), meta_batch[1]))
        for p, q in zip(reference.gate.parameters(), optimizer.gate.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-15)
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)  # step-1 grads are noise
        for p, q in zip(reference.net.parameters(), net.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    assert optimizer.gate[2].bias.grad.abs() > 1e-9
