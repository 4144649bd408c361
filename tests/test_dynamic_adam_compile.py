"""DynamicAdam with compile=True: the gradient statistics and the update run through
torch.compile (our kernels) and give the eager path's numbers in float64, in both modes, with
weight decay of both kinds, two parameter groups, a tensor alone and packed small tensors;
they compile once per layout, state dicts move between compiled and eager optimizers, and
failures are loud.

References: the eager DynamicAdam (itself tested against torch.optim.Adam, autograd and
finite differences in the other test_dynamic_adam files) and, with the gate frozen,
torch.optim.Adam. Compiling costs seconds: every test here uses one model layout, so the
module-level kernel cache compiles each kernel once for the whole file.
"""

from __future__ import annotations

import copy
import io
from functools import partial

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import optimlab.optim as oo
from optimlab.optim import dynamic_adam_buckets, dynamic_adam_compiled
from optimlab.optim.dynamic_adam import DynamicAdam
from optimlab.optim.gate import CHUNK_NUMEL

MODES = ["lookahead", "online"]
TOLERANCE = {"rtol": 1e-10, "atol": 1e-13}
WIDE = CHUNK_NUMEL // 4 + 1  # the first layer's weight, 4 x WIDE, is a bucket alone


def compilations() -> int:
    return counters["stats"]["unique_graphs"]


def make_problem() -> tuple[nn.Module, tuple, tuple]:
    """A float64 regression whose first weight is a bucket alone and whose other parameters
    are packed together: model, training batch, meta batch."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, WIDE), nn.Tanh(), nn.Linear(WIDE, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.05)
    x, x_meta = torch.randn(2, 16, 4, generator=generator, dtype=torch.float64)
    return model, (x, torch.sin(x.sum(1, keepdim=True))), (x_meta, torch.sin(x_meta[:, :1]))


def mse(model: nn.Module, batch: tuple) -> torch.Tensor:
    return ((model(batch[0]) - batch[1]) ** 2).mean()


def groups(model: nn.Module) -> list[dict]:
    """L2 decay on the weight alone; decoupled decay, another lr and beta2 on the packed rest."""
    first, second = model[0], model[2]
    return [
        {"params": [first.weight], "weight_decay": 0.05},
        {
            "params": [first.bias, *second.parameters()],
            "lr": 5e-3,
            "betas": (0.9, 0.99),
            "weight_decay": 0.1,
            "decoupled_weight_decay": True,
        },
    ]


def make(hypergradient: str, compile: bool, **options) -> tuple[nn.Module, DynamicAdam]:
    """Model and optimizer; the gate's first layer is drawn from torch's seeded generator."""
    model = make_problem()[0]
    torch.manual_seed(0)
    options = {"lr": 2e-2, "gate_lr": 0.05, **options}
    return model, DynamicAdam(
        groups(model), hypergradient=hypergradient, compile=compile, **options
    )


def train(model: nn.Module, optimizer: DynamicAdam, steps: int, start: int = 0) -> None:
    """`steps` steps, each on a slightly different batch (the meta batch stays)."""
    _, (x, y), meta_batch = make_problem()
    for step in range(start, start + steps):
        optimizer.zero_grad()
        mse(model, (x * (1 + 0.1 * step), y)).backward()
        if optimizer.hypergradient == "lookahead":
            optimizer.step(meta_closure=lambda: mse(model, meta_batch))
        else:
            optimizer.step()


def assert_same_run(ours: tuple, theirs: tuple, **tolerance) -> None:
    """Parameters, beta1 history, gate and per-parameter state agree."""
    tolerance = tolerance or TOLERANCE
    (model, optimizer), (reference, expected) = ours, theirs
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, **tolerance)
        for key, value in optimizer.state[p].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, expected.state[q][key], **tolerance)
            else:
                assert value == pytest.approx(expected.state[q][key], rel=1e-10), key
    assert optimizer.beta1_history == pytest.approx(expected.beta1_history, rel=1e-10)
    for p, q in zip(optimizer.gate.parameters(), expected.gate.parameters(), strict=True):
        torch.testing.assert_close(p, q, **tolerance)


@pytest.mark.parametrize("hypergradient", MODES)
def test_compiled_matches_eager_and_compiles_once_per_layout(hypergradient):
    before = compilations()
    ours = make(hypergradient, compile=True)
    train(*ours, steps=6)
    compiled = compilations() - before
    theirs = make(hypergradient, compile=False)
    train(*theirs, steps=6)
    assert_same_run(ours, theirs)
    assert len(set(ours[1].beta1_history)) == 5  # the gate learned from the second step on
    # the statistics, the update and (lookahead) the meta dot products; none if compiled before
    assert compiled <= (3 if hypergradient == "lookahead" else 2)
    before = compilations()
    train(*make(hypergradient, compile=True), steps=2)
    assert compilations() == before  # a new optimizer on the same layout reuses the kernels


@pytest.mark.parametrize("hypergradient", MODES)
def test_frozen_gate_compiled_is_torch_adam(hypergradient):
    model, optimizer = make(hypergradient, compile=True, gate_lr=0.0)
    reference = make_problem()[0]
    expected_groups = groups(reference)
    expected = torch.optim.Adam(expected_groups, lr=2e-2)
    train(model, optimizer, steps=5)
    _, (x, y), _ = make_problem()
    for step in range(5):
        expected.zero_grad()
        mse(reference, (x * (1 + 0.1 * step), y)).backward()
        expected.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, **TOLERANCE)


def test_the_compiled_kernels_really_run(monkeypatch):
    """compile=True must go through torch.compile's output, not the eager bucket code."""

    def refuse(*args, **kwargs):
        raise AssertionError("the eager path ran")

    for name in ("update", "gradient", "raw_moments"):
        monkeypatch.setattr(dynamic_adam_buckets.Bucket, name, refuse)
    model, optimizer = make("online", compile=True)
    train(model, optimizer, steps=2)
    assert all(state["step"] == 2 for state in optimizer.state.values())


