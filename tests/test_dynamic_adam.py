"""DynamicAdam: arguments, the gate, parity with torch's Adam, and the update with a moving beta1.

References are independent: torch.optim.Adam/AdamW, and a from-scratch loop written here.
Hypergradients are in test_dynamic_adam_hypergradient.py; state, non-finite values and
integrity in test_dynamic_adam_state.py.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import optimlab.optim as oo
from optimlab.optim.dynamic_adam import DynamicAdam
from optimlab.optim.gate import CHUNK_NUMEL, beta1_from_output, gradient_features, slog

ROOT = Path(__file__).resolve().parents[1]


def make_problem(seed: int = 0) -> tuple[nn.Module, tuple, tuple]:
    """A small float64 regression: model, training batch, meta batch."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x, x_meta = torch.randn(2, 32, 4, dtype=torch.float64)
    w = torch.randn(4, 1, dtype=torch.float64)
    return model, (x, torch.sin(x @ w)), (x_meta, torch.sin(x_meta @ w))


def mse(model: nn.Module, batch: tuple) -> torch.Tensor:
    return ((model(batch[0]) - batch[1]) ** 2).mean()


def backward(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple) -> None:
    optimizer.zero_grad()
    mse(model, batch).backward()


def groups(model: nn.Module) -> list[dict]:
    """Three groups with different lr, eps, weight decay and beta2 (beta1 is shared)."""
    first, second = model[0], model[2]
    return [
        {"params": [first.weight], "lr": 3e-2, "weight_decay": 0.05},
        {"params": [first.bias], "eps": 1e-6, "betas": (0.9, 0.99)},
        {"params": list(second.parameters()), "lr": 5e-3},
    ]


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "Invalid learning rate: -1.0"),
        ({"eps": -1e-8}, "Invalid epsilon value: -1e-08"),
        ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
        ({"weight_decay": -0.5}, "Invalid weight_decay value: -0.5"),
        ({"gate_lr": -1e-3}, "Invalid gate_lr value: -0.001"),
        ({"gate_hidden": 0}, "Invalid gate_hidden value: 0"),
        ({"gate_hidden": 2.5}, "Invalid gate_hidden value: 2.5"),
        ({"beta1_range": (0.5, 0.5)}, "Invalid beta1_range: (0.5, 0.5)"),
        ({"beta1_range": (0.0, 1.0)}, "Invalid beta1_range: (0.0, 1.0)"),
        ({"hypergradient": "exact"}, "Invalid hypergradient: 'exact'"),
        (
            {"beta1_range": (0.0, 0.5)},
            "betas[0]=0.9 must lie strictly inside beta1_range=(0.0, 0.5)",
        ),
        ({"betas": (0.0, 0.999)}, "betas[0]=0.0 must lie strictly inside"),
    ],
)
def test_invalid_arguments_are_rejected_with_clear_messages(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        DynamicAdam([nn.Parameter(torch.zeros(2))], **kwargs)


def test_a_group_cannot_change_the_shared_beta1():
    model, _, _ = make_problem()
    with pytest.raises(ValueError, match="one gate sets beta1 for all parameter groups"):
        DynamicAdam([{"params": model[0].parameters(), "betas": (0.8, 0.999)}])


def test_registry_creates_dynamic_adam():
    model, _, _ = make_problem()
    optimizer = oo.create("dynamic_adam", model.parameters(), lr=1e-2, hypergradient="online")
    assert isinstance(optimizer, DynamicAdam)
    assert "dynamic_adam" in oo.available() and "DynamicAdam" in oo.__all__


# --- the gate ----------------------------------------------------------------------------


def test_gate_architecture_and_initial_output_is_betas0_for_any_input():
    model, _, _ = make_problem()
    optimizer = DynamicAdam(model.parameters(), betas=(0.7, 0.999), beta1_range=(0.2, 0.95))
    gate = optimizer.gate
    assert [type(m) for m in gate] == [nn.Linear, nn.Tanh, nn.Linear]
    assert (gate[0].in_features, gate[0].out_features, gate[2].out_features) == (2, 16, 1)
    assert next(gate.parameters()).dtype == torch.float64
    x = torch.randn(50, 2, dtype=torch.float64) * 100
    beta1 = beta1_from_output(gate(x), 0.2, 0.95)
    torch.testing.assert_close(beta1, torch.full_like(beta1, 0.7), rtol=0, atol=1e-15)


def test_gate_init_does_not_advance_the_global_generator():
    torch.manual_seed(3)
    DynamicAdam([nn.Parameter(torch.zeros(2))])
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))
    torch.manual_seed(3)
    first = DynamicAdam([nn.Parameter(torch.zeros(2))]).gate[0].weight
    torch.manual_seed(3)
    assert torch.equal(first, DynamicAdam([nn.Parameter(torch.zeros(2))]).gate[0].weight)


