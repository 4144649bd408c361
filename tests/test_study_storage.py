"""Storage URLs: accepted schemes, masked passwords, embedded stores, dead workers' trials."""

import subprocess
import sys
import threading

import optuna
import pytest
from optuna.trial import TrialState

from optimlab import storage
from optimlab.errors import RunError, UsageError

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(
    "url, kind",
    [
        ("sqlite:///study.db", "sqlite"),
        ("sqlite:////tmp/abs.db", "sqlite"),
        ("journal:///runs/x/study.journal", "journal"),
        ("postgresql://user:pw@host:5432/db", "postgresql"),
        ("postgresql+psycopg2://user@host/db", "postgresql"),
    ],
)
def test_accepted_schemes(url, kind):
    assert storage.scheme_of(url) == kind


@pytest.mark.parametrize(
    "url",
    ["mysql://u:secret@h/db", "redis://h", "study.db", "sqlite://", "journal:///", "http://x"],
)
def test_other_schemes_are_one_line_usage_errors_without_password(url):
    with pytest.raises(UsageError) as exc:
        storage.scheme_of(url)
    message = str(exc.value)
    assert "\n" not in message and "secret" not in message


def test_mask_url():
    assert storage.mask_url("postgresql://me:s3cr%40t@h:5432/db") == "postgresql://me:***@h:5432/db"
    assert storage.mask_url("postgresql://h/db?user=me&password=pw") == (
        "postgresql://h/db?user=me&password=***"
    )
    assert storage.mask_url("postgresql://me@h/db") == "postgresql://me@h/db"
    assert storage.mask_url("sqlite:///a/b.db") == "sqlite:///a/b.db"


def test_file_path_follows_sqlalchemy_convention():
    assert str(storage.file_path("sqlite:///rel/x.db")) == "rel/x.db"
    assert str(storage.file_path("journal:////abs/x.log")) == "/abs/x.log"
    assert storage.file_path("postgresql://h/db") is None


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_embedded_stores_persist_trials(tmp_path, kind):
    url = f"{kind}:///{tmp_path}/store"
    study = optuna.create_study(storage=storage.open_storage(url), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(storage=storage.open_storage(url), study_name="s")
    assert [t.value for t in again.trials] == [t.value for t in study.trials]


def test_default_store():
    assert storage.default_url("/r", processes=1) == "sqlite:////r/study.db"
    assert storage.default_url("/r", processes=2) == "journal:////r/study.journal"


def test_a_killed_journal_writer_leaves_no_lock_behind(tmp_path):
    """The kernel frees the flock of a dead holder: the next writer does not wait."""
    journal = tmp_path / "study.journal"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(journal)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    lock, acquired = storage.JournalLock(journal), threading.Event()
    threading.Thread(target=lambda: (lock.acquire(), acquired.set()), daemon=True).start()
    assert not acquired.wait(0.5)  # held by the other process
    holder.kill()
    holder.wait()
    assert acquired.wait(5.0)
    lock.release()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from optimlab.storage import JournalLock
JournalLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_unreachable_server_error_never_shows_the_password():
    url = "postgresql://me:hunter2@127.0.0.1:1/db?connect_timeout=2"
    with pytest.raises(RunError) as exc:
        storage.open_storage(url)
    message = str(exc.value)
    assert "hunter2" not in message and "me:***@127.0.0.1" in message and "\n" not in message


def test_trials_of_dead_processes_are_failed_and_queued_again(tmp_path):
    study = optuna.create_study(storage=storage.open_storage(f"sqlite:///{tmp_path}/s.db"))
    dead_id = subprocess.run(
        [sys.executable, "-c", "from optimlab.storage import worker_id; print(worker_id())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dead = study.ask()
    dead.suggest_float("x", 0, 1)
    dead.set_user_attr(storage.WORKER_ATTR, dead_id)
    alive = study.ask()
    alive.set_user_attr(storage.WORKER_ATTR, storage.worker_id())
    elsewhere = study.ask()
    elsewhere.set_user_attr(storage.WORKER_ATTR, "another-host:1:1")
    assert storage.reclaim_dead_trials(study) == 1
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING, TrialState.WAITING]
    copy = trials[3]  # Optuna's retry copy: same parameters, and no longer the dead owner's
    assert copy.params == trials[0].params and copy.system_attrs["failed_trial"] == 0
    assert storage.WORKER_ATTR not in copy.user_attrs
    assert storage.reclaim_dead_trials(study) == 0  # failed once, queued once


def test_a_trial_that_never_got_an_owner_is_reclaimed_after_the_grace_period():
    study = optuna.create_study()
    study.ask()  # a worker killed between asking and recording itself
    assert storage.reclaim_dead_trials(study, grace_period=60) == 0
    assert storage.reclaim_dead_trials(study, grace_period=0) == 1
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_url_from_the_environment(monkeypatch):
    monkeypatch.delenv(storage.ENV_VAR, raising=False)
    assert storage.url_or_env(None) is None
    monkeypatch.setenv(storage.ENV_VAR, "postgresql://me:pw@h/db")
    assert storage.url_or_env(None) == "postgresql://me:pw@h/db"
    assert storage.url_or_env("sqlite:///x.db") == "sqlite:///x.db"  # --storage wins
    monkeypatch.setenv(storage.ENV_VAR, "mysql://me:hunter2@h/db")
    with pytest.raises(UsageError, match="OPTIMLAB_STORAGE") as exc:
        storage.url_or_env(None)
    assert "hunter2" not in str(exc.value)
