"""The shared budget, in one process: exactly N finished trials whatever other workers do.

Other workers are played by hand on the same storage (a trial left RUNNING by a "remote"
worker, a dead local process, a queued copy, a trial failed under a live worker), and
training is a synthetic loss curve, so each rule is checked exactly and quickly.
"""

import datetime
import math
import subprocess
import sys
import threading

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from optimlab import finals, storage, tuning
from optimlab.mnist1d.data import Splits
from optimlab.mnist1d.train import EpochMetrics, TrainResult
from optimlab.tuning import FINISHED

optuna.logging.set_verbosity(optuna.logging.ERROR)
SETTINGS = tuning.TrainSettings(
    epochs=3, batch_size=100, model="mlp", meta_source=None, device="cpu"
)
REMOTE = "another-host:1:1"  # a worker on another machine: alive as far as we can tell


def splits(with_test=False) -> Splits:
    x, y = torch.zeros(8, 40), torch.zeros(8, dtype=torch.int64)
    test = (x, y) if with_test else (None, None)
    return Splits(x, y, x, y, *test, np.arange(8), np.arange(8))


class FakeTrain:
    """Validation (and test) loss (log10(lr) + 2)^2 + 1/epoch; `during` runs at epoch 1."""

    def __init__(self, during=lambda config: None):
        self.configs, self.during = [], during

    def __call__(self, config, data, *, on_epoch=None, **kw):
        self.configs.append(config)
        history = []
        for epoch in range(1, config.epochs + 1):
            if epoch == 1:
                self.during(config)
            loss = (math.log10(getattr(config, "lr", 1e-2)) + 2) ** 2 + 1 / epoch
            history.append(EpochMetrics(epoch, loss, 0.5, loss, 0.5, loss, 0.5, None, 0.0))
            if on_epoch is not None:
                on_epoch(history[-1])
        return TrainResult(config, history, False, [])


def tune(study, monkeypatch, fake, trials, **kw):
    monkeypatch.setattr(tuning, "train", fake)
    tuning.tune(
        study,
        optimizer="adam",
        trials=trials,
        settings=SETTINGS,
        splits=splits(),
        seed=0,
        poll=0.02,
        **kw,
    )


def finished(study):
    return study.get_trials(deepcopy=False, states=FINISHED)


def new_study():
    return optuna.create_study(pruner=tuning.make_pruner(SETTINGS.epochs), direction="minimize")


def test_slot_counts_the_trials_before_that_did_not_fail():
    study = new_study()
    study.tell(study.ask(), 1.0)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.ask()  # running elsewhere
    study.enqueue_trial({"lr": 0.01})  # queued
    mine = study.ask()  # pops the queued one: its number is 3
    last = study.ask()
    assert mine.number == 3 and tuning.slot(study, mine) == 2
    assert tuning.slot(study, last) == 3


def test_a_worker_waits_for_the_budget_others_are_running(monkeypatch):
    study = new_study()
    tune(study, monkeypatch, FakeTrain(), trials=2)
    running = study.ask()
    running.set_user_attr(storage.WORKER_ATTR, REMOTE)
    finish = threading.Timer(0.3, lambda: study.tell(running, 0.5))
    finish.start()
    fake = FakeTrain()
    tune(study, monkeypatch, fake, trials=3)  # 2 finished + 1 running elsewhere: wait, no trial
    finish.join()
    assert fake.configs == [] and len(finished(study)) == 3 and len(study.trials) == 3


def test_a_trial_asked_beyond_the_budget_is_failed_unrun_and_marked(monkeypatch):
    study = new_study()
    tune(study, monkeypatch, FakeTrain(), trials=2)
    running = study.ask()
    running.set_user_attr(storage.WORKER_ATTR, REMOTE)
    study.enqueue_trial({"lr": 0.05})  # e.g. a retry queued while the budget is covered
    finish = threading.Timer(0.3, lambda: study.tell(running, 0.5))
    finish.start()
    fake = FakeTrain()
    tune(study, monkeypatch, fake, trials=3)
    finish.join()
    beyond = study.trials[3]
    assert beyond.state == TrialState.FAIL and beyond.user_attrs[storage.SURPLUS_ATTR] is True
    assert fake.configs == [] and len(finished(study)) == 3