@pytest.mark.parametrize("shapes", [[(3,), (4, 5)], [(CHUNK_NUMEL + 7,), (300, 400), (5,)]])
def test_gradient_features_are_slog_mean_and_population_variance(shapes):
    grads = [torch.randn(s, dtype=torch.float64) * 3 + 1e4 for s in shapes]  # |mean| >> std
    everything = torch.cat([g.reshape(-1) for g in grads])
    mean, var = everything.mean(), everything.var(unbiased=False)
    expected = torch.stack([torch.log1p(mean), torch.log1p(var)])
    torch.testing.assert_close(gradient_features(grads), expected, rtol=1e-13, atol=0)


def test_slog_is_signed_log1p():
    z = torch.tensor([-1e6, -2.0, 0.0, 0.5, 1e6], dtype=torch.float64)
    expected = [-math.log1p(1e6), -math.log1p(2.0), 0.0, math.log1p(0.5), math.log1p(1e6)]
    assert slog(z).tolist() == pytest.approx(expected, rel=1e-15)


# --- parity with torch.optim.Adam when the gate is frozen ---------------------------------


@pytest.mark.parametrize("hypergradient", ["lookahead", "online"])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_frozen_gate_is_torch_adam(hypergradient, decoupled, weight_decay):
    model, batch, meta_batch = make_problem()
    reference = make_problem()[0]
    torch_class = torch.optim.AdamW if decoupled else torch.optim.Adam
    options = {"lr": 1e-2, "weight_decay": weight_decay}
    expected = torch_class(groups(reference), **options)
    optimizer = DynamicAdam(
        groups(model),
        **options,
        gate_lr=0.0,
        hypergradient=hypergradient,
        decoupled_weight_decay=decoupled,
    )
    gate_before = [p.clone() for p in optimizer.gate.parameters()]
    meta = (lambda: mse(model, meta_batch)) if hypergradient == "lookahead" else None
    for _ in range(100):
        backward(reference, expected, batch)
        expected.step()
        backward(model, optimizer, batch)
        optimizer.step(meta_closure=meta)
        torch.testing.assert_close(flat(model), flat(reference), rtol=0, atol=1e-10)
    assert all(
        torch.equal(a, b) for a, b in zip(gate_before, optimizer.gate.parameters(), strict=True)
    )
    assert any(p.grad.abs().sum() > 0 for p in optimizer.gate.parameters())  # it had a signal
    assert optimizer.beta1_history == pytest.approx([0.9] * 100, abs=1e-15)


def test_params_without_gradient_are_skipped_like_torch_adam():
    """A parameter that misses steps keeps its own step count and beta1 product."""
    model, batch, _ = make_problem()
    reference = make_problem()[0]
    expected = torch.optim.Adam(reference.parameters(), lr=1e-2)
    optimizer = DynamicAdam(model.parameters(), lr=1e-2, gate_lr=0.0)
    for step in range(30):
        for net, opt in ((reference, expected), (model, optimizer)):
            backward(net, opt, batch)
            if step < 10 or step % 3:
                net[2].bias.grad = None
            opt.step()
        torch.testing.assert_close(flat(model), flat(reference), rtol=0, atol=1e-12)
    assert optimizer.state[model[2].bias]["step"] == expected.state[reference[2].bias]["step"]


def test_non_contiguous_parameters_match_torch_adam():
    """A transposed parameter: moments, update and direction follow its layout."""
    values, x = torch.randn(5, 4, dtype=torch.float64), torch.randn(16, 4, dtype=torch.float64)
    results = []
    for make in (torch.optim.Adam, lambda ps, lr: DynamicAdam(ps, lr=lr, gate_lr=0.0)):
        weight = nn.Parameter(values.clone().t())
        assert not weight.is_contiguous()
        optimizer = make([weight], lr=1e-2)
        for _ in range(20):
            optimizer.zero_grad()
            torch.sin(x @ weight).sum().backward()
            optimizer.step()
        results.append(weight.detach())
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-12)


