"""optimlab.optim against torch.optim: same trajectories and state over 50 steps in float64.

Every optimizer runs over its full grid of options that change the update, on both of its
code paths (for-loop and foreach), with two parameter groups that have different
hyperparameters and a parameter that never gets a gradient; then with every LR scheduler.
torch.optim's for-loop path is the reference. Then the quirks we reproduce, each checked
against an update computed by hand.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.optim import lr_scheduler

import optimlab.optim as oo

STEPS = 50
TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}
SHAPES = [(4, 3), (3,), (2, 2, 2), (5,)]  # the last parameter is never used by the loss

MakeOptimizer = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


def loss_at(params: list[Tensor], step: int, seed: int) -> Tensor:
    """A small tanh regression on fresh random data at every step, plus a quartic term."""
    w, b, c, _ = params
    data = torch.Generator().manual_seed(1000 * seed + step)
    x = torch.randn(8, 4, generator=data, dtype=torch.float64).to(w.device)
    y = torch.randn(8, 3, generator=data, dtype=torch.float64).to(w.device)
    return ((torch.tanh(x @ w + b) - y) ** 2).mean() + 0.1 * (c**2).sum() + 0.05 * (c**4).sum()


def train(
    make_optimizer: MakeOptimizer,
    second_group: dict[str, Any],
    seed: int,
    *,
    maximize: bool = False,
    steps: int = STEPS,
    make_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    device: str = "cpu",
) -> tuple[list[Tensor], torch.optim.Optimizer]:
    """Final parameters and optimizer after `steps` steps from a seeded start."""
    start = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=start, dtype=torch.float64) for s in SHAPES]
    params = [p.to(device).requires_grad_() for p in params]
    groups = [{"params": params[:2]}, {"params": params[2:], **second_group}]
    optimizer = make_optimizer(groups)
    scheduler = make_scheduler(optimizer) if make_scheduler else None
    sign = -1.0 if maximize else 1.0  # maximizing -loss keeps every run bounded
    for step in range(steps):
        optimizer.zero_grad()
        (sign * loss_at(params, step, seed)).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return params, optimizer


def assert_same_run(
    ours: tuple[list[Tensor], torch.optim.Optimizer],
    theirs: tuple[list[Tensor], torch.optim.Optimizer],
) -> None:
    """Same parameters, and the same state (names and values) for every parameter that got a
    gradient; the one that never did has no state with us."""
    (our_params, our_opt), (their_params, their_opt) = ours, theirs
    for mine, reference in zip(our_params, their_params, strict=True):
        torch.testing.assert_close(mine, reference, **TOLERANCE)
    for mine, reference in zip(our_params[:-1], their_params[:-1], strict=True):
        our_state, their_state = our_opt.state.get(mine, {}), their_opt.state.get(reference, {})
        assert set(our_state) == set(their_state)
        for key, value in our_state.items():
            if key == "step":
                assert float(value) == float(their_state[key])
            else:
                torch.testing.assert_close(value, their_state[key], **TOLERANCE)
    assert our_params[-1] not in our_opt.state or not our_opt.state[our_params[-1]]


def check_parity(name: str, options: dict[str, Any], second_group: dict[str, Any], seed: int):
    ours_cls, torch_cls = oo.get(name), getattr(torch.optim, oo.get(name).__name__)
    maximize = options.get("maximize", False)
    reference = train(
        lambda g: torch_cls(g, **options, foreach=False), second_group, seed, maximize=maximize
    )
    for foreach in (False, True):
        ours = train(
            lambda g, f=foreach: ours_cls(g, **options, foreach=f),
            second_group,
            seed,
            maximize=maximize,
        )
        assert_same_run(ours, reference)


def grid(**choices: list[Any]) -> list[dict[str, Any]]:
    return [
        dict(zip(choices, values, strict=True)) for values in itertools.product(*choices.values())
    ]


SGD_OPTIONS = [
    {**momentum, **rest}
    for momentum in [
        {"momentum": 0.0},
        {"momentum": 0.0, "dampening": 0.3},
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.3},
        {"momentum": 0.9, "nesterov": True},
    ]
    for rest in grid(weight_decay=[0.0, 0.1], maximize=[False, True])
]


@pytest.mark.parametrize("options", SGD_OPTIONS, ids=str)
def test_sgd_matches_torch(options):
    second = {"lr": 0.02, "weight_decay": 0.05, "momentum": 0.5 if options["momentum"] else 0.0}
    check_parity("sgd", {"lr": 0.05, **options}, second, seed=1)


@pytest.mark.parametrize(
    "options",
    grid(
        lr_decay=[0.0, 0.1],
        initial_accumulator_value=[0.0, 0.5],
        weight_decay=[0.0, 0.1],
        maximize=[False, True],
    ),
    ids=str,
)
def test_adagrad_matches_torch(options):
    # torch ignores a group's own initial_accumulator_value: so must we
    second = {"lr": 0.05, "lr_decay": 0.05, "initial_accumulator_value": 0.3, "eps": 1e-6}
    check_parity("adagrad", {"lr": 0.1, **options}, second, seed=2)


@pytest.mark.parametrize(
    "options",
    grid(
        centered=[False, True],
        momentum=[0.0, 0.9],
        weight_decay=[0.0, 0.1],
        maximize=[False, True],
    ),
    ids=str,
)
def test_rmsprop_matches_torch(options):
    second = {"lr": 0.002, "alpha": 0.9, "weight_decay": 0.05, "eps": 1e-6}
    check_parity("rmsprop", {"lr": 0.005, **options}, second, seed=3)


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
def test_adam_matches_torch(options):
    second = {"lr": 0.003, "betas": (0.8, 0.99), "weight_decay": 0.05, "eps": 1e-6}
    check_parity("adam", {"lr": 0.01, **options}, second, seed=4)


@pytest.mark.parametrize(
    "options", grid(amsgrad=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True]), ids=str
)
def test_adamw_matches_torch(options):
    second = {"lr": 0.003, "betas": (0.8, 0.99), "weight_decay": 0.2, "eps": 1e-6}
    check_parity("adamw", {"lr": 0.01, **options}, second, seed=5)


# one everyday configuration per optimizer, for the tests below
BASE_OPTIONS = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "adagrad": {"lr": 0.1},
    "rmsprop": {"lr": 0.005},
    "adam": {"lr": 0.01},
    "adamw": {"lr": 0.01},
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop", "adam", "adamw"])
def test_default_path_on_cuda_matches_torch(name):
    ours_cls, torch_cls = oo.get(name), getattr(torch.optim, oo.get(name).__name__)
    options = {**BASE_OPTIONS[name], "weight_decay": 0.01}
    reference = train(lambda g: torch_cls(g, **options, foreach=False), {}, 8, device="cuda")
    ours = train(lambda g: ours_cls(g, **options), {}, 8, device="cuda")
    assert_same_run(ours, reference)


def _cycles_momentum(optimizer: torch.optim.Optimizer) -> bool:
    return "momentum" in optimizer.defaults or "betas" in optimizer.defaults


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t)),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda t: 0.97),
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[5, 20], gamma=0.3),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=10),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=15),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.95),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o,
        [lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5), lr_scheduler.StepLR(o, 5)],
        milestones=[5],
    ),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=20),
    "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(o, factor=0.5, total_iters=5), lr_scheduler.ExponentialLR(o, 0.9)]
    ),
    "ReduceLROnPlateau": lambda o: _PlateauOnStepCount(o),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(
        o, base_lr=0.001, max_lr=0.02, step_size_up=5, cycle_momentum=_cycles_momentum(o)
    ),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=8),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(
        o, max_lr=0.02, total_steps=STEPS, cycle_momentum=_cycles_momentum(o)
    ),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=30, power=2.0),
}


class _PlateauOnStepCount:
    """ReduceLROnPlateau fed a metric that stops improving, so that it does cut the lr."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.scheduler = lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
        self.count = 0

    def step(self) -> None:
        self.count += 1
        self.scheduler.step(max(10 - self.count, 0))


