"""DynamicAdam: integrity (meta data never reaches the model), state_dict round trips,
non-finite values, and maximize with a learning gate."""

from __future__ import annotations

import copy
import io
import warnings
from functools import partial

import pytest
import torch
from test_dynamic_adam import backward, flat, make_problem, mse

from optimlab.optim.dynamic_adam import DynamicAdam

MODES = ["lookahead", "online"]


def make(hypergradient: str, **options):
    model, batch, meta_batch = make_problem()
    optimizer = DynamicAdam(
        model.parameters(), lr=2e-2, gate_lr=0.05, hypergradient=hypergradient, **options
    )
    return model, optimizer, batch, meta_batch


def train(model, optimizer, batch, meta_batch, steps: int) -> None:
    for _ in range(steps):
        backward(model, optimizer, batch)
        if optimizer.hypergradient == "lookahead":
            optimizer.step(meta_closure=lambda: mse(model, meta_batch))
        else:
            optimizer.step()


def snapshot(model, optimizer) -> dict:
    """Everything a step could change, copied."""
    return copy.deepcopy(
        {
            "params": [p.detach() for p in model.parameters()],
            "grads": [p.grad for p in model.parameters()],
            "state": optimizer.state_dict(),
        }
    )


def assert_same(a, b) -> None:
    """Exact equality of nested tensors / containers / numbers."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


# --- integrity ---------------------------------------------------------------------------


def test_meta_closure_changes_only_the_gate():
    """Within a step the update and .grad are the same with or without the meta closure, and
    .grad after the step is the training gradient bit for bit."""
    model, optimizer, batch, meta_batch = make("lookahead", weight_decay=0.01)
    train(model, optimizer, batch, meta_batch, steps=5)
    with_meta, without_meta = copy.deepcopy((model, optimizer)), copy.deepcopy((model, optimizer))
    results = []
    for (net, opt), meta in ((with_meta, True), (without_meta, False)):
        backward(net, opt, batch)
        training_grads = [p.grad.clone() for p in net.parameters()]
        opt.step(meta_closure=(lambda net=net: mse(net, meta_batch)) if meta else None)
        assert all(
            torch.equal(p.grad, g) for p, g in zip(net.parameters(), training_grads, strict=True)
        )
        results.append((flat(net), [p.grad for p in net.parameters()], opt))
    (params_a, grads_a, opt_a), (params_b, grads_b, opt_b) = results
    assert torch.equal(params_a, params_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    gates = zip(opt_a.gate.parameters(), opt_b.gate.parameters(), strict=True)
    assert not all(torch.equal(a, b) for a, b in gates)  # the meta data trained the gate


# --- state_dict --------------------------------------------------------------------------


@pytest.mark.parametrize("hypergradient", MODES)
def test_state_dict_round_trip_continues_bit_identically(hypergradient):
    model, optimizer, batch, meta_batch = make(hypergradient, weight_decay=0.01)
    train(model, optimizer, batch, meta_batch, steps=7)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, batch, meta_batch, steps=7)  # the uninterrupted run

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed, _, _ = make_problem(seed=5)
    resumed.load_state_dict(checkpoint["model"])
    torch.manual_seed(5)  # a different initial gate, overwritten by the checkpoint
    fresh = DynamicAdam(resumed.parameters(), lr=2e-2, gate_lr=0.05, hypergradient=hypergradient)
    fresh.load_state_dict(checkpoint["optimizer"])
    assert len(fresh.beta1_history) == 7
    train(resumed, fresh, batch, meta_batch, steps=7)

    assert torch.equal(flat(resumed), flat(model))
    assert_same(fresh.state_dict(), optimizer.state_dict())
    assert fresh.beta1_history == optimizer.beta1_history


def test_loading_a_state_dict_of_another_kind_is_refused():
    model, optimizer, batch, meta_batch = make("online")
    train(model, optimizer, batch, meta_batch, steps=2)
    lookahead = DynamicAdam(model.parameters(), hypergradient="lookahead")
    with pytest.raises(ValueError, match="hypergradient='online'"):
        lookahead.load_state_dict(optimizer.state_dict())
    wider = DynamicAdam(model.parameters(), hypergradient="online", gate_hidden=8)
    with pytest.raises(ValueError, match="gate of another shape"):
        wider.load_state_dict(optimizer.state_dict())
    adam_state = torch.optim.Adam(model.parameters()).state_dict()
    with pytest.raises(ValueError, match="no 'dynamic_adam' entry"):
        wider.load_state_dict(adam_state)


# --- non-finite values -------------------------------------------------------------------


@pytest.mark.parametrize("hypergradient", MODES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("steps_before", [0, 4])
def test_non_finite_gradient_raises_and_changes_nothing(hypergradient, bad, steps_before):
    model, optimizer, batch, meta_batch = make(hypergradient)
    train(model, optimizer, batch, meta_batch, steps=steps_before)
    backward(model, optimizer, batch)
    model[2].bias.grad[0] = bad
    before = snapshot(model, optimizer)
    lookahead = hypergradient == "lookahead"
    with pytest.raises(FloatingPointError, match="gradient is not finite"):
        optimizer.step(meta_closure=(lambda: mse(model, meta_batch)) if lookahead else None)
    assert_same(snapshot(model, optimizer), before)
    assert len(optimizer.state) == (0 if steps_before == 0 else 4)


def test_non_finite_meta_loss_skips_the_gate_update_and_warns_once():
    model, optimizer, batch, meta_batch = make("lookahead")
    train(model, optimizer, batch, meta_batch, steps=3)
    gate_before = copy.deepcopy(optimizer.gate.state_dict())
    reference, reference_optimizer = copy.deepcopy((model, optimizer))
    with pytest.warns(RuntimeWarning, match="gate update skipped"):
        backward(model, optimizer, batch)
        optimizer.step(meta_closure=lambda: mse(model, meta_batch) * float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second skip does not warn again
        backward(model, optimizer, batch)
        optimizer.step(meta_closure=lambda: mse(model, meta_batch) + float("inf"))
    assert optimizer.skipped_gate_updates == 2
    assert_same(optimizer.gate.state_dict(), gate_before)
    assert all(p.grad is None for p in optimizer.gate.parameters())
    for _ in range(2):  # the model trained on as it would without a meta closure
        backward(reference, reference_optimizer, batch)
        reference_optimizer.step()
    assert torch.equal(flat(model), flat(reference))


def test_non_finite_online_hypergradient_skips_the_gate_update():
    model, optimizer, batch, meta_batch = make("online")
    train(model, optimizer, batch, meta_batch, steps=3)
    gate_before = copy.deepcopy(optimizer.gate.state_dict())
    optimizer.state[model[0].weight]["beta1_direction"][0, 0] = float("inf")
    backward(model, optimizer, batch)
    with pytest.warns(RuntimeWarning, match="gate update skipped"):
        optimizer.step()
    assert optimizer.skipped_gate_updates == 1
    assert_same(optimizer.gate.state_dict(), gate_before)
    assert torch.isfinite(flat(model)).all()
    train(model, optimizer, batch, meta_batch, steps=2)  # the fresh direction is finite again
    assert optimizer.skipped_gate_updates == 1


# --- maximize ----------------------------------------------------------------------------


@pytest.mark.parametrize("hypergradient", MODES)
def test_maximize_of_the_negated_objectives_is_minimize(hypergradient):
    """With maximize=True the training and the meta objective are both maximised."""
    runs = []
    for maximize in (False, True):
        model, optimizer, batch, meta_batch = make(hypergradient, maximize=maximize)
        sign = -1.0 if maximize else 1.0
        for _ in range(10):
            optimizer.zero_grad()
            (sign * mse(model, batch)).backward()
            meta = partial(lambda m, b, s: s * mse(m, b), model, meta_batch, sign)
            optimizer.step(meta_closure=meta if hypergradient == "lookahead" else None)
        runs.append((flat(model), optimizer.beta1_history))
    (params_min, history_min), (params_max, history_max) = runs
    torch.testing.assert_close(params_max, params_min, rtol=0, atol=1e-14)
    assert history_max == pytest.approx(history_min, rel=1e-14)
    assert len(set(history_min)) > 5  # the gate learned