@pytest.mark.parametrize(("first", "second"), [(True, False), (False, True)])
def test_state_dict_moves_between_compiled_and_eager(first, second):
    """A checkpoint of one path, loaded into an optimizer on the other, continues as the
    first would have (through torch.save and torch.load(weights_only=True))."""
    model, optimizer = make("online", compile=first)
    train(model, optimizer, steps=3)
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, saved)
    train(model, optimizer, steps=3, start=3)

    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    restored_model, restored = make("online", compile=second, lr=123.0)
    restored_model.load_state_dict(checkpoint["model"])
    restored.load_state_dict(checkpoint["optimizer"])
    assert restored.compile is second  # the path is this optimizer's choice
    train(restored_model, restored, steps=3, start=3)
    assert_same_run((restored_model, restored), (model, optimizer))


def test_non_finite_gradient_raises_before_the_compiled_update():
    model, optimizer = make("lookahead", compile=True)
    train(model, optimizer, steps=2)
    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    optimizer.zero_grad()
    mse(model, make_problem()[1]).backward()
    model[0].weight.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="gradient is not finite"):
        optimizer.step()
    after = (model.state_dict(), optimizer.state_dict())
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    assert optimizer.beta1_history == before[1]["dynamic_adam"]["beta1_history"]


def test_compile_reaches_create_and_is_refused_without_a_compiler():
    params = [torch.zeros(2, requires_grad=True)]
    assert oo.create("dynamic_adam", params).compile is False
    assert oo.create("dynamic_adam", params, compile=True).compile is True
    with (
        torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)}),
        pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler.*pass compile=False"),
    ):
        DynamicAdam(params, compile=True)


def test_a_failing_compile_is_a_clear_error(monkeypatch):
    def untraceable(*args, **kwargs):
        torch._dynamo.graph_break()  # fullgraph=True refuses this

    monkeypatch.setattr(dynamic_adam_compiled, "_bucket_sums", untraceable)
    monkeypatch.setattr(dynamic_adam_compiled, "_COMPILED", {})
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="torch.compile failed.*pass compile=False"):
        DynamicAdam([p], compile=True).step()


# -- slow: more kernels (maximize, no meta closure), float32 at scale ----------------------


def negated_meta_loss_without_last_bias(model: nn.Module, batch: tuple) -> torch.Tensor:
    """A meta loss with no gradient for the last bias (autograd.grad gives None there)."""
    x, y = batch
    return -((model[1](model[0](x)) @ model[2].weight.T - y) ** 2).mean()


@pytest.mark.slow
@pytest.mark.parametrize("hypergradient", MODES)
def test_maximize_and_steps_without_meta_closure_match_eager(hypergradient):
    """Also a meta gradient with a missing (None) part, which the kernels treat as zeros."""
    runs = []
    for compile in (True, False):
        model, optimizer = make(hypergradient, compile=compile, maximize=True)
        _, (x, y), meta_batch = make_problem()
        for step in range(6):
            optimizer.zero_grad()
            (-mse(model, (x * (1 + 0.1 * step), y))).backward()
            meta = partial(negated_meta_loss_without_last_bias, model, meta_batch)
            meta = meta if step % 2 else None  # steps without a direction in between
            optimizer.step(meta_closure=meta if hypergradient == "lookahead" else None)
        runs.append((model, optimizer))
    assert_same_run(*runs)


@pytest.mark.slow
@pytest.mark.parametrize("hypergradient", MODES)
def test_float32_compiled_matches_eager_on_large_tensors(hypergradient):
    data = torch.Generator().manual_seed(3)
    start = [torch.randn(n, generator=data) for n in (300_000, 3_000, 5_000)]
    meta = [torch.randn(p.shape, generator=data) * 1e-2 for p in start]
    runs = []
    for compile in (False, True):
        params = [s.clone().requires_grad_() for s in start]
        optimizer = DynamicAdam(
            params, lr=1e-3, gate_lr=0.05, hypergradient=hypergradient, compile=compile
        )

        def meta_closure(params=params):
            return sum((p * m).sum() for p, m in zip(params, meta, strict=True))

        for step in range(10):
            noise = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=noise) * 1e-2 + 1e-3
            optimizer.step(meta_closure=meta_closure if hypergradient == "lookahead" else None)
        runs.append((params, optimizer.beta1_history))
    (eager, eager_history), (compiled, compiled_history) = runs
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert compiled_history == pytest.approx(eager_history, rel=1e-4)
