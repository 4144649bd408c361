"""The test-function registry: formulas against published values, minima that are minima,
gradients that vanish there, and user-defined surfaces."""

import inspect
import math

import pytest
import torch

from optimlab.commands import surfaces as command
from optimlab.errors import UsageError
from optimlab.surfaces import (
    DEFAULT_FUNCTIONS,
    DEFAULTS,
    OPTIMIZER_VARIANTS,
    QUICK,
    Surface,
    available,
    benchmark,
    get,
    register,
)
from optimlab.surfaces.functions import BUILTIN, grid

NAMES = [s.name for s in BUILTIN]

# Values at points other than the minimum, computed by hand from the formulas in
# Surjanovic and Bingham's library (independent of the code under test).
KNOWN = [
    ("sphere", (1.0, -2.0), 5.0),
    ("booth", (0.0, 0.0), 74.0),
    ("beale", (0.0, 0.0), 14.203125),
    ("himmelblau", (0.0, 0.0), 170.0),
    ("rosenbrock", (0.0, 0.0), 1.0),
    ("rastrigin", (0.5, 0.5), 40.5),
    ("ackley", (1.0, 1.0), -20 * math.exp(-0.2) - math.e + math.e + 20),
    ("matyas", (1.0, 1.0), 0.04),
    ("goldstein_price", (0.0, 0.0), 600.0),
    ("six_hump_camel", (1.0, 1.0), 4 - 2.1 + 1 / 3 + 1 + 0),
]


def value_and_grad(surface, x, y):
    p = torch.tensor([x, y], dtype=torch.float64, requires_grad=True)
    f = surface.fn(p[:1], p[1:]).sum()
    (g,) = torch.autograd.grad(f, p)
    return f.item(), g


@pytest.mark.parametrize(("name", "point", "expected"), KNOWN)
def test_formulas_match_published_values(name, point, expected):
    assert get(name)(*point) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_each_global_minimum_has_the_stated_value_and_zero_gradient(name):
    surface = get(name)
    for x, y in surface.minima:
        f, g = value_and_grad(surface, x, y)
        assert f == pytest.approx(surface.value, abs=1e-12)
        assert torch.isfinite(g).all()
        if name != "ackley":  # a cone at 0: no gradient there, checked below
            assert g.norm().item() < 1e-7


@pytest.mark.parametrize("name", NAMES)
def test_no_grid_point_lies_below_the_global_minimum(name):
    surface = get(name)
    xs, ys = grid(surface.domain, 401)
    assert surface.fn(xs, ys).min().item() >= surface.value - 1e-9


@pytest.mark.parametrize("r", [0.0, 1e-300, 1e-160, 1e-20, 1e-8])
def test_ackley_gradient_is_finite_near_its_cone_tip(r):
    _, g = value_and_grad(get("ackley"), r, -r)
    assert torch.isfinite(g).all()


def test_ackley_gradient_matches_finite_differences_away_from_zero():
    surface, (x, y), h = get("ackley"), (0.3, -0.7), 1e-6
    _, g = value_and_grad(surface, x, y)
    fd = [
        (surface(x + h, y) - surface(x - h, y)) / (2 * h),
        (surface(x, y + h) - surface(x, y - h)) / (2 * h),
    ]
    torch.testing.assert_close(g, torch.tensor(fd, dtype=torch.float64), rtol=1e-6, atol=1e-8)


def test_registry_order_and_cli_names_and_budgets_agree():
    assert available()[: len(NAMES)] == NAMES
    assert list(DEFAULT_FUNCTIONS) == NAMES[:6] == command.DEFAULT_FUNCTIONS
    assert command.FUNCTIONS == NAMES
    assert command.OPTIMIZERS == list(OPTIMIZER_VARIANTS)
    assert command.QUICK == QUICK and command.DEFAULTS == DEFAULTS
    signature = inspect.signature(benchmark).parameters
    assert {k: signature[k].default for k in DEFAULTS} == DEFAULTS


def test_starts_lie_in_their_domains_and_log_scales_where_f_spans_decades():
    for surface in BUILTIN:
        (x0, x1), (y0, y1) = surface.domain
        assert x0 <= surface.start[0] <= x1 and y0 <= surface.start[1] <= y1
    assert get("rosenbrock").log_scale and get("goldstein_price").log_scale
    assert not get("sphere").log_scale and not get("rastrigin").log_scale


def test_custom_surface_defaults_and_registration():
    bowl = Surface(
        "test_bowl", lambda x, y: (x - 1) ** 2 + 3 * (y + 2) ** 2 + 5, ((-4, 4), (-5, 3)), [(1, -2)]
    )
    assert bowl.value == 5.0  # f at the first minimum
    assert bowl.window == bowl.domain
    assert bowl.start == pytest.approx((-4 + 0.15 * 8, 3 - 0.15 * 8))
    assert bowl.log_scale is False
    assert bowl.divergence_box() == ((-40.0, 40.0), (-41.0, 39.0))
    register(bowl, replace=True)
    assert get("test_bowl") is bowl and "test_bowl" in available()
    with pytest.raises(UsageError, match="exists"):
        register(bowl)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name"}, "letters, digits"),
        ({"name": "convergence"}, "reserved"),
        ({"domain": ((1, -1), (0, 1))}, "xmin < xmax"),
        ({"domain": (0, 1)}, r"\(\(xmin, xmax\)"),
        ({"minima": []}, "at least one"),
        ({"minima": [(9, 9)]}, "outside the domain"),
        ({"start": (0, 7)}, "outside the domain"),
        ({"fn": 3}, "callable"),
        ({"fn": lambda x, y: (x**2 + y**2).sum()}, "elementwise"),
        ({"fn": lambda x, y: x**2 + y**2 - x.mean()}, "elementwise"),
        ({"fn": lambda x, y: x.no_such_method()}, "failed on tensors"),
    ],
)
def test_bad_surfaces_are_rejected_in_one_line(kwargs, message):
    args = {
        "name": "ok",
        "fn": lambda x, y: x**2 + y**2,
        "domain": ((-1, 1), (-1, 1)),
        "minima": [(0, 0)],
    }
    with pytest.raises(UsageError, match=message) as info:
        Surface(**{**args, **kwargs})
    assert "\n" not in str(info.value)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UsageError, match="unknown function 'nope'; valid: sphere, booth"):
        get("nope")
