"""`optimlab status`: each study's progress, counted from the storage itself."""

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
