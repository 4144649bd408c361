"""DynamicAdam's fast paths: the flat gate and its Adam, flat state buckets, the one-call
gradient statistics, and the exact zero hypergradient of the first step.

References are independent: torch.optim.Adam, gradient statistics computed here with torch's
mean and var, and torch Adam's state dict format.
"""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from test_dynamic_adam import backward, flat, make_problem, mse
from torch import nn

from optimlab.optim.dynamic_adam import DynamicAdam
from optimlab.optim.gate import CHUNK_NUMEL, GateAdam, gradient_features, make_gate

# --- the gate: one flat tensor, its own Adam ------------------------------------------------


def test_gate_adam_is_torch_adam():
    """GateAdam on the flat parameters equals torch.optim.Adam on the four tensors, given the
    same gradients, also after a change of learning rate."""
    gate = make_gate(8, 0.9, (0.0, 0.999), dtype=torch.float64, device="cpu")
    with torch.no_grad():
        gate[2].weight.normal_()
    reference = copy.deepcopy(gate)
    optimizer = GateAdam(gate, lr=0.01)
    expected = torch.optim.Adam(reference.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for step in range(30):
        if step == 15:
            optimizer.lr = expected.param_groups[0]["lr"] = 0.003
        gate.flat()
        gate.attach_grad()
        for p, q in zip(gate.parameters(), reference.parameters(), strict=True):
            grad = torch.randn(p.shape, generator=generator, dtype=p.dtype) * 10.0 ** (step % 5)
            p.grad.copy_(grad)  # a view of the flat gradient
            q.grad = grad.clone()
        optimizer.step()
        expected.step()
        for p, q in zip(gate.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)
    assert (gate.flat() - torch.cat([p.reshape(-1) for p in gate.parameters()])).abs().max() == 0


def test_gate_parameters_stay_views_of_phi_through_copies_and_moves():
    gate = make_gate(4, 0.9, (0.0, 0.999), dtype=torch.float32, device="cpu")
    for other in (
        copy.deepcopy(gate),
        pickle.loads(pickle.dumps(gate)),
        copy.deepcopy(gate).to(torch.float64),
    ):
        phi = other.flat()
        assert phi.dtype == other[0].weight.dtype
        with torch.no_grad():
            phi.add_(1.0)  # reaches the module's parameters, not the original gate's
        expected = torch.cat([p.detach().reshape(-1) for p in gate.parameters()]) + 1.0
        torch.testing.assert_close(
            torch.cat([p.detach().reshape(-1) for p in other.parameters()]),
            expected.to(phi.dtype),
        )
    assert gate[2].weight.abs().max() == 0  # the original is untouched


def test_a_deep_copied_optimizer_trains_its_own_gate():
    model, optimizer, batch, meta_batch = make_trained("lookahead")
    twin_model, twin = copy.deepcopy((model, optimizer))
    for net, opt in ((model, optimizer), (twin_model, twin)):
        backward(net, opt, batch)
        opt.step(meta_closure=lambda net=net: mse(net, meta_batch))
    for p, q in zip(optimizer.gate.parameters(), twin.gate.parameters(), strict=True):
        assert p.data_ptr() != q.data_ptr()
        assert torch.equal(p, q)
    assert optimizer.beta1_history == twin.beta1_history


def test_old_gate_optimizer_state_dicts_load():
    """Checkpoints from before the flat gate hold a torch-style Adam state dict over the
    gate's four parameters: GateAdam loads it and continues as torch's Adam would."""
    gate = make_gate(8, 0.9, (0.0, 0.999), dtype=torch.float64, device="cpu")
    old = copy.deepcopy(gate)
    old_optimizer = torch.optim.Adam(old.parameters(), lr=0.02)
    for _ in range(3):
        for p in old.parameters():
            p.grad = torch.randn_like(p)
        old_optimizer.step()
    state = io.BytesIO()
    torch.save(old_optimizer.state_dict(), state)
    state.seek(0)
    gate.load_state_dict(old.state_dict())
    optimizer = GateAdam(gate, lr=1.0)
    optimizer.load_state_dict(torch.load(state, weights_only=True))
    assert (optimizer.lr, optimizer.steps) == (0.02, 3)
    gate.flat()
    gate.attach_grad()
    for p, q in zip(gate.parameters(), old.parameters(), strict=True):
        q.grad = torch.randn_like(q)
        p.grad.copy_(q.grad)
    optimizer.step()
    old_optimizer.step()
    for p, q in zip(gate.parameters(), old.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)


# --- flat state: large tensors, several buckets, parameters joining and leaving ------------


class Wide(nn.Module):
    """A parameter over CHUNK_NUMEL elements (a bucket alone) next to small ones."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(300, CHUNK_NUMEL // 300 + 20)
        self.head = nn.Linear(self.big.out_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.big(x)))


def wide_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = Wide().double()
    x = torch.randn(2, 16, 300, dtype=torch.float64)
    return model, (x[0], torch.sin(x[0, :, :1])), (x[1], torch.sin(x[1, :, :1]))


@pytest.mark.parametrize("hypergradient", ["lookahead", "online"])
def test_large_tensors_and_several_buckets_match_torch_adam(hypergradient):
    model, batch, meta_batch = wide_problem()
    reference = wide_problem()[0]
    assert model.big.weight.numel() > CHUNK_NUMEL
    groups = [{"params": [model.big.weight, model.head.weight]}, {"params": [model.big.bias]}]
    options = {"lr": 1e-2, "weight_decay": 0.01}
    optimizer = DynamicAdam(
        [*groups, {"params": [model.head.bias], "lr": 3e-3}],
        **options,
        gate_lr=0.0,
        hypergradient=hypergradient,
    )
    reference_groups = [
        {"params": [reference.big.weight, reference.head.weight]},
        {"params": [reference.big.bias]},
        {"params": [reference.head.bias], "lr": 3e-3},
    ]
    expected = torch.optim.Adam(reference_groups, **options)
    meta = (lambda: mse(model, meta_batch)) if hypergradient == "lookahead" else None
    for _ in range(6):
        backward(reference, expected, batch)
        expected.step()
        backward(model, optimizer, batch)
        optimizer.step(meta_closure=meta)
    torch.testing.assert_close(flat(model), flat(reference), rtol=0, atol=1e-10)
    assert any(p.grad.abs().sum() > 0 for p in optimizer.gate.parameters())


def test_parameters_joining_and_leaving_match_torch_adam():
    """A parameter group added mid-run and a parameter without a gradient for some steps:
    the buckets are rebuilt from the per-parameter state, as torch's Adam keeps it."""
    model, batch, _ = make_problem()
    reference = make_problem()[0]
    optimizer = DynamicAdam(model[0].parameters(), lr=1e-2, gate_lr=0.0, hypergradient="online")
    expected = torch.optim.Adam(reference[0].parameters(), lr=1e-2)
    for step in range(12):
        if step == 3:
            optimizer.add_param_group({"params": list(model[2].parameters()), "lr": 5e-3})
            expected.add_param_group({"params": list(reference[2].parameters()), "lr": 5e-3})
        for net, opt in ((reference, expected), (model, optimizer)):
            backward(net, opt, batch)
            if step in (5, 6, 9):
                net[0].bias.grad = None
            opt.step()
        torch.testing.assert_close(flat(model), flat(reference), rtol=0, atol=1e-12)
        if step in (5, 6, 9):  # it did not move: dtheta/dbeta1 = 0, nothing kept
            assert "beta1_direction" not in optimizer.state[model[0].bias]


# --- the gate input in one call, and its exact fallback ------------------------------------


class RecordingGate(nn.Module):
    """Any gate module: records its inputs and outputs beta1 = 0.9 (default beta1_range)."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        q = 0.9 / 0.999  # sigmoid(output), beta1 = 0.999 q
        return torch.full((1,), math.log(q / (1 - q)), dtype=x.dtype)


@pytest.mark.parametrize("offset", [0.0, 1e3])  # |mean| << std, |mean| >> std
@pytest.mark.parametrize("wide", [False, True])  # one bucket, several
def test_gate_input_is_the_gradient_features(offset, wide):
    """mean and var come from sum(g) and sum(g^2) in one call, or, when |mean| > std would
    make that cancel, from two passes: either way the gate sees gradient_features(g)."""
    model, batch, _ = wide_problem() if wide else make_problem()
    optimizer = DynamicAdam(model.parameters(), lr=1e-3)
    optimizer.gate = RecordingGate()
    expected = []
    for _ in range(3):
        optimizer.zero_grad()
        (mse(model, batch) + offset * sum(p.sum() for p in model.parameters())).backward()
        grads = [p.grad for p in model.parameters()]
        everything = torch.cat([g.reshape(-1) for g in grads])
        assert (everything.mean().abs() > everything.std()) == (offset > 0)
        expected.append(gradient_features(grads))
        optimizer.step()
    for x, reference in zip(optimizer.gate.inputs, expected, strict=True):
        torch.testing.assert_close(x, reference, rtol=1e-12, atol=1e-15)
    assert optimizer.beta1_history == pytest.approx([0.9] * 3, rel=1e-12)


# --- the first hypergradient is exactly zero ------------------------------------------------


def test_first_step_hypergradient_is_exactly_zero():
    """mhat_1 = g_1 whatever beta1 is: dtheta_2/dbeta1_1 is exactly 0, not rounding noise
    (which the gate's Adam, scale-free, would otherwise follow as a full step)."""
    model, optimizer, batch, meta_batch = make_fresh("lookahead")
    gate_before = [p.clone() for p in optimizer.gate.parameters()]
    backward(model, optimizer, batch)
    optimizer.step(meta_closure=lambda: mse(model, meta_batch))
    assert all(torch.count_nonzero(p.grad) == 0 for p in optimizer.gate.parameters())
    assert all(map(torch.equal, gate_before, optimizer.gate.parameters()))

    model, optimizer, batch, _ = make_fresh("online")
    backward(model, optimizer, batch)
    optimizer.step()
    assert all(torch.count_nonzero(s["beta1_direction"]) == 0 for s in optimizer.state.values())
    backward(model, optimizer, batch)
    optimizer.step()  # trains the gate on <g_2, u_1> = 0
    assert all(torch.count_nonzero(p.grad) == 0 for p in optimizer.gate.parameters())
    backward(model, optimizer, batch)
    optimizer.step()
    assert any(torch.count_nonzero(p.grad) > 0 for p in optimizer.gate.parameters())


def make_fresh(hypergradient: str):
    model, batch, meta_batch = make_problem()
    optimizer = DynamicAdam(model.parameters(), lr=2e-2, gate_lr=0.05, hypergradient=hypergradient)
    return model, optimizer, batch, meta_batch


def make_trained(hypergradient: str):
    model, optimizer, batch, meta_batch = make_fresh(hypergradient)
    for _ in range(4):
        backward(model, optimizer, batch)
        optimizer.step(meta_closure=lambda: mse(model, meta_batch))
    return model, optimizer, batch, meta_batch


def test_a_state_dict_from_before_the_flat_state_loads():
    """Older checkpoints: beta1_direction is u_t itself (no scale) and the gate optimizer is
    a torch-style Adam state dict. Training resumed from one continues as the original."""
    model, optimizer, batch, _ = make_fresh("online")
    for _ in range(4):
        backward(model, optimizer, batch)
        optimizer.step()
    state_dict = copy.deepcopy(optimizer.state_dict())
    for state in state_dict["state"].values():
        state["beta1_direction"] = state["beta1_direction"] * state.pop("beta1_direction_scale")
    gate_state = state_dict["dynamic_adam"]["gate_optimizer"]
    sizes = [p.numel() for p in optimizer.gate.parameters()]
    pieces = {k: gate_state[k].split(sizes) for k in ("exp_avg", "exp_avg_sq")}
    state_dict["dynamic_adam"]["gate_optimizer"] = {
        "state": {
            i: {
                "step": torch.tensor(float(gate_state["step"])),
                **{k: pieces[k][i].view_as(p) for k in pieces},
            }
            for i, p in enumerate(optimizer.gate.parameters())
        },
        "param_groups": [{"lr": gate_state["lr"], "betas": (0.9, 0.999), "eps": 1e-8,
                          "params": [0, 1, 2, 3]}],
    }  # fmt: skip
    resumed_model = copy.deepcopy(model)
    resumed = DynamicAdam(resumed_model.parameters(), lr=2e-2, gate_lr=1.0, hypergradient="online")
    resumed.load_state_dict(state_dict)
    for net, opt in ((model, optimizer), (resumed_model, resumed)):
        for _ in range(3):
            backward(net, opt, batch)
            opt.step()
    torch.testing.assert_close(flat(resumed_model), flat(model), rtol=1e-12, atol=1e-15)
    assert resumed.beta1_history == pytest.approx(optimizer.beta1_history, rel=1e-12)
    assert resumed.beta1_history[-1] != resumed.beta1_history[-2]  # the gate went on learning