def test_every_scheduler_is_covered():
    assert set(SCHEDULERS) == set(lr_scheduler.__all__) - {"LRScheduler"}


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
@pytest.mark.parametrize("name", sorted(BASE_OPTIONS))
def test_schedulers_drive_ours_as_they_drive_torch(name, scheduler):
    ours_cls, torch_cls = oo.get(name), getattr(torch.optim, oo.get(name).__name__)
    options, second = BASE_OPTIONS[name], {"lr": BASE_OPTIONS[name]["lr"] / 2}
    make_scheduler = SCHEDULERS[scheduler]
    reference = train(
        lambda g: torch_cls(g, **options, foreach=False), second, 6, make_scheduler=make_scheduler
    )
    for foreach in (False, True):
        ours = train(
            lambda g, f=foreach: ours_cls(g, **options, foreach=f),
            second,
            6,
            make_scheduler=make_scheduler,
        )
        assert_same_run(ours, reference)
        lrs = [group["lr"] for group in ours[1].param_groups]
        assert lrs == [group["lr"] for group in reference[1].param_groups]


# -- the documented quirks, against hand-computed updates ------------------------------------


def one_param_steps(optimizer_factory, grads: list[float], start: float = 1.0) -> list[float]:
    """Feed a scalar parameter the given gradients; the parameter after each step."""
    p = torch.tensor([start], dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_factory([p])
    out = []
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        out.append(p.item())
    return out


def test_sgd_momentum_buffer_starts_as_the_first_gradient():
    lr, mu, tau = 0.1, 0.9, 0.5
    steps = one_param_steps(lambda p: oo.SGD(p, lr=lr, momentum=mu, dampening=tau), [2.0, 4.0])
    b1 = 2.0  # not (1 - tau) * 2
    b2 = mu * b1 + (1 - tau) * 4.0
    assert steps == pytest.approx([1 - lr * b1, 1 - lr * b1 - lr * b2], rel=1e-15)


def test_adagrad_decays_lr_from_the_second_step_and_starts_at_the_accumulator_value():
    lr, decay, s0, eps = 0.5, 0.1, 2.0, 1e-10
    opt = lambda p: oo.Adagrad(p, lr=lr, lr_decay=decay, initial_accumulator_value=s0)  # noqa: E731
    steps = one_param_steps(opt, [1.0, 3.0])
    x1 = 1 - lr * 1.0 / ((s0 + 1.0) ** 0.5 + eps)
    x2 = x1 - lr / (1 + decay) * 3.0 / ((s0 + 1.0 + 9.0) ** 0.5 + eps)
    assert steps == pytest.approx([x1, x2], rel=1e-14)


def test_rmsprop_first_step_is_large_as_there_is_no_bias_correction():
    lr, alpha, eps, g = 0.01, 0.99, 1e-8, -2.0
    (x1,) = one_param_steps(lambda p: oo.RMSprop(p, lr=lr, alpha=alpha, eps=eps), [g])
    assert x1 == pytest.approx(1 - lr * g / (((1 - alpha) * g * g) ** 0.5 + eps), rel=1e-14)
    assert abs(x1 - 1) == pytest.approx(10 * lr, rel=1e-6)
    centered = lambda p: oo.RMSprop(p, lr=lr, alpha=alpha, eps=eps, centered=True)  # noqa: E731
    (c1,) = one_param_steps(centered, [g])  # v - gbar^2 = alpha (1 - alpha) g^2
    assert c1 == pytest.approx(1 - lr * g / ((alpha * (1 - alpha) * g * g) ** 0.5 + eps), rel=1e-12)


def test_adam_first_step_is_lr_times_the_gradient_sign():
    lr, eps = 0.01, 1e-8
    for g in (3.0, -0.5):  # mhat_1 = g and vhat_1 = g^2 after the bias corrections
        (x1,) = one_param_steps(lambda p: oo.Adam(p, lr=lr, eps=eps), [g])
        assert x1 == pytest.approx(1 - lr * g / (abs(g) + eps), rel=1e-15)


def test_adamw_decay_shrinks_the_parameter_without_touching_the_moments():
    lr, wd = 0.1, 0.5
    (x1,) = one_param_steps(lambda p: oo.AdamW(p, lr=lr, weight_decay=wd), [0.0], start=4.0)
    assert x1 == 4.0 * (1 - lr * wd)
    (y1,) = one_param_steps(lambda p: oo.Adam(p, lr=lr, weight_decay=wd), [0.0], start=4.0)
    g = wd * 4.0  # L2: the decay is a gradient, which Adam normalises
    assert y1 == pytest.approx(4.0 - lr * g / (g + 1e-8), rel=1e-15)


@pytest.mark.parametrize("name", sorted(BASE_OPTIONS))
def test_maximize_is_minimizing_the_negated_objective(name):
    options = {**BASE_OPTIONS[name], "weight_decay": 0.01}
    up = train(lambda g: oo.get(name)(g, **options, maximize=True), {}, 7, maximize=True, steps=5)
    down = train(lambda g: oo.get(name)(g, **options), {}, 7, steps=5)
    assert all(torch.equal(a, b) for a, b in zip(up[0], down[0], strict=True))
