"""Tuning: search spaces, budget accounting, pruning, divergence, resumable sampling.

Training is replaced by a synthetic loss curve (a known function of lr), so these tests check
the tuning logic itself, quickly and exactly.
"""

import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from optimlab import tuning
from optimlab.mnist1d.data import Splits
from optimlab.mnist1d.train import EpochMetrics, TrainResult
from optimlab.mnist1d.variants import VARIANTS

optuna.logging.set_verbosity(optuna.logging.WARNING)

SETTINGS = tuning.TrainSettings(
    epochs=4, batch_size=100, model="mlp", meta_source=None, device="cpu"
)


def splits(with_test: bool) -> Splits:
    x, y = torch.zeros(8, 40), torch.zeros(8, dtype=torch.int64)
    import numpy as np

    return Splits(
        x, y, x, y, x if with_test else None, y if with_test else None, np.arange(8), np.arange(8)
    )


def curve(lr: float, epoch: int) -> float:
    """Synthetic validation loss: best at lr = 1e-2, decreasing with epochs."""
    return (math.log10(lr) + 2) ** 2 + 1.0 / epoch


class FakeTrain:
    """Stands in for optimlab.mnist1d.train.train; records what it was given."""

    def __init__(self, *, crash_on=(), diverge_if=lambda config: False, nan_if=lambda c: False):
        self.calls, self.crash_on = [], set(crash_on)
        self.diverge_if, self.nan_if = diverge_if, nan_if

    def __call__(self, config, data, *, on_epoch=None, checkpoint=None, progress=None):
        self.calls.append((config, data))
        if len(self.calls) in self.crash_on:
            raise RuntimeError("simulated crash")
        history = []
        for epoch in range(1, config.epochs + 1):
            val = math.nan if self.nan_if(config) else curve(config.lr, epoch)
            m = EpochMetrics(epoch, val, 0.5, val, 0.5, None, None, None, 0.01)
            history.append(m)
            if on_epoch is not None:
                on_epoch(m)
        return TrainResult(config, history, self.diverge_if(config), [])


def new_study(**kw):
    return optuna.create_study(
        sampler=tuning.make_sampler(0),
        pruner=tuning.make_pruner(SETTINGS.epochs),
        direction="minimize",
        **kw,
    )


def run_tune(study, fake, monkeypatch, trials=6, optimizer="adam"):
    monkeypatch.setattr(tuning, "train", fake)
    tuning.tune(
        study, optimizer=optimizer, trials=trials, settings=SETTINGS, splits=splits(False), seed=0
    )


@pytest.mark.parametrize("name", list(VARIANTS))
def test_search_space_covers_exactly_the_tuned_hyperparameters(name):
    variant = VARIANTS[name]
    space = tuning.search_space(variant)
    assert set(space) == set(variant.tuned)
    assert space["lr"].log and 0 < space["lr"].low < space["lr"].high
    if variant.has_gate:
        assert "gate_lr" in space and space["gate_lr"].log
    if name == "sgd":
        assert (
            space["momentum"].low == 0.0
            and space["momentum"].high < 1
            and not space["momentum"].log
        )


def test_lr_ranges_as_documented():
    assert (tuning.LR_RANGES["adam"].low, tuning.LR_RANGES["adam"].high) == (1e-4, 1e-1)
    assert (tuning.LR_RANGES["sgd"].low, tuning.LR_RANGES["sgd"].high) == (1e-3, 1.0)


