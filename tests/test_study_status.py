"""`optimlab status`: each study's progress, counted from the storage itself."""

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from optimlab.cli import main
from optimlab.storage import open_storage


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="exp-adam-tune")
    for value in (0.5, 0.25):
        trial = study.ask()
        study.tell(trial, value)
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.ask()  # left running
    other = optuna.create_study(storage=storage, study_name="exp-adam-final")
    other.enqueue_trial({"seed": 1})
    return tmp_path, url


def test_status_counts_states_and_best_value(store, capsys):
    run_dir, url = store
    assert main(["status", "--storage", url]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "exp-adam-tune" in line)
    cells = [c.strip() for c in line.strip("│┃ ").split("│")]
    assert cells == ["exp-adam-tune", "2", "1", "1", "0", "1", "0.2500"]
    final = next(line for line in out.splitlines() if "exp-adam-final" in line)
    assert [c.strip() for c in final.strip("│┃ ").split("│")][1:] == ["0", "0", "0", "1", "0", "-"]
    assert main(["status", str(run_dir)]) == 0  # a run directory: its embedded store
    assert "exp-adam-tune" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args", [["--storage", "sqlite:///missing.db"], ["--storage", "ftp://u:pw@h/x"], ["nowhere"]]
)
def test_status_errors_are_one_line_exit_2(args, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "optimlab", "status", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "pw" not in proc.stderr
    assert not (tmp_path / "missing.db").exists()  # status never creates a storage


def test_status_takes_the_storage_from_the_environment(store, capsys, monkeypatch):
    _, url = store
    monkeypatch.setenv("OPTIMLAB_STORAGE", url)
    assert main(["status"]) == 0
    assert "exp-adam-tune" in capsys.readouterr().out


def test_status_without_a_storage_is_a_usage_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPTIMLAB_STORAGE"}
    proc = subprocess.run(
        [sys.executable, "-m", "optimlab", "status"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "OPTIMLAB_STORAGE" in proc.stderr


def test_surplus_trials_are_not_counted_as_failures(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(storage=open_storage(url), study_name="exp-sgd-tune")
    study.tell(study.ask(), 1.0)
    beyond = study.ask()
    beyond.set_user_attr("surplus", True)  # asked by a worker once the budget was covered
    study.tell(beyond, state=TrialState.FAIL)
    assert main(["status", "--storage", url]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "exp-sgd-tune" in x)
    assert [c.strip() for c in line.strip("│┃ ").split("│")][1:6] == ["1", "0", "0", "0", "0"]
