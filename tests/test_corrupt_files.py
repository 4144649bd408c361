"""Damaged files: storages, the data cache, checkpoints and result files. Each is either
repaired safely (a journal record cut short by a kill, a bad cache) or refused with one line
that names the file and says what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest

from optimlab.cli import main
from optimlab.errors import RunError
from optimlab.mnist1d import data as data_module
from optimlab.storage import open_storage
from optimlab.study import StudyConfig, prepare_run_dir

optuna.logging.set_verbosity(optuna.logging.WARNING)
TINY = ["--optimizers", "adam", "--trials", "1", "--epochs", "1", "--seeds", "1"]


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def journal_with_trials(path: Path, n: int) -> str:
    url = f"journal:///{path}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return url


def complete(url: str) -> int:
    study = optuna.load_study(storage=open_storage(url), study_name="s")
    return sum(t.state.name == "COMPLETE" for t in study.trials)


# --- storages -------------------------------------------------------------------------------


def test_a_journal_record_cut_short_by_a_kill_is_dropped_and_the_journal_stays_usable(
    tmp_path, capsys
):
    path = tmp_path / "study.journal"
    url = journal_with_trials(path, 3)
    path.write_bytes(path.read_bytes()[:-20])  # the last record lost its end
    assert complete(url) == 2  # the trial whose completion was cut is not complete
    assert "incomplete last record" in capsys.readouterr().err
    assert path.read_bytes().endswith(b"\n")
    # Appending after the repair must not glue onto a partial line (Optuna alone would: the
    # next process then fails on the merged line).
    study = optuna.load_study(storage=open_storage(url), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert complete(url) == 4
    for line in path.read_bytes().splitlines():
        json.loads(line)


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda b: b + b"\x00\x01 not a record\n", "last record"),
        (lambda b: b + b'{"no_op_code": 1}\n', "last record"),
        (lambda b: b"garbage\n" + b, "damaged"),
        (lambda b: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "damaged"),
    ],
    ids=["garbage-last", "wrong-shape-last", "garbage-first", "binary"],
)
def test_a_damaged_journal_is_refused_with_one_line(tmp_path, damage, says):
    path = tmp_path / "study.journal"
    url = journal_with_trials(path, 2)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(RunError, match=says) as info:
        open_storage(url)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "start the study again" in message


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_sqlite_file_is_refused_with_one_line(tmp_path, damage):
    path = tmp_path / "study.db"
    url = f"sqlite:///{path}"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=10)
    storage.engine.dispose()  # the last connection merges the WAL into the file
    assert not Path(f"{path}-wal").exists()
    data = path.read_bytes()
    path.write_bytes(b"not a database " * 100 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(RunError, match="damaged or not an SQLite database") as info:
        open_storage(url)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_failed_storage_leaves_no_config_behind_so_the_corrected_rerun_works(tmp_path):
    run_dir = tmp_path / "run"
    down = StudyConfig(optimizers=["adam"], storage="postgresql://u:pw@127.0.0.1:1/db")
    with pytest.raises(RunError, match="cannot open storage"):
        prepare_run_dir(down, run_dir)
    assert not run_dir.exists()
    (tmp_path / "bad.db").write_bytes(b"garbage" * 100)
    with pytest.raises(RunError, match="damaged"):
        prepare_run_dir(StudyConfig(storage=f"sqlite:///{tmp_path}/bad.db"), run_dir)
    assert not run_dir.exists()
    fixed = StudyConfig(optimizers=["adam"], storage=f"journal:///{tmp_path}/s.journal")
    prepare_run_dir(fixed, run_dir)  # no "different config"
    assert json.loads((run_dir / "config.json").read_text())["config"]["storage"] == fixed.storage


def test_the_cli_rerun_with_a_corrected_storage_runs(tmp_path, capsys):
    out = tmp_path / "run"
    pg = "postgresql://u:pw@127.0.0.1:1/db"
    assert run_main(["mnist1d", *TINY, "--storage", pg, "--out", str(out)]) == 1
    assert "cannot open storage" in one_line(capsys.readouterr().err)
    journal = f"journal:///{tmp_path}/s.journal"
    assert run_main(["mnist1d", *TINY, "--storage", journal, "--out", str(out)]) == 0
    assert (out / "report.md").is_file()


def test_resuming_a_run_whose_embedded_store_is_damaged_fails_at_once(tmp_path, capsys):
    config = StudyConfig(optimizers=["adam"], trials=1, epochs=1, seeds=1)
    prepare_run_dir(config, tmp_path / "run")
    (tmp_path / "run" / "study.db").write_bytes(b"\x00" * 4096)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert run_main(["mnist1d", *TINY, "--out", str(tmp_path / "run")]) == 1
    assert "study.db" in one_line(capsys.readouterr().err)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


# --- the data cache -------------------------------------------------------------------------


def fake_arrays(value: float) -> dict[str, np.ndarray]:
    arrays = {
        n: np.full(s, value, dtype=data_module.DTYPES[n]) for n, s in data_module.SHAPES.items()
    }
    arrays["y"][:] = np.arange(4000) % 10
    return arrays


@pytest.mark.parametrize("damage", ["truncated", "garbage", "checksum"])
def test_a_damaged_cache_is_regenerated_with_a_notice(tmp_path, monkeypatch, capsys, damage):
    monkeypatch.setattr(data_module, "generate_mnist1d", lambda: fake_arrays(1.0))
    data_module.load_mnist1d(tmp_path)
    assert capsys.readouterr().err == ""  # a first cache is no news
    path = tmp_path / data_module.CACHE_NAME
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"PK\x03\x04 garbage")
    else:
        np.savez(path, **fake_arrays(2.0), sha256=np.array("0" * 64))
    monkeypatch.setattr(data_module, "generate_mnist1d", lambda: fake_arrays(3.0))
    assert (data_module.load_mnist1d(tmp_path)["x"] == 3.0).all()
    notice = one_line(capsys.readouterr().err)
    assert str(path) in notice and "regenerating" in notice


def test_an_unwritable_cache_costs_only_the_regeneration(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data_module, "generate_mnist1d", lambda: fake_arrays(1.0))
    (tmp_path / "file").write_text("in the way")
    arrays = data_module.load_mnist1d(tmp_path / "file" / "cache")
    assert (arrays["x"] == 1.0).all()
    assert "cannot cache" in one_line(capsys.readouterr().err)


# --- checkpoints ----------------------------------------------------------------------------

TRAIN = ["train", "--optimizer", "adam", "--lr", "0.01", "--epochs", "1", "--json"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_is_refused_with_one_line(tmp_path, monkeypatch, capsys, damage):
    monkeypatch.setattr(data_module, "generate_mnist1d", lambda: fake_arrays(0.5))
    monkeypatch.setenv("OPTIMLAB_CACHE", str(tmp_path / "cache"))
    checkpoint = tmp_path / "run.pt"
    assert run_main([*TRAIN, "--checkpoint", str(checkpoint)]) == 0
    capsys.readouterr()
    data = checkpoint.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": b"\x80\x04garbage", "empty": b""}
    checkpoint.write_bytes(damaged[damage])
    assert run_main([*TRAIN, "--epochs", "2", "--checkpoint", str(checkpoint)]) == 1
    captured = capsys.readouterr()
    assert str(checkpoint) in one_line(captured.err) and captured.out == ""
    assert checkpoint.read_bytes() == damaged[damage]  # left for the user to inspect


# --- result files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_main(["mnist1d", *TINY, "--out", str(out)]) == 0
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _set_json(name: str, value) -> callable:
    return lambda run: (run / name).write_text(json.dumps(value))


def _edit_summary(edit) -> callable:
    def apply(run: Path) -> None:
        summary = json.loads((run / "summary.json").read_text())
        edit(summary)
        (run / "summary.json").write_text(json.dumps(summary))

    return apply


RESULT_DAMAGE = {
    "summary truncated": (lambda run: _truncate(run / "summary.json"), "summary.json"),
    "summary a list": (_set_json("summary.json", [1, 2, 3]), "summary.json"),
    "summary no key": (_set_json("summary.json", {"run_name": "x"}), "summary.json"),
    "summary wrong shape": (
        _edit_summary(lambda s: s["optimizers"].update(adam={"finals": 1})),
        "do not fit together",
    ),
    "config garbage": (lambda run: (run / "config.json").write_bytes(b"\xff\xfe"), "config.json"),
    "timings wrong type": (_set_json("timings.json", "fast"), "timings.json"),
    "trials garbage": (
        lambda run: (run / "trials.csv").write_bytes(b"\x00\x01\x02,\n\xff"),
        "trials.csv",
    ),
    "finals no column": (
        lambda run: (run / "finals.csv").write_text("optimizer,seed\nadam,1000\n"),
        "finals.csv",
    ),
    "curves ragged": (
        lambda run: (run / "curves.csv").write_text(
            (run / "curves.csv").read_text() + "adam,1000,1,2,3,4,5,6,7,8,9,10,11,12,13\n"
        ),
        "curves.csv",
    ),
    "curves truncated": (lambda run: _truncate(run / "curves.csv"), "curves.csv"),
}


@pytest.mark.parametrize("name", sorted(RESULT_DAMAGE))
def test_damaged_result_files_are_named_with_the_way_out(finished_run, tmp_path, capsys, name):
    damage, says = RESULT_DAMAGE[name]
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    damage(run)
    reports = {n: (run / n).read_bytes() for n in ("report.md", "report.html")}
    assert run_main(["report", str(run)]) == 1
    line = one_line(capsys.readouterr().err)
    assert says in line and "optimlab report --storage" in line
    assert {n: (run / n).read_bytes() for n in reports} == reports  # no half-new report


def test_an_intact_run_redraws(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert run_main(["report", str(run)]) == 0
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def surfaces_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("surfaces") / "run"
    argv = ["surfaces", "--functions", "sphere", "--optimizers", "adam", "--steps", "5"]
    assert run_main([*argv, "--starts", "1", "--no-tune", "--out", str(out)]) == 0
    return out


SURFACES_DAMAGE = {
    "run.json truncated": (lambda run: _truncate(run / "run.json"), "run.json is damaged"),
    "run.json wrong shape": (_set_json("run.json", {"a": 1}), "are damaged"),
    "trajectories truncated": (lambda run: _truncate(run / "trajectories.npz"), "are damaged"),
}


@pytest.mark.parametrize("name", sorted(SURFACES_DAMAGE))
def test_damaged_surfaces_files_say_to_rerun_surfaces(surfaces_run, tmp_path, capsys, name):
    damage, says = SURFACES_DAMAGE[name]
    run = tmp_path / "run"
    shutil.copytree(surfaces_run, run)
    damage(run)
    capsys.readouterr()
    assert run_main(["report", str(run)]) == 1
    line = one_line(capsys.readouterr().err)
    assert says in line and "optimlab surfaces" in line and "--storage" not in line