def test_tuning_refuses_test_data(monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(tuning, "train", fake)
    with pytest.raises(AssertionError, match="test"):
        tuning.tune(
            new_study(), optimizer="adam", trials=1, settings=SETTINGS, splits=splits(True), seed=0
        )
    assert fake.calls == []


def test_budget_counts_finished_trials_and_reruns_failures(monkeypatch):
    study = new_study()
    fake = FakeTrain(crash_on={3})
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_tune(study, fake, monkeypatch, trials=6)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
    run_tune(study, fake, monkeypatch, trials=6)  # resume: the failed trial costs no budget
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 6 and len(study.trials) == 7
    assert all(data.x_test is None for _, data in fake.calls)
    run_tune(study, fake, monkeypatch, trials=6)  # budget reached: nothing more runs
    assert len(study.trials) == 7


def test_resumed_study_proposes_what_an_uninterrupted_one_would(monkeypatch):
    whole = new_study()
    run_tune(whole, FakeTrain(), monkeypatch, trials=14)
    parts = new_study()
    run_tune(parts, FakeTrain(), monkeypatch, trials=5)
    run_tune(parts, FakeTrain(), monkeypatch, trials=14)
    assert [t.params for t in parts.trials] == [t.params for t in whole.trials]
    assert [t.value for t in parts.trials] == [t.value for t in whole.trials]


def test_diverged_trials_are_pruned_and_marked_not_failed(monkeypatch):
    study = new_study()
    run_tune(study, FakeTrain(diverge_if=lambda c: c.lr > 1e-2), monkeypatch, trials=8)
    for t in study.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        if t.params["lr"] > 1e-2:
            assert t.state == TrialState.PRUNED and t.user_attrs["diverged"] is True
        else:
            assert t.user_attrs["diverged"] is False


def test_nan_validation_loss_prunes_as_diverged(monkeypatch):
    study = new_study()
    run_tune(study, FakeTrain(nan_if=lambda c: True), monkeypatch, trials=3)
    assert all(t.state == TrialState.PRUNED and t.user_attrs["diverged"] for t in study.trials)
    assert all(not t.intermediate_values for t in study.trials)  # NaN is never reported


def test_median_pruner_stops_hopeless_trials(monkeypatch):
    study = new_study()
    run_tune(study, FakeTrain(), monkeypatch, trials=20)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert pruned, "with 20 trials of a smooth objective, some must be pruned"
    for t in pruned:
        assert not t.user_attrs["diverged"]
        assert tuning.warmup_epochs(SETTINGS.epochs) <= max(t.intermediate_values) < SETTINGS.epochs
    assert len(complete) >= tuning.PRUNER_STARTUP_TRIALS
    best = min(complete, key=lambda t: t.value)
    assert abs(math.log10(best.params["lr"]) + 2) < 0.5  # TPE found the optimum's region


def test_sgd_trials_tune_momentum(monkeypatch):
    study = new_study()
    fake = FakeTrain()
    run_tune(study, fake, monkeypatch, trials=2, optimizer="sgd")
    assert {"lr", "momentum"} == set(study.trials[0].params)
    assert fake.calls[0][0].momentum == study.trials[0].params["momentum"]


def test_importances(monkeypatch):
    single = new_study()
    run_tune(single, FakeTrain(), monkeypatch, trials=3)
    assert tuning.param_importances(single) == {"lr": 1.0}
    double = new_study()
    run_tune(double, FakeTrain(), monkeypatch, trials=20, optimizer="sgd")
    found = tuning.param_importances(double)
    assert set(found) == {"lr", "momentum"}
    assert math.isclose(sum(found.values()), 1.0)
    assert found["lr"] > found["momentum"]  # the synthetic loss ignores momentum
    assert tuning.param_importances(new_study()) == {}


def test_meta_source_override_applies_to_lookahead_variants_only():
    override = tuning.TrainSettings(
        epochs=1, batch_size=100, model="mlp", meta_source="train", device="cpu"
    )
    assert override.meta_source_of("dynamic_adam") == "train"
    assert override.meta_source_of("dynamic_adam_published") == "train"
    assert override.meta_source_of("adam") is None
    assert override.meta_source_of("dynamic_adam_online") is None
    assert override.config("adam", {"lr": 0.1}, 0).meta_source is None
    assert override.config("dynamic_adam", {"lr": 0.1}, 0).meta_source == "train"
    assert SETTINGS.meta_source_of("dynamic_adam") == "val"
    assert SETTINGS.meta_source_of("dynamic_adam_train") == "train"
