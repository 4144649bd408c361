"""Adam and AdamW with compile=True: the update runs through torch.compile (our kernel, not
torch's), matches torch.optim in float64, compiles once per group, round-trips its state dict
and fails loudly, never falling back to eager in silence.

Compiling costs seconds: the default suite compiles a few small layouts (the module-level
cache shares them between tests); the full option grid and the many-layouts test are slow.
"""

from __future__ import annotations

import copy
import io
import itertools
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

import optimlab.optim as oo
from optimlab.optim import adam as adam_module

STEPS = 25
TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}
SHAPES = [(4, 3), (3,), (2, 2, 2), (5,), (6,)]  # the last parameter never gets a gradient


def compilations() -> int:
    """Graphs dynamo has compiled so far in this process."""
    return counters["stats"]["unique_graphs"]


def loss_at(params: list[torch.Tensor], step: int) -> torch.Tensor:
    """A tanh regression on fresh data at every step, plus a quartic term (float64)."""
    w, b, c, d, _ = params
    data = torch.Generator().manual_seed(step)
    x = torch.randn(8, 4, generator=data, dtype=torch.float64)
    y = torch.randn(8, 3, generator=data, dtype=torch.float64)
    fit = ((torch.tanh(x @ w + b) - y) ** 2).mean()
    return fit + 0.1 * (c**2).sum() + 0.05 * (c**4).sum() + (d.sin() ** 2).sum()


def train(
    make_optimizer: Any, groups: list[dict[str, Any]], *, sign: float = 1.0, steps: int = STEPS
) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Parameters and optimizer after `steps` steps from a seeded start, with a OneCycleLR
    schedule that changes lr and beta1 at every step."""
    start = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=start, dtype=torch.float64).requires_grad_() for s in SHAPES]
    bounds = {1: [0, 5], 2: [0, 2, 5], 3: [0, 2, 3, 5]}[len(groups)]  # the last group ends
    optimizer = make_optimizer(
        [
            {**options, "params": params[lo:hi]}
            for options, lo, hi in zip(groups, bounds[:-1], bounds[1:], strict=True)
        ]
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.02, total_steps=steps)
    for step in range(steps):
        optimizer.zero_grad()
        (sign * loss_at(params, step)).backward()
        optimizer.step()
        scheduler.step()
    return params, optimizer


def assert_same_run(ours, theirs) -> None:
    (our_params, our_opt), (their_params, their_opt) = ours, theirs
    for mine, reference in zip(our_params, their_params, strict=True):
        torch.testing.assert_close(mine, reference, **TOLERANCE)
    for mine, reference in zip(our_params[:-1], their_params[:-1], strict=True):
        our_state, their_state = our_opt.state[mine], their_opt.state[reference]
        assert set(our_state) == set(their_state)
        for key, value in our_state.items():
            if key == "step":
                assert value.dtype == torch.float32 and float(value) == float(their_state[key])
            else:
                torch.testing.assert_close(value, their_state[key], **TOLERANCE)
    assert not our_opt.state.get(our_params[-1])  # no gradient, no state


# three groups, each with its own kernel options: AMSGrad with L2 decay, plain Adam with other
# betas and eps, decoupled decay; maximize applies to all
MIXED_GROUPS = [
    {"amsgrad": True, "weight_decay": 0.1},
    {"lr": 0.003, "betas": (0.8, 0.99), "eps": 1e-6},
    {"lr": 0.005, "weight_decay": 0.05, "decoupled_weight_decay": True},
]


def test_compiled_adam_matches_torch_and_compiles_once_per_group():
    before = compilations()
    ours = train(lambda g: oo.Adam(g, lr=0.01, maximize=True, compile=True), MIXED_GROUPS)
    compiled = compilations() - before
    theirs = train(lambda g: torch.optim.Adam(g, lr=0.01, maximize=True), MIXED_GROUPS)
    assert_same_run(ours, theirs)
    # at most one graph per group over 25 steps whose lr and beta1 all differ; none at all if
    # an earlier test compiled the same layout (the cache is shared)
    assert compiled <= len(MIXED_GROUPS)
    before = compilations()
    train(lambda g: oo.Adam(g, lr=0.01, maximize=True, compile=True), MIXED_GROUPS, steps=3)
    assert compilations() == before  # a new optimizer on the same layout reuses the kernels


def test_compiled_adamw_matches_torch():
    groups = [{"amsgrad": True}, {"weight_decay": 0.2, "betas": (0.8, 0.99)}]
    ours = train(lambda g: oo.AdamW(g, lr=0.01, compile=True), groups)
    theirs = train(lambda g: torch.optim.AdamW(g, lr=0.01), groups)
    assert_same_run(ours, theirs)


def test_the_compiled_kernel_really_runs(monkeypatch):
    """compile=True must go through torch.compile's output, not our eager code."""
    eager_paths = []
    for path in ("_single_tensor_adam", "_multi_tensor_adam"):
        monkeypatch.setattr(adam_module, path, lambda *a, _p=path, **k: eager_paths.append(_p))
    params, optimizer = train(lambda g: oo.Adam(g, lr=0.01, compile=True), [{}], steps=2)
    assert not eager_paths and all(float(optimizer.state[p]["step"]) == 2 for p in params[:-1])