def test_copies_still_queued_when_the_work_is_done_are_dropped(monkeypatch):
    """A copy whose place another trial took must not stay WAITING for ever."""
    study = new_study()
    tune(study, monkeypatch, FakeTrain(), trials=2)
    study.enqueue_trial({"lr": 0.05})
    fake = FakeTrain()
    tune(study, monkeypatch, fake, trials=2)
    assert fake.configs == [] and study.trials[2].state == TrialState.FAIL
    assert study.trials[2].user_attrs[storage.SURPLUS_ATTR] is True
    final = optuna.create_study()
    attrs = {"optimizer": "adam", "hyperparameters": {"lr": 0.01}, "tuning_trial": 0, "seed": 7}
    final.enqueue_trial({"seed": 7}, user_attrs=attrs)
    run_finals(final, monkeypatch, fake, seeds=[7])
    final.enqueue_trial({"seed": 7}, user_attrs=attrs)  # re-queued after it had finished
    run_finals(final, monkeypatch, fake, seeds=[7])
    assert [c.seed for c in fake.configs] == [7]
    assert [t.state for t in final.trials] == [TrialState.COMPLETE, TrialState.FAIL]


def run_finals(study, monkeypatch, fake, seeds):
    monkeypatch.setattr(finals, "train", fake)
    finals.run_finals(
        study,
        optimizer="adam",
        params={"lr": 0.01},
        tuning_trial=0,
        seeds=seeds,
        settings=SETTINGS,
        splits=splits(with_test=True),
        poll=0.02,
    )


def test_a_dead_local_workers_trial_is_rerun_with_its_parameters(monkeypatch):
    study = new_study()
    tune(study, monkeypatch, FakeTrain(), trials=2)
    dead_id = subprocess.run(
        [sys.executable, "-c", "from optimlab.storage import worker_id; print(worker_id())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    orphan = study.ask()
    lr = orphan.suggest_float("lr", 1e-4, 1e-1, log=True)
    orphan.set_user_attr(storage.WORKER_ATTR, dead_id)
    fake = FakeTrain()
    tune(study, monkeypatch, fake, trials=3)
    assert [c.lr for c in fake.configs] == [lr]  # the same configuration, run once more
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[3].system_attrs["failed_trial"] == orphan.number


def test_a_trial_failed_under_a_live_worker_is_left_to_its_copy(monkeypatch):
    """A worker whose heartbeat came too late finds its trial failed and re-queued: it drops
    it, runs the copy (here itself) and the budget stays exact."""
    study = new_study()
    taken = []

    def fail_under_me(config):
        if not taken:  # another worker declares this trial stale
            trial = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))[0]
            assert storage._fail(study, trial._trial_id)
            storage.requeue(study, study._storage.get_trial(trial._trial_id))
            taken.append(trial.number)

    fake = FakeTrain(during=fail_under_me)
    tune(study, monkeypatch, fake, trials=2)
    assert taken == [0] and study.trials[0].state == TrialState.FAIL
    assert len(finished(study)) == 2 and study.trials[1].system_attrs["failed_trial"] == 0
    assert study.trials[1].params == study.trials[0].params


def test_a_final_seed_queued_twice_runs_once(monkeypatch):
    """Two workers enqueueing the missing seeds at the same moment: the lowest copy runs."""
    study = optuna.create_study()
    attrs = {"optimizer": "adam", "hyperparameters": {"lr": 0.01}, "tuning_trial": 0}
    for seed in (1000, 1000, 1001):
        study.enqueue_trial({"seed": seed}, user_attrs={**attrs, "seed": seed})
    fake = FakeTrain()
    run_finals(study, monkeypatch, fake, seeds=[1000, 1001])
    assert sorted(c.seed for c in fake.configs) == [1000, 1001]
    duplicate = study.trials[1]
    assert duplicate.state == TrialState.FAIL and duplicate.user_attrs[storage.SURPLUS_ATTR]
    assert set(finals.final_trials(study, {"lr": 0.01})) == {1000, 1001}


def test_one_worker_proposes_what_it_would_have_without_a_crash(monkeypatch):
    whole = new_study()
    tune(whole, monkeypatch, FakeTrain(), trials=6)
    crashed = new_study()
    tune(crashed, monkeypatch, FakeTrain(), trials=3)
    crashed.tell(crashed.ask(), state=TrialState.FAIL)  # killed before it drew anything
    tune(crashed, monkeypatch, FakeTrain(), trials=6)
    ran = [t.params for t in crashed.trials if t.state != TrialState.FAIL]
    assert ran == [t.params for t in whole.trials]


