"""optimlab.optim as an optimizer library: registry, independence from torch.optim's code,
constructor checks, state and state dicts, groups, closures, hooks and code-path choice."""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim import Optimizer

import optimlab.optim as oo
from optimlab.errors import UsageError
from optimlab.optim import _common

NAMES = ["sgd", "adagrad", "rmsprop", "adam", "adamw"]
OPTIM_DIR = Path(oo.__file__).parent
OUR_FILES = [OPTIM_DIR / f"{name}.py" for name in [*NAMES, "_common"]]
# options that give each optimizer all of its state
FULL_OPTIONS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
    "adagrad": {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
    "rmsprop": {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.01},
    "adam": {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01},
    "adamw": {"lr": 0.01, "amsgrad": True},
}
NOT_OFFERED = {"capturable", "differentiable", "fused"}


def torch_class(name: str) -> type[Optimizer]:
    return getattr(torch.optim, oo.get(name).__name__)


def make_params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in [(3, 2), (4,)]
    ]


def loss_of(params: list[torch.Tensor], step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    w, b = params
    return (torch.tanh(x @ w).sum(1) - b.sum()).pow(2).mean() + (b**4).sum()


def run(optimizer: Optimizer, params: list[torch.Tensor], steps: range) -> list[torch.Tensor]:
    """The parameters after each step, as copies."""
    trajectory = []
    for step in steps:
        optimizer.zero_grad()
        loss_of(params, step).backward()
        optimizer.step()
        trajectory.append(torch.cat([p.detach().flatten() for p in params]).clone())
    return trajectory


# -- registry ------------------------------------------------------------------------------


def test_registry_lists_creates_and_rejects():
    assert set(NAMES) <= set(oo.available()) and oo.available() == sorted(oo.available())
    assert oo.get("ADAM") is oo.Adam
    optimizer = oo.create("sgd", make_params(), lr=0.1, momentum=0.9)
    assert isinstance(optimizer, oo.SGD) and optimizer.defaults["momentum"] == 0.9
    with pytest.raises(UsageError, match="unknown optimizer 'lion'; valid names: adagrad, adam"):
        oo.create("lion", make_params())


# -- written from scratch ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_direct_subclass_of_the_base_optimizer_only(name):
    assert oo.get(name).__mro__ == (oo.get(name), Optimizer, object)


def test_source_uses_nothing_from_torch_optim_but_the_base_class():
    for path in OUR_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.optim"):
                assert node.module == "torch.optim", path
                assert [alias.name for alias in node.names] == ["Optimizer"], path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("torch.optim") for a in node.names), path
            if isinstance(node, ast.Attribute):
                assert node.attr != "optim" and "fused" not in node.attr, (path, node.attr)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_steps_with_torch_optim_functional_code_and_fused_kernels_disabled(
    name, foreach, monkeypatch
):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.optim's own update code was called")

    for module in ["sgd", "adagrad", "rmsprop", "adam", "adamw"]:
        torch_module = importlib.import_module(f"torch.optim.{module}")
        for attribute in dir(torch_module):
            if attribute in {module, "_fused_" + module} or attribute.startswith(
                ("_single_tensor_", "_multi_tensor_", "_fused_")
            ):
                monkeypatch.setattr(torch_module, attribute, forbidden)
    for kernel in [k for k in dir(torch) if k.startswith("_fused_")]:
        monkeypatch.setattr(torch, kernel, forbidden)
    params = make_params()
    with pytest.raises(AssertionError, match="torch.optim's own update code"):
        run(torch_class(name)(params, **FULL_OPTIONS[name], foreach=foreach), params, range(1))
    before = [p.detach().clone() for p in params]
    run(oo.get(name)(params, **FULL_OPTIONS[name], foreach=foreach), params, range(3))
    assert all(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


# -- constructor ---------------------------------------------------------------------------


OURS_ONLY = {"adam": {"compile": False}, "adamw": {"compile": False}}  # options torch lacks


@pytest.mark.parametrize("name", NAMES)
def test_constructor_arguments_and_defaults_are_torchs(name):
    ours = inspect.signature(oo.get(name)).parameters
    theirs = inspect.signature(torch_class(name)).parameters
    expected = {k: v.default for k, v in theirs.items() if k not in NOT_OFFERED}
    assert {k: v.default for k, v in ours.items()} == expected | OURS_ONLY.get(name, {})
    their_defaults = torch_class(name)(make_params()).defaults
    expected = {k: v for k, v in their_defaults.items() if k not in NOT_OFFERED}
    assert oo.get(name)(make_params()).defaults == expected | OURS_ONLY.get(name, {})


BAD_ARGUMENTS = [
    ("sgd", {"lr": -1.0}),
    ("sgd", {"lr": torch.tensor([0.1, 0.2])}),
    ("sgd", {"momentum": -0.5}),
    ("sgd", {"weight_decay": -1e-3}),
    ("sgd", {"nesterov": True}),
    ("sgd", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}),
    ("adagrad", {"lr": -0.1}),
    ("adagrad", {"lr_decay": -0.5}),
    ("adagrad", {"weight_decay": -0.5}),
    ("adagrad", {"initial_accumulator_value": -1.0}),
    ("adagrad", {"eps": -1e-10}),
    ("rmsprop", {"lr": -0.1}),
    ("rmsprop", {"eps": -1.0}),
    ("rmsprop", {"momentum": -0.1}),
    ("rmsprop", {"weight_decay": -0.1}),
    ("rmsprop", {"alpha": -0.9}),
    ("rmsprop", {"lr": -0.1, "alpha": -0.9}),  # the first check wins, as in torch
    *[
        (name, bad)
        for name in ["adam", "adamw"]
        for bad in [
            {"lr": -1.0},
            {"lr": torch.tensor([1e-3, 1e-3])},
            {"eps": -1e-8},
            {"betas": (1.0, 0.999)},
            {"betas": (0.9, -0.1)},
            {"betas": (0.9, 1.5)},
            {"weight_decay": -0.01},
            {"betas": (0, 0.999)},
            {"betas": (torch.tensor(0.9), 0.999)},
            {"betas": (torch.tensor([0.9, 0.8]), torch.tensor(0.999))},
            {"betas": (torch.tensor(0.9), torch.tensor([0.99, 0.9]))},
        ]
    ],
]