def test_state_dict_round_trip_keeps_compile_and_continues_identically():
    make = lambda g: oo.Adam(g, lr=0.01, maximize=True, compile=True)  # noqa: E731
    params, optimizer = train(make, MIXED_GROUPS, steps=5)
    saved = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "params": [p.detach() for p in params]}, saved)
    uninterrupted = []
    for step in range(5, 10):
        optimizer.zero_grad()
        loss_at(params, step).backward()
        optimizer.step()
        uninterrupted.append([p.detach().clone() for p in params])

    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    restored_params = [p.clone().requires_grad_() for p in checkpoint["params"]]
    groups = [restored_params[:2], restored_params[2:3], restored_params[3:]]
    restored = oo.Adam([{"params": g} for g in groups], lr=123.0)  # compile=False here
    restored.load_state_dict(checkpoint["optimizer"])
    assert [group["compile"] for group in restored.param_groups] == [True] * 3
    for step, expected in zip(range(5, 10), uninterrupted, strict=True):
        restored.zero_grad()
        loss_at(restored_params, step).backward()
        restored.step()
        assert all(torch.equal(a, b) for a, b in zip(restored_params, expected, strict=True))


def test_torch_state_dict_loads_into_a_compiled_optimizer_and_continues_alike():
    params, theirs = train(lambda g: torch.optim.Adam(g, lr=0.01), [{}], steps=3)
    twins = [p.detach().clone().requires_grad_() for p in params]
    ours = oo.Adam(twins, compile=True)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))  # no "compile" in torch's groups
    assert ours.param_groups[0]["compile"] is True
    for step in range(3, 6):
        for ps, optimizer in ((params, theirs), (twins, ours)):
            optimizer.zero_grad()
            loss_at(ps, step).backward()
            optimizer.step()
    for mine, reference in zip(twins, params, strict=True):
        torch.testing.assert_close(mine, reference, **TOLERANCE)
    adamw = oo.AdamW([torch.zeros(2, requires_grad=True)], compile=True)
    adamw.load_state_dict(torch.optim.AdamW([torch.zeros(2, requires_grad=True)]).state_dict())
    assert adamw.param_groups[0]["compile"] is True


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_compile_is_a_default_and_reaches_create(name):
    params = [torch.zeros(2, requires_grad=True)]
    assert oo.create(name, params).defaults["compile"] is False
    optimizer = oo.create(name, params, compile=True)
    assert optimizer.defaults["compile"] is True
    assert optimizer.param_groups[0]["compile"] is True
    with pytest.raises(ValueError, match="`compile` and `foreach` cannot be `True` together"):
        oo.create(name, params, compile=True, foreach=True)


def test_no_cpp_compiler_is_a_clear_error_at_construction():
    with (
        torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)}),
        pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler.*pass compile=False"),
    ):
        oo.Adam([torch.zeros(2, requires_grad=True)], compile=True)
    oo.Adam([torch.zeros(2, requires_grad=True)])  # the eager path does not care


def test_unsupported_python_is_a_clear_error_at_construction(monkeypatch):
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(RuntimeError, match="not supported on this Python.*compile=False"):
        oo.AdamW([torch.zeros(2, requires_grad=True)], compile=True)


def test_a_failing_compile_is_a_clear_error_at_the_first_step(monkeypatch):
    def untraceable(*args: Any, **kwargs: Any) -> None:
        torch._dynamo.graph_break()  # fullgraph=True refuses this

    monkeypatch.setattr(adam_module, "_adam_group_update", untraceable)
    monkeypatch.setattr(adam_module, "_COMPILED_GROUP_UPDATES", {})
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    optimizer = oo.Adam([p], compile=True)
    with pytest.raises(RuntimeError, match="torch.compile failed.*pass compile=False"):
        optimizer.step()


# -- the eager default path on CPU: multi-tensor for small parameter sets ------------------


