"""The benchmark protocol: tuning, start points, metrics and the Python API."""

import math

import numpy as np
import pytest
import torch

from optimlab.errors import UsageError
from optimlab.surfaces import Surface, benchmark, get
from optimlab.surfaces.bench import noise_table, start_points, tuning_rounds
from optimlab.surfaces.metrics import COLUMNS, quantile, steps_to_tolerance

SMALL = {"steps": 150, "starts": 4, "tune_trials": 6, "tune_starts": 3}


@pytest.mark.parametrize("function", ["sphere", "booth"])
def test_tuned_adam_and_sgd_reach_the_minimum(function):
    rows = benchmark([function], ["adam", "sgd"], **SMALL)
    assert [r["optimizer"] for r in rows] == ["adam", "sgd"]
    for row in rows:
        assert set(row) == set(COLUMNS)
        assert row["success_rate"] == 1.0, row
        assert row["final_gap_median"] < 1e-3
        assert row["diverged"] == 0
        assert 0 <= row["steps_to_tol_median"] <= SMALL["steps"]
        assert row["tune_score"] is not None
    assert rows[0]["momentum"] is None and 0 <= rows[1]["momentum"] <= 0.99


def test_a_diverging_learning_rate_is_reported_as_diverged():
    (row,) = benchmark(
        ["booth"], ["sgd"], steps=50, starts=5, tune_trials=0,
        hyperparameters={"sgd": {"lr": 10.0, "momentum": 0.0}},
    )  # fmt: skip
    assert row["diverged"] == 5
    assert row["success_rate"] == 0.0 and row["steps_to_tol_median"] is None
    assert math.isinf(row["final_gap_median"]) and math.isinf(row["canonical_final_gap"])
    assert row["lr"] == 10.0 and row["tune_score"] is None


def test_results_are_reproducible_from_the_seed_and_change_with_it():
    args = (["himmelblau"], ["adam", "rmsprop"])
    kwargs = {**SMALL, "steps": 60}
    first, again = benchmark(*args, **kwargs, seed=1), benchmark(*args, **kwargs, seed=1)
    assert first == again
    other = benchmark(*args, **kwargs, seed=2)
    assert [r["lr"] for r in other] != [r["lr"] for r in first]


def test_a_pair_gets_the_same_result_whatever_runs_alongside_it():
    """Per-study seeds and row-independent batches: adding functions and optimizers to a
    benchmark changes nothing for the pairs already in it."""
    kwargs = {**SMALL, "steps": 60, "noise": 0.3}
    alone = benchmark(["booth"], ["dynamic_adam"], **kwargs)
    crowd = benchmark(["sphere", "booth"], ["adam", "dynamic_adam", "sgd"], **kwargs)
    assert alone == [
        r for r in crowd if (r["function"], r["optimizer"]) == ("booth", "dynamic_adam")
    ]


def test_custom_surface_objects_run_without_registration():
    bowl = Surface(
        "test_unregistered_bowl", lambda x, y: x**2 + 4 * y**2, ((-3, 3), (-3, 3)), [(0, 0)]
    )
    (row,) = benchmark([bowl], ["adam"], steps=100, starts=3, tune_trials=0)
    assert row["function"] == "test_unregistered_bowl"
    assert row["lr"] == 0.1  # adam's documented default


def test_start_points_canonical_first_then_spread_and_apart_from_tuning():
    surface = get("rosenbrock")
    evaluation = start_points(surface, 16, seed=0)
    tuning = start_points(surface, 8, seed=0, tuning=True)
    assert evaluation[0].tolist() == list(surface.start)
    assert start_points(surface, 1, seed=0).tolist() == [list(surface.start)]
    (x0, x1), (y0, y1) = surface.domain
    for points in (evaluation, tuning):
        assert ((points[:, 0] >= x0) & (points[:, 0] <= x1)).all()
        assert ((points[:, 1] >= y0) & (points[:, 1] <= y1)).all()
    assert torch.cdist(evaluation, tuning).min() > 1e-3
    spread = evaluation[1:]  # a spread: every quadrant of the domain gets points
    center = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2], dtype=torch.float64)
    quadrants = {tuple((p > center).tolist()) for p in spread}
    assert len(quadrants) == 4
    assert torch.equal(start_points(surface, 16, seed=0), evaluation)
    assert not torch.equal(start_points(surface, 16, seed=1), evaluation)