@pytest.mark.parametrize(("name", "bad"), BAD_ARGUMENTS, ids=str)
def test_invalid_arguments_raise_torchs_error(name, bad):
    with pytest.raises(Exception) as theirs:
        torch_class(name)(make_params(), **bad)
    with pytest.raises(type(theirs.value)) as ours:
        oo.get(name)(make_params(), **bad)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("name", NAMES)
def test_fused_is_refused_not_ignored(name):
    with pytest.raises(TypeError, match="fused"):
        oo.get(name)(make_params(), fused=True)


# -- state, groups, state dicts --------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_tiny_lr_group_stays_put_and_gradless_param_keeps_no_state(name, foreach):
    moving, frozen = make_params(1), make_params(2)
    gradless = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    groups = [{"params": moving}, {"params": [*frozen, gradless], "lr": 1e-28}]
    optimizer = oo.get(name)(groups, **FULL_OPTIONS[name], foreach=foreach)
    assert not optimizer.state  # lazy: nothing before the first step
    moving_start, frozen_start = ([p.detach().clone() for p in ps] for ps in (moving, frozen))
    for step in range(5):
        optimizer.zero_grad()
        (loss_of(moving, step) + loss_of(frozen, step)).backward()
        optimizer.step()
    assert all(not torch.equal(p, s) for p, s in zip(moving, moving_start, strict=True))
    assert all(torch.equal(p, s) for p, s in zip(frozen, frozen_start, strict=True))
    assert gradless.grad is None and gradless not in optimizer.state
    assert torch.equal(gradless, torch.zeros(3, dtype=torch.float64))


