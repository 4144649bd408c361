"""Final runs as units of work in the storage: one trial per seed, self-describing, resumable."""

import math

import optuna
import pytest
from optuna.trial import TrialState

from optimlab import finals
from optimlab.mnist1d.train import EpochMetrics, TrainResult
from optimlab.tuning import TrainSettings

optuna.logging.set_verbosity(optuna.logging.WARNING)
SETTINGS = TrainSettings(epochs=2, batch_size=100, model="mlp", meta_source=None, device="cpu")
PARAMS = {"lr": 0.01}


class FakeTrain:
    """Test loss = seed / 1000 (so each run is recognisable); seeds in `diverge` blow up."""

    def __init__(self, diverge=()):
        self.seeds, self.diverge = [], set(diverge)

    def __call__(self, config, splits, *, on_epoch=None, **kw):
        self.seeds.append(config.seed)
        loss = math.nan if config.seed in self.diverge else config.seed / 1000
        history = [
            EpochMetrics(e, loss, 0.5, loss, 0.5, loss, 0.5, None, 0.0)
            for e in range(1, config.epochs + 1)
        ]
        return TrainResult(config, history, config.seed in self.diverge, [])


def run(study, fake, monkeypatch, seeds, params=PARAMS):
    monkeypatch.setattr(finals, "train", fake)
    finals.run_finals(
        study,
        optimizer="adam",
        params=params,
        tuning_trial=3,
        seeds=seeds,
        settings=SETTINGS,
        splits=None,
    )


def test_each_seed_is_one_self_describing_trial(monkeypatch):
    study = optuna.create_study()
    fake = FakeTrain()
    run(study, fake, monkeypatch, [1000, 1001, 1002])
    assert sorted(fake.seeds) == [1000, 1001, 1002]
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert t.params == {"seed": t.user_attrs["seed"]}
        assert t.value == pytest.approx(t.user_attrs["seed"] / 1000)
        assert t.user_attrs["hyperparameters"] == PARAMS and t.user_attrs["tuning_trial"] == 3
        assert len(t.user_attrs["history"]) == SETTINGS.epochs
    assert set(finals.final_trials(study, PARAMS)) == {1000, 1001, 1002}


def test_finished_seeds_are_kept_and_missing_ones_run(monkeypatch):
    study = optuna.create_study()
    run(study, FakeTrain(), monkeypatch, [1000, 1001])
    more = FakeTrain()
    run(study, more, monkeypatch, [1000, 1001, 1002, 1003])
    assert sorted(more.seeds) == [1002, 1003]
    again = FakeTrain()
    run(study, again, monkeypatch, [1000, 1001, 1002, 1003])
    assert again.seeds == []


def test_runs_of_another_configuration_do_not_count(monkeypatch):
    study = optuna.create_study()
    run(study, FakeTrain(), monkeypatch, [1000], params={"lr": 0.02})
    fresh = FakeTrain()
    run(study, fresh, monkeypatch, [1000])
    assert fresh.seeds == [1000]
    assert list(finals.final_trials(study, PARAMS)) == [1000]


def test_diverged_run_is_pruned_and_marked(monkeypatch):
    study = optuna.create_study()
    run(study, FakeTrain(diverge={1001}), monkeypatch, [1000, 1001])
    by_seed = {t.user_attrs["seed"]: t for t in study.trials}
    assert by_seed[1001].state == TrialState.PRUNED and by_seed[1001].user_attrs["diverged"]
    assert by_seed[1000].state == TrialState.COMPLETE and not by_seed[1000].user_attrs["diverged"]
    assert set(finals.final_trials(study, PARAMS)) == {1000, 1001}  # counted: not rerun