def paths_taken(monkeypatch, params: list[torch.Tensor], **options: Any) -> list[str]:
    """Which eager path each step of Adam over `params` takes."""
    used = []
    for path in ("single", "multi"):
        function = getattr(adam_module, f"_{path}_tensor_adam")
        monkeypatch.setattr(
            adam_module,
            f"_{path}_tensor_adam",
            lambda *a, _path=path, _function=function, **k: (
                used.append(_path) or _function(*a, **k)
            ),
        )
    for p in params:
        p.grad = torch.ones_like(p)
    oo.Adam(params, **options).step()
    return used


def test_default_eager_path_is_multi_tensor_for_small_parameter_sets_on_cpu(monkeypatch):
    limit = oo._common.ADAM_FOREACH_CPU_MAX_NUMEL
    small = [
        torch.zeros(limit // 2, requires_grad=True),
        torch.zeros(limit // 2, requires_grad=True),
    ]
    large = [*small, torch.zeros(1, requires_grad=True)]
    assert paths_taken(monkeypatch, small) == ["multi"]
    assert paths_taken(monkeypatch, large) == ["single"]
    assert paths_taken(monkeypatch, small, foreach=False) == ["single"]
    assert paths_taken(monkeypatch, large, foreach=True) == ["multi"]


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True, "maximize": True}, {"weight_decay": 0.1}],
    ids=str,
)
def test_both_eager_paths_give_identical_results(name, options):
    """So the size-based default changes speed only, never a number."""
    runs = []
    for foreach in (False, True):
        params, _ = train(lambda g, f=foreach: oo.create(name, g, lr=0.01, foreach=f, **options),
                          MIXED_GROUPS[1:], steps=10)  # fmt: skip
        runs.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


# -- slow: the whole option grid, many layouts in one process, float32 at scale -------------


def grid(**choices: list[Any]) -> list[dict[str, Any]]:
    return [dict(zip(choices, v, strict=True)) for v in itertools.product(*choices.values())]


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    grid(
        amsgrad=[False, True],
        weight_decay=[0.0, 0.1],
        decoupled_weight_decay=[False, True],
        maximize=[False, True],
    ),
    ids=str,
)
def test_compiled_adam_matches_torch_over_the_option_grid(options):
    second = {"lr": 0.003, "betas": (0.8, 0.99), "weight_decay": 0.05, "eps": 1e-6}
    sign = -1.0 if options["maximize"] else 1.0  # maximizing -loss keeps the run bounded
    ours = train(lambda g: oo.Adam(g, lr=0.01, **options, compile=True), [{}, second], sign=sign)
    theirs = train(lambda g: torch.optim.Adam(g, lr=0.01, **options), [{}, second], sign=sign)
    assert_same_run(ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "options", grid(amsgrad=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True]), ids=str
)
def test_compiled_adamw_matches_torch_over_the_option_grid(options):
    second = {"lr": 0.003, "betas": (0.8, 0.99), "weight_decay": 0.2, "eps": 1e-6}
    sign = -1.0 if options["maximize"] else 1.0
    ours = train(lambda g: oo.AdamW(g, lr=0.01, **options, compile=True), [{}, second], sign=sign)
    theirs = train(lambda g: torch.optim.AdamW(g, lr=0.01, **options), [{}, second], sign=sign)
    assert_same_run(ours, theirs)


@pytest.mark.slow
def test_many_layouts_in_one_process_never_reach_the_recompile_limit():
    """Dynamo allows 8 recompilations of one function; optimizers over 12 different models
    each get their own compiled kernel instead of failing on the 9th."""
    limit = torch._dynamo.config.recompile_limit
    for width in range(1, limit + 5):
        ours, theirs = (torch.ones(width, 3, requires_grad=True) for _ in range(2))
        before = compilations()
        optimizers = [oo.AdamW([ours], lr=0.1, compile=True), torch.optim.AdamW([theirs], lr=0.1)]
        for step in range(3):
            for p, optimizer in zip((ours, theirs), optimizers, strict=True):
                p.grad = torch.full_like(p, float(step + 1))
                optimizer.step()
        assert compilations() - before <= 1
        torch.testing.assert_close(ours, theirs)


@pytest.mark.slow
def test_float32_compiled_step_matches_the_eager_path_on_large_tensors():
    data = torch.Generator().manual_seed(3)
    start = [torch.randn(n, generator=data) for n in (100_000, 3_000, 3_000)]
    runs = []
    for compile in (False, True):
        params = [s.clone().requires_grad_() for s in start]
        optimizer = oo.Adam(params, lr=1e-3, weight_decay=1e-2, amsgrad=True, compile=compile)
        for step in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            optimizer.step()
        runs.append(params)
    for eager, compiled in zip(*runs, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
