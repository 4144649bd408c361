"""optimlab.optim against torch.optim on random problems drawn by hypothesis.

For each of sgd, adagrad, rmsprop, adam and adamw, hypothesis draws the hyperparameters over
their valid ranges, every option flag, the parameter shapes and a seed for the gradients;
50 steps of seeded random gradients (the same for both) must leave the same parameters and
state as torch.optim's for-loop path, in float64. test_optim_parity.py covers the fixed
grids, LR schedulers and quirks; this file covers the space between their points.
Derandomized, so that a run is reproducible; a failure prints the drawn example.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optimlab.optim as oo

STEPS = 50
TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}
EXAMPLES = settings(max_examples=15, deadline=None, derandomize=True, database=None)

TORCH = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    """Uniform in log scale over [low, high], its ends included."""
    exponents = st.floats(math.log10(low), math.log10(high))
    return exponents.map(lambda e: 10.0**e) | st.sampled_from([low, high])


def unit(high: float = 0.999) -> st.SearchStrategy[float]:
    """A coefficient in [0, high], its ends included."""
    return st.floats(0.0, high) | st.sampled_from([0.0, high])


lrs = log_uniform(1e-4, 1.0)
epsilons = log_uniform(1e-12, 1e-3)
weight_decays = unit(0.1)
flags = st.booleans()
shapes = st.lists(
    st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=3
)


@st.composite
def sgd_options(draw: st.DrawFn) -> dict[str, Any]:
    nesterov = draw(flags)  # needs momentum > 0 and no dampening
    momentum = draw(st.floats(0.01, 0.99) if nesterov else unit(0.99))
    return {
        "lr": draw(lrs),
        "momentum": momentum,
        "dampening": 0.0 if nesterov else draw(unit(0.99)),
        "weight_decay": draw(weight_decays),
        "nesterov": nesterov,
        "maximize": draw(flags),
    }


@st.composite
def adagrad_options(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(lrs),
        "lr_decay": draw(unit(0.1)),
        "weight_decay": draw(weight_decays),
        "initial_accumulator_value": draw(unit(1.0)),
        "eps": draw(epsilons),
        "maximize": draw(flags),
    }


@st.composite
def rmsprop_options(draw: st.DrawFn) -> dict[str, Any]:
    # Centered with alpha near 0 estimates a variance from about one gradient: 0 up to
    # rounding, whose square root is nan in both implementations. Not drawn.
    centered = draw(flags)
    return {
        "lr": draw(log_uniform(1e-5, 0.1)),
        "alpha": draw(st.floats(0.5, 0.999) if centered else unit(0.999)),
        "eps": draw(epsilons),
        "weight_decay": draw(weight_decays),
        "momentum": draw(unit(0.99)),
        "centered": centered,
        "maximize": draw(flags),
    }


@st.composite
def adam_options(draw: st.DrawFn, *, adamw: bool = False) -> dict[str, Any]:
    options = {
        "lr": draw(log_uniform(1e-4, 0.1)),
        "betas": (draw(unit(0.99)), draw(unit(0.9999))),
        "eps": draw(epsilons),
        "weight_decay": draw(weight_decays),
        "amsgrad": draw(flags),
        "maximize": draw(flags),
    }
    if not adamw:
        options["decoupled_weight_decay"] = draw(flags)
    return options


def run(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], seed: int) -> None:
    """STEPS steps of seeded N(0, 1) gradients."""
    gradients = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gradients, dtype=torch.float64)
        optimizer.step()


def assert_matches_torch(name: str, options: dict[str, Any], shapes_, seed: int, foreach: bool):
    start = torch.Generator().manual_seed(seed + 1)
    values = [torch.randn(s, generator=start, dtype=torch.float64) for s in shapes_]
    ours = [v.clone().requires_grad_() for v in values]
    theirs = [v.clone().requires_grad_() for v in values]
    our_optimizer = oo.create(name, ours, foreach=foreach, **options)
    their_optimizer = TORCH[name](theirs, foreach=False, **options)
    run(our_optimizer, ours, seed)
    run(their_optimizer, theirs, seed)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, **TOLERANCE)
        our_state, their_state = our_optimizer.state[mine], their_optimizer.state[reference]
        assert set(our_state) == set(their_state)
        for key, value in our_state.items():
            torch.testing.assert_close(
                torch.as_tensor(value, dtype=torch.float64),
                torch.as_tensor(their_state[key], dtype=torch.float64),
                **TOLERANCE,
            )


seeds = st.integers(0, 2**31 - 1)


@EXAMPLES
@given(sgd_options(), shapes, seeds, flags)
def test_sgd_matches_torch(options, shapes_, seed, foreach):
    assert_matches_torch("sgd", options, shapes_, seed, foreach)


@EXAMPLES
@given(adagrad_options(), shapes, seeds, flags)
def test_adagrad_matches_torch(options, shapes_, seed, foreach):
    assert_matches_torch("adagrad", options, shapes_, seed, foreach)


@EXAMPLES
@given(rmsprop_options(), shapes, seeds, flags)
def test_rmsprop_matches_torch(options, shapes_, seed, foreach):
    assert_matches_torch("rmsprop", options, shapes_, seed, foreach)


@EXAMPLES
@given(adam_options(), shapes, seeds, flags)
def test_adam_matches_torch(options, shapes_, seed, foreach):
    assert_matches_torch("adam", options, shapes_, seed, foreach)


@EXAMPLES
@given(adam_options(adamw=True), shapes, seeds, flags)
def test_adamw_matches_torch(options, shapes_, seed, foreach):
    assert_matches_torch("adamw", options, shapes_, seed, foreach)