def test_workers_are_seeded_apart(monkeypatch):
    first = {}
    for worker in (0, 1):
        study = new_study()
        tune(study, monkeypatch, FakeTrain(), trials=1, worker=worker)
        first[worker] = study.trials[0].params["lr"]
    assert first[0] != first[1]


def test_results_from_the_storage_leave_surplus_trials_out(tmp_path):
    """`optimlab report --storage`: the result files come from the storage, into a worker's
    run directory or a new one; trials asked beyond the budget appear nowhere."""
    import csv
    import json
    from dataclasses import replace

    from optimlab.cli import main
    from optimlab.errors import UsageError
    from optimlab.study import StudyConfig, run_study, tune_study_name

    config = StudyConfig(optimizers=["adam"], trials=2, epochs=1, seeds=1, study_name="x")
    run_study(config, tmp_path / "run", quiet=True)
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    study = optuna.load_study(study_name=tune_study_name("x", "adam"), storage=url)
    beyond = study.ask()
    beyond.set_user_attr(storage.SURPLUS_ATTR, True)
    study.tell(beyond, state=TrialState.FAIL)
    before = (tmp_path / "run" / "summary.json").read_text()
    assert main(["report", str(tmp_path / "run"), "--storage", url]) == 0
    assert main(["report", str(tmp_path / "new"), "--storage", url]) == 0
    for run in ("run", "new"):
        assert (tmp_path / run / "summary.json").read_text() == before
        with open(tmp_path / run / "trials.csv", newline="") as f:
            assert [r["number"] for r in csv.DictReader(f)] == ["0", "1"]
        assert (tmp_path / run / "report.html").is_file()
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["resolved"]["run_name"] == "x" and saved["config"]["optimizers"] == ["adam"]
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["report", str(tmp_path / "run"), "--storage", missing]) == 2
    assert not (tmp_path / "none.db").exists()  # reading never creates a store
    other_db = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(storage=other_db, study_name="unrelated")
    assert main(["report", str(tmp_path / "run"), "--storage", other_db]) == 2
    assert main(["report", str(tmp_path / "run"), "--study-name", "x"]) == 2
    other = StudyConfig(optimizers=["adam"], trials=3, epochs=1, seeds=1, study_name="x")
    with pytest.raises(UsageError, match="trials: 2 there, 3 here"):  # same name, other budget
        run_study(replace(other, storage=url), tmp_path / "other", quiet=True)


@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_an_ownerless_trial_from_before_this_command_is_reclaimed_at_once(
    tmp_path, monkeypatch, scheme
):
    """A kill between Optuna's ask and the owner mark leaves a RUNNING trial without owner: in
    a file store, one older than this command is a dead run's, reclaimed without waiting for
    the grace period (else a resumed run would ask past it and propose other points)."""
    suffix = "db" if scheme == "sqlite" else "journal"
    study = optuna.create_study(storage=storage.open_storage(f"{scheme}:///{tmp_path}/s.{suffix}"))
    orphan = study.ask()
    orphan.suggest_float("lr", 1e-4, 1e-1, log=True)
    started = study.trials[0].datetime_start
    monkeypatch.setattr(storage, "_command_started", started - datetime.timedelta(seconds=1))
    assert storage.reclaim_dead_trials(study, grace_period=3600) == 0  # asked by this command
    monkeypatch.setattr(storage, "_command_started", started + datetime.timedelta(seconds=1))
    assert storage.reclaim_dead_trials(study, grace_period=3600) == 1
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].params == study.trials[0].params


def test_an_ownerless_trial_on_a_server_waits_for_the_grace_period(monkeypatch):
    """On a shared server another machine may be between ask and owner mark: only the grace
    period reclaims it (an in-memory store stands in for the server here)."""
    study = optuna.create_study()
    study.ask()
    started = study.trials[0].datetime_start
    monkeypatch.setattr(storage, "_command_started", started + datetime.timedelta(seconds=1))
    assert storage.reclaim_dead_trials(study, grace_period=3600) == 0