def test_maximize_is_torch_adam_maximize():
    model, batch, _ = make_problem()
    reference = make_problem()[0]
    expected = torch.optim.Adam(reference.parameters(), lr=1e-2, maximize=True)
    optimizer = DynamicAdam(model.parameters(), lr=1e-2, gate_lr=0.0, maximize=True)
    for _ in range(20):
        for net, opt in ((reference, expected), (model, optimizer)):
            opt.zero_grad()
            (-mse(net, batch)).backward()
            opt.step()
    torch.testing.assert_close(flat(model), flat(reference), rtol=0, atol=1e-12)


# --- the update with a beta1 that moves every step ----------------------------------------


class ScheduledGate(nn.Module):
    """Outputs the pre-sigmoid value that makes beta1 follow `schedule`, one entry per call."""

    def __init__(self, schedule: list[float], lo: float, hi: float) -> None:
        super().__init__()
        self.outputs = [math.log((b - lo) / (hi - b)) for b in schedule]
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([self.outputs[self.calls - 1]], dtype=x.dtype)


def reference_run(model, batch, beta1s, *, lr, beta2=0.999, eps=1e-8, product_correction=True):
    """A from-scratch loop of the design's update, one list of states, no foreach."""
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    product = 1.0
    for t, beta1 in enumerate(beta1s, start=1):
        model.zero_grad()
        mse(model, batch).backward()
        product *= beta1
        correction1 = 1 - product if product_correction else 1 - beta1**t
        with torch.no_grad():
            for p, m_i, v_i in zip(params, m, v, strict=True):
                m_i.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v_i.mul_(beta2).add_(p.grad**2, alpha=1 - beta2)
                mhat, vhat = m_i / correction1, v_i / (1 - beta2**t)
                p.sub_(lr * mhat / (vhat.sqrt() + eps))
    return flat(model)


def test_scheduled_beta1_uses_the_product_bias_correction():
    model, batch, _ = make_problem()
    lo, hi = 0.0, 0.999
    schedule = [0.95 if t % 2 else 0.1 + 0.01 * t for t in range(40)]
    optimizer = DynamicAdam(model.parameters(), lr=1e-2, beta1_range=(lo, hi))
    optimizer.gate = ScheduledGate(schedule, lo, hi)
    for _ in schedule:
        backward(model, optimizer, batch)
        optimizer.step()
    assert optimizer.beta1_history == pytest.approx(schedule, rel=1e-14)
    right = reference_run(make_problem()[0], batch, optimizer.beta1_history, lr=1e-2)
    torch.testing.assert_close(flat(model), right, rtol=0, atol=1e-12)
    wrong = reference_run(
        make_problem()[0], batch, optimizer.beta1_history, lr=1e-2, product_correction=False
    )
    assert (flat(model) - wrong).abs().max() > 1e-3  # the test can tell the two apart


@pytest.mark.parametrize("hypergradient", ["lookahead", "online"])
def test_frozen_random_gate_follows_the_gradient_statistics(hypergradient):
    """beta1_t = lo + (hi-lo) sigmoid(MLP(slog stats of g_t)), recomputed here by hand."""
    model, batch, _ = make_problem()
    lo, hi = 0.1, 0.99
    optimizer = DynamicAdam(
        model.parameters(), lr=1e-2, beta1_range=(lo, hi), gate_lr=0.0, hypergradient=hypergradient
    )
    with torch.no_grad():  # the gradient statistics are small here: a sensitive gate
        optimizer.gate[0].weight.mul_(100.0)
        optimizer.gate[2].weight.normal_(0, 2.0)
    w1, b1, w2, b2 = (p.detach().clone() for p in optimizer.gate.parameters())
    expected = []
    for _ in range(30):
        backward(model, optimizer, batch)
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        x = torch.stack([g.mean(), g.var(unbiased=False)])
        x = x.sign() * x.abs().log1p()
        z = w2 @ torch.tanh(w1 @ x + b1) + b2
        expected.append(lo + (hi - lo) / (1 + math.exp(-z.item())))
        optimizer.step()
    assert optimizer.beta1_history == pytest.approx(expected, rel=1e-13)
    assert max(expected) - min(expected) > 0.05  # beta1 really moved
    right = reference_run(make_problem()[0], batch, expected, lr=1e-2)
    torch.testing.assert_close(flat(model), right, rtol=0, atol=1e-12)
    assert optimizer.last_beta1 == optimizer.beta1_history[-1]


# --- the example -------------------------------------------------------------------------


def test_example_runs_and_reports_losses():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "dynamic_adam_loop.py"), "--steps", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "lookahead" in result.stdout and "online" in result.stdout
    assert "beta1" in result.stdout