EXPECTED_STATE = {
    "sgd": {"momentum_buffer"},
    "adagrad": {"step", "sum"},
    "rmsprop": {"step", "square_avg", "momentum_buffer", "grad_avg"},
    "adam": {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
    "adamw": {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
}


@pytest.mark.parametrize("name", NAMES)
def test_state_is_created_on_a_params_first_step_with_a_gradient(name):
    first, late = make_params(3)
    optimizer = oo.get(name)([first, late], **FULL_OPTIONS[name])
    (first**2).sum().backward()
    optimizer.step()
    assert set(optimizer.state) == {first} and set(optimizer.state[first]) == EXPECTED_STATE[name]
    (late**2).sum().backward()
    optimizer.step()
    if "step" in EXPECTED_STATE[name]:  # each parameter counts its own steps
        assert [float(optimizer.state[p]["step"]) for p in (first, late)] == [2.0, 1.0]
    added = torch.ones(2, requires_grad=True)
    optimizer.add_param_group({"params": [added], "lr": 0.5})
    added.grad = torch.ones(2)
    optimizer.step()
    assert set(optimizer.state[added]) == EXPECTED_STATE[name] and not torch.equal(
        added, torch.ones(2)
    )


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_bit_identically(name, foreach):
    params = make_params(4)
    optimizer = oo.get(name)(params, **FULL_OPTIONS[name], foreach=foreach)
    run(optimizer, params, range(10))
    saved = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "params": [p.detach() for p in params]}, saved)
    uninterrupted = run(optimizer, params, range(10, 20))

    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    restored_params = [p.clone().requires_grad_() for p in checkpoint["params"]]
    restored = oo.get(name)(restored_params, lr=123.0)  # hyperparameters come from the dict
    restored.load_state_dict(checkpoint["optimizer"])
    resumed = run(restored, restored_params, range(10, 20))
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, resumed, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_state_dicts_move_between_torch_and_optimlab(name):
    params, twin = make_params(5), make_params(5)
    theirs = torch_class(name)(params, **FULL_OPTIONS[name], foreach=False)
    ours = oo.get(name)(twin, **FULL_OPTIONS[name])
    run(theirs, params, range(5))
    run(ours, twin, range(5))
    for p, q in zip(params, twin, strict=True):  # same layout: names, dtypes, shapes, devices
        layout = {k: (v.dtype, v.shape, v.device) for k, v in theirs.state[p].items()}
        assert {k: (v.dtype, v.shape, v.device) for k, v in ours.state[q].items()} == layout
    ours_saved, theirs_saved = copy.deepcopy(ours.state_dict()), copy.deepcopy(theirs.state_dict())
    ours.load_state_dict(theirs_saved)  # each continues from the other's state
    theirs.load_state_dict(ours_saved)
    for a, b in zip(run(theirs, params, range(5, 15)), run(ours, twin, range(5, 15)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_adamw_keeps_its_decay_decoupled_when_loading_an_adam_state_dict():
    adamw = oo.AdamW(make_params())
    adamw.load_state_dict(oo.Adam(make_params(), weight_decay=0.1).state_dict())
    assert adamw.param_groups[0]["decoupled_weight_decay"] is True


# -- step: closure, no_grad, hooks, zero_grad, unsupported gradients --------------------------


@pytest.mark.parametrize("name", NAMES)
def test_step_evaluates_the_closure_with_gradients_on_and_returns_its_loss(name):
    params = make_params()
    optimizer = oo.get(name)(params, lr=0.01)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        optimizer.zero_grad()
        loss = loss_of(params, 0)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = optimizer.step(closure)
    assert calls == [True] and loss.requires_grad
    assert optimizer.step() is None


UNTOUCHED_GRAD_CASES = [
    *[(name, {**FULL_OPTIONS[name], "maximize": m}) for name in NAMES for m in (False, True)],
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),  # torch's foreach path edits .grad
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("name", "options"), UNTOUCHED_GRAD_CASES, ids=str)
def test_step_leaves_the_gradients_alone(name, options, foreach):
    params = make_params()
    optimizer = oo.get(name)(params, **options, foreach=foreach)
    loss_of(params, 0).backward()
    grads = [p.grad.clone() for p in params]
    optimizer.step()
    optimizer.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_zero_grad_and_hooks_come_from_the_base_class(name):
    assert oo.get(name).zero_grad is Optimizer.zero_grad
    params = make_params()
    optimizer = oo.get(name)(params, lr=0.01)
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append("post"))
    run(optimizer, params, range(1))
    optimizer.zero_grad()
    assert seen == ["pre", "post"] and all(p.grad is None for p in params)


@pytest.mark.parametrize("name", NAMES)
def test_sparse_gradients_and_complex_parameters_are_refused(name):
    sparse = torch.zeros(4, requires_grad=True)
    sparse.grad = torch.zeros(4).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        oo.get(name)([sparse]).step()
    complex_param = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    complex_param.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="does not support complex parameters"):
        oo.get(name)([complex_param]).step()


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_tensor_lr_works_as_its_value(name, foreach):
    def trajectory(cls, lr, **extra):
        params = make_params(6)
        return run(cls(params, **{**FULL_OPTIONS[name], "lr": lr}, **extra), params, range(10))

    lr = torch.tensor(0.01)
    tensor_run = trajectory(oo.get(name), lr, foreach=foreach)
    float_run = trajectory(oo.get(name), float(lr), foreach=foreach)
    torch_run = trajectory(torch_class(name), lr, foreach=False)
    for ours, same, theirs in zip(tensor_run, float_run, torch_run, strict=True):
        assert torch.equal(ours, same)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)  # torch: float32 math


# -- code path choice -----------------------------------------------------------------------


def test_default_path_is_foreach_only_on_cuda():
    on = [torch.zeros(1), torch.zeros(1, device="meta")]
    assert not _common.use_foreach(None, on[:1]) and not _common.use_foreach(None, on)
    cuda = [type("P", (), {"device": torch.device("cuda")})()]  # no GPU needed
    assert _common.use_foreach(None, cuda) and not _common.use_foreach(False, cuda)
    assert _common.use_foreach(True, on[:1]) and not _common.use_foreach(None, [])


@pytest.mark.parametrize("foreach", [None, False, True])
@pytest.mark.parametrize("name", NAMES)
def test_foreach_argument_picks_the_path(name, foreach, monkeypatch):
    core = "adam" if name == "adamw" else name  # AdamW runs Adam's functional core
    module = inspect.getmodule(oo.get(core))
    used = []
    for path in ("single", "multi"):
        function = getattr(module, f"_{path}_tensor_{core}")
        monkeypatch.setattr(
            module,
            f"_{path}_tensor_{core}",
            lambda *a, _path=path, _function=function, **k: (
                used.append(_path) or _function(*a, **k)
            ),
        )
    params = make_params()
    run(oo.get(name)(params, **FULL_OPTIONS[name], foreach=foreach), params, range(1))
    # foreach=None on CPU: the Adam family takes the multi-tensor path for small groups
    # (faster there, measured), the others the for-loop.
    small_default = foreach is None and core == "adam"
    assert used == ["multi" if foreach or small_default else "single"]
