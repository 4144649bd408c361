"""Worker processes sharing one tuning study: exactly N finished trials in total, and a worker
killed mid-trial has that trial failed and run again by another, on a journal file (this
machine: the dead process is seen at once) and on PostgreSQL (another machine: only its
heartbeat stops). Also the real command with `--workers 2` on a journal file, which gives
the numbers of one worker.

Each worker is a separate process running this file as a script, with a synthetic training
that sleeps a little per epoch, so a worker can be killed in the middle of a trial.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

BUDGET = 12
EPOCHS = 3
EPOCH_SECONDS = 0.25
HEARTBEAT, GRACE = 1, 3  # seconds: a dead machine's trial is failed after about 3 s


def postgres_url() -> str:
    """The test server's URL; skip without one, except where CI requires it."""
    url = os.environ.get("OPTIMLAB_TEST_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("OPTIMLAB_REQUIRE_POSTGRES") or os.environ.get("CI"):
        pytest.fail("OPTIMLAB_TEST_POSTGRES_URL is unset: CI must run the PostgreSQL tests")
    pytest.skip("no PostgreSQL server: export OPTIMLAB_TEST_POSTGRES_URL=$(.ci/postgres.sh start)")


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "OPTIMLAB_STORAGE"}


@pytest.fixture(params=["journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    """(url, study name, kind): a fresh study on each storage kind, deleted afterwards."""
    name = f"scaleout-{uuid.uuid4().hex[:8]}"
    if request.param == "journal":
        yield f"journal:///{tmp_path}/study.journal", name, "journal"
        return
    url = postgres_url()
    yield url, name, "postgresql"
    from optimlab.storage import open_storage

    optuna.delete_study(study_name=name, storage=open_storage(url))


def start_worker(url: str, name: str, index: int, *, remote: bool = False) -> subprocess.Popen:
    args = [sys.executable, __file__, url, name, str(index), "remote" if remote else "local"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())


def test_three_workers_finish_exactly_the_budget_and_rerun_a_killed_workers_trial(store):
    from optimlab.storage import open_storage

    url, name, kind = store
    # On PostgreSQL the victim looks like another machine, so only its heartbeat can tell.
    victim = start_worker(url, name, 0, remote=kind == "postgresql")
    study = wait_for_study(url, name, victim)
    wait_until(lambda: owned_by(victim, study.get_trials(deepcopy=False)), victim)
    others = [start_worker(url, name, i) for i in (1, 2)]  # the victim has its first trial
    killed = []

    def kill_mid_trial() -> bool:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in owned_by(victim, running):
            if trial.intermediate_values:  # mid-trial: an epoch reported
                victim.send_signal(signal.SIGKILL)
                killed.append(trial.number)
                return True
        return False

    wait_until(kill_mid_trial, victim)
    killed = killed[0]
    victim.wait()
    for worker in others:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err.decode()[-2000:]
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == BUDGET  # in total, not per worker
    assert trials[killed].state == TrialState.FAIL
    reruns = [t for t in finished if t.system_attrs.get("failed_trial") == killed]
    assert len(reruns) == 1 and reruns[0].params == trials[killed].params
    assert f":{victim.pid}:" not in reruns[0].user_attrs["worker"]  # a survivor ran it
    assert len({t.params["lr"] for t in finished}) == BUDGET  # nothing ran twice
    assert len({t.user_attrs["worker"] for t in finished}) >= 2  # the survivors shared it
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    surplus = [t for t in trials if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.FAIL and not t.intermediate_values for t in surplus)


def owned_by(worker: subprocess.Popen, trials: list) -> list:
    return [t for t in trials if f":{worker.pid}:" in str(t.user_attrs.get("worker", ""))]


def wait_until(condition, worker: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert worker.poll() is None, worker.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def wait_for_study(url: str, name: str, worker: subprocess.Popen) -> optuna.Study:
    from optimlab.storage import open_storage

    storage = open_storage(url)
    deadline = time.monotonic() + 60
    while True:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            assert time.monotonic() < deadline and worker.poll() is None, "no study appeared"
            time.sleep(0.05)


def test_workers_option_gives_the_numbers_of_one_worker(tmp_path):
    """--workers 2 on a journal file: each tuning study is tuned by one worker at a time
    (the two studies by different processes), final runs are shared, and summary.json and
    every trial's value equal those of a run with one worker."""
    args = ["--optimizers", "adam,sgd", "--trials", "4", "--epochs", "2", "--seeds", "2"]
    outs = {n: tmp_path / f"workers{n}" for n in (1, 2)}
    for n, out in outs.items():
        proc = subprocess.run(
            [sys.executable, "-m", "optimlab", "mnist1d", *args, "--workers", str(n)]
            + ["--out", str(out)],
            capture_output=True,
            text=True,
            env=env(),
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    out = outs[2]
    assert (out / "study.journal").exists() and not (out / "study.db").exists()
    summaries = [(o / "summary.json").read_text() for o in outs.values()]
    assert summaries[0] == summaries[1]
    values = []
    for o in outs.values():
        with open(o / "trials.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        values.append(sorted((r["optimizer"], r["number"], r["state"], r["value"]) for r in rows))
    assert values[0] == values[1] and len(values[0]) == 8
    from optimlab.storage import open_storage

    storage = open_storage(f"journal:///{out}/study.journal")
    tuners = {}
    for name in optuna.get_all_study_names(storage):
        trials = optuna.load_study(study_name=name, storage=storage).trials
        pids = {t.user_attrs["worker"].split(":")[1] for t in trials}
        if name.endswith("-tune"):
            assert len(pids) == 1  # one worker at a time: here one for the whole study
            tuners[name] = pids.pop()
    assert len(set(tuners.values())) == 2  # the two studies were tuned in parallel


def _worker(url: str, name: str, index: int, remote: bool) -> None:
    """A tuning worker with synthetic training (this file run as a script)."""
    import numpy as np
    import torch

    from optimlab import storage, tuning
    from optimlab.mnist1d.data import Splits
    from optimlab.mnist1d.train import EpochMetrics, TrainResult

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if remote:  # pretend to run on another host: no pid check can reclaim our trials
        tuning.worker_id = lambda: f"other-host:{os.getpid()}:0"

    def train(config, data, *, on_epoch=None, **kw):
        history = []
        for epoch in range(1, config.epochs + 1):
            time.sleep(EPOCH_SECONDS)
            loss = (math.log10(config.lr) + 2) ** 2 + 1 / epoch
            history.append(EpochMetrics(epoch, loss, 0.5, loss, 0.5, None, None, None, 0.0))
            on_epoch(history[-1])
        return TrainResult(config, history, False, [])

    tuning.train = train
    x, y = torch.zeros(8, 40), torch.zeros(8, dtype=torch.int64)
    splits = Splits(x, y, x, y, None, None, np.arange(8), np.arange(8))
    settings = tuning.TrainSettings(EPOCHS, 100, "mlp", None, "cpu")
    study = optuna.create_study(
        storage=storage.open_storage(url, heartbeat_interval=HEARTBEAT, grace_period=GRACE),
        study_name=name,
        pruner=tuning.make_pruner(EPOCHS),
        direction="minimize",
        load_if_exists=True,
    )
    tuning.tune(
        study,
        optimizer="adam",
        trials=BUDGET,
        settings=settings,
        splits=splits,
        seed=0,
        worker=index,
        poll=0.1,
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "remote")