def test_noise_is_seeded_and_scaled():
    assert noise_table(0.0, 10, 4, seed=0) is None
    a, b = noise_table(2.0, 400, 8, seed=0), noise_table(2.0, 400, 8, seed=0)
    assert torch.equal(a, b) and a.shape == (400, 8, 2)
    assert a.std().item() == pytest.approx(2.0, rel=0.05)
    assert not torch.equal(a, noise_table(2.0, 400, 8, seed=0, tuning=True))


def test_noise_changes_results():
    kwargs = {"steps": 300, "starts": 3, "tune_trials": 0, "hyperparameters": {"adam": {"lr": 0.3}}}
    (clean,) = benchmark(["booth"], ["adam"], **kwargs)
    (noisy,) = benchmark(["booth"], ["adam"], **kwargs, noise=1.0)
    assert clean["success_rate"] == 1 and clean["final_gap_median"] < 1e-8
    assert noisy["final_gap_median"] > 1e3 * clean["final_gap_median"]


def test_every_optimizer_gets_the_same_number_of_trials_in_rounds():
    assert tuning_rounds(20) == [10, 5, 5]
    assert tuning_rounds(8) == [4, 4]
    assert tuning_rounds(1) == [1]
    for trials in range(1, 30):
        assert sum(tuning_rounds(trials)) == trials


def test_steps_to_tolerance_needs_the_run_to_stay_there():
    distance = np.array(
        [[5.0, 5.0, 5.0], [0.001, 0.5, 5.0], [0.5, 0.001, 5.0], [0.001, 0.001, 0.5]]
    )
    reached = steps_to_tolerance(distance, 0.01)
    assert reached[0] == 3  # a fly-by at step 1 does not count
    assert reached[1] == 2
    assert np.isnan(reached[2])


def test_quantile_lets_diverged_runs_take_part():
    assert quantile(np.array([1.0, np.inf, np.inf]), 0.5) == math.inf
    assert quantile(np.array([1.0, 3.0, np.inf]), 0.5) == 3.0
    assert quantile(np.array([1.0, 3.0]), 0.5) == 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"surfaces": ["nope"]}, "unknown function 'nope'"),
        ({"optimizers": ["nadam"]}, "unknown optimizer 'nadam'"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"starts": 2.5}, "starts must be an integer"),
        ({"noise": -1.0}, "noise must be"),
        ({"tol": 0.0}, "tol must be"),
        ({"optimizers": ["adam", "adam"]}, "listed twice"),
        ({"hyperparameters": {"adam": {"lr": 0.1}}}, "only without tuning"),
        ({"tune_trials": 0, "hyperparameters": {"adam": {"momentum": 0.9}}}, "no hyperparameter"),
        ({"seed": 2**64}, r"seed must be an integer in \[0, 4294967295\]"),
        ({"seed": -1}, "seed must be"),
        ({"seed": 1.5}, "seed must be"),
        ({"out": "/etc/passwd"}, "exists and is not a directory"),
        ({"out": "/proc/optimlab-test"}, "is not writable"),
        ({"steps": 10**7, "starts": 16}, r"steps x starts too large: .* 3\.6 GiB"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(kwargs, message, monkeypatch):
    from optimlab.surfaces import bench

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(bench, "tune", no_work)  # every check comes before any run
    monkeypatch.setattr(bench, "run", no_work)
    args = {"surfaces": ["sphere"], "optimizers": ["adam"], "steps": 5, "starts": 2, **kwargs}
    with pytest.raises(UsageError, match=message) as info:
        benchmark(args.pop("surfaces"), args.pop("optimizers"), **args)
    assert "\n" not in str(info.value)
