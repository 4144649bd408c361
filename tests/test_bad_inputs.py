"""Bad input across every command: one line on stderr, exit 2 (usage) or 1 (runtime), no
traceback, no partial output (the working directory is unchanged afterwards)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from optimlab.cli import main
from optimlab.study import StudyConfig

SECRET = "s3cret-pw"
PG_DOWN = f"postgresql://u:{SECRET}@127.0.0.1:1/db"  # nothing listens on port 1
# without the postgres extra the driver is missing, and saying so is the right one line
PG_DOWN_SAYS = (
    "server is up" if importlib.util.find_spec("psycopg2") else "install optimlab[postgres]"
)
MNIST = ["mnist1d", "--optimizers", "adam", "--trials", "1", "--epochs", "1", "--seeds", "1"]
SURF = ["surfaces", "--functions", "sphere", "--optimizers", "adam", "--steps", "5"]
SURF += ["--starts", "1", "--no-tune"]
TRAIN = ["train", "--optimizer", "adam", "--lr", "0.01", "--epochs", "1"]


@dataclass
class Case:
    argv: list[str]  # {tmp} stands for the test's directory
    code: int
    says: str  # a fragment of the message


CASES = {
    # mnist1d: numbers, names, storage, output directory, conflicts
    "mnist1d trials 0": Case([*MNIST, "--trials", "0"], 2, "--trials"),
    "mnist1d epochs 0": Case([*MNIST, "--epochs", "0"], 2, "--epochs"),
    "mnist1d seeds 0": Case([*MNIST, "--seeds", "0"], 2, "--seeds"),
    "mnist1d batch 0": Case([*MNIST, "--batch-size", "0"], 2, "--batch-size"),
    "mnist1d val 1": Case([*MNIST, "--val-fraction", "1"], 2, "--val-fraction"),
    "mnist1d val -0.1": Case([*MNIST, "--val-fraction", "-0.1"], 2, "--val-fraction"),
    "mnist1d val 0": Case([*MNIST, "--val-fraction", "0"], 2, "--val-fraction"),
    "mnist1d optimizer": Case([*MNIST, "--optimizers", "adam,lion"], 2, "lion"),
    "mnist1d model": Case([*MNIST, "--model", "resnet"], 2, "--model"),
    "mnist1d meta": Case([*MNIST, "--meta-source", "test"], 2, "--meta-source"),
    "mnist1d seed -1": Case([*MNIST, "--seed", "-1"], 2, "--seed"),
    "mnist1d workers": Case([*MNIST, "--workers", "0"], 2, "--workers"),
    "mnist1d scheme": Case([*MNIST, "--storage", f"mysql://u:{SECRET}@h/db"], 2, "unsupported"),
    "mnist1d no file": Case([*MNIST, "--storage", "sqlite:///"], 2, "names no file"),
    "mnist1d pg down": Case([*MNIST, "--storage", PG_DOWN], 1, PG_DOWN_SAYS),
    "mnist1d bad db": Case([*MNIST, "--storage", "sqlite:///{tmp}/bad.db"], 1, "damaged"),
    "mnist1d bad journal": Case(
        [*MNIST, "--storage", "journal:///{tmp}/bad.journal"], 1, "bad.journal is damaged"
    ),
    "mnist1d out under file": Case([*MNIST, "--out", "{tmp}/file/run"], 2, "not writable"),
    "mnist1d out in /proc": Case([*MNIST, "--out", "/proc/optimlab-run"], 2, "not writable"),
    "mnist1d out not empty": Case([*MNIST, "--out", "{tmp}/full"], 2, "not an empty directory"),
    "mnist1d other config": Case([*MNIST, "--out", "{tmp}/other"], 2, "different config"),
    "mnist1d damaged config": Case([*MNIST, "--out", "{tmp}/damaged"], 2, "not a study config"),
    "mnist1d resume bad db": Case([*MNIST, "--out", "{tmp}/resume"], 1, "damaged"),
    "mnist1d sqlite workers": Case(
        [*MNIST, "--workers", "2", "--storage", "sqlite:///{tmp}/s.db"], 2, "SQLite"
    ),
    "mnist1d heartbeat": Case(
        [*MNIST, "--grace-period", "1", "--heartbeat-interval", "2"], 2, "grace_period"
    ),
    # surfaces
    "surfaces steps 0": Case([*SURF, "--steps", "0"], 2, "--steps"),
    "surfaces starts 0": Case([*SURF, "--starts", "0"], 2, "--starts"),
    "surfaces tune starts 0": Case([*SURF, "--tune-starts", "0"], 2, "--tune-starts"),
    "surfaces noise": Case([*SURF, "--noise", "-1"], 2, "--noise"),
    "surfaces lr 0": Case([*SURF, "--lr", "0"], 2, "--lr"),
    "surfaces lr nan": Case([*SURF, "--lr", "nan"], 2, "--lr"),
    "surfaces function": Case([*SURF, "--functions", "sphere,nosuch"], 2, "nosuch"),
    "surfaces optimizer": Case([*SURF, "--optimizers", "lion"], 2, "lion"),
    "surfaces lr tuned": Case([*SURF[:-1], "--lr", "0.1"], 2, "--no-tune"),
    "surfaces tune conflict": Case([*SURF, "--tune-trials", "3"], 2, "--no-tune"),
    "surfaces out is file": Case([*SURF, "--out", "{tmp}/file"], 2, "not a directory"),
    "surfaces out in /proc": Case([*SURF, "--out", "/proc/optimlab-s"], 2, "not writable"),
    # train
    "train lr 0": Case([*TRAIN, "--lr", "0"], 2, "--lr"),
    "train lr -1": Case([*TRAIN, "--lr", "-1"], 2, "--lr"),
    "train gate lr": Case([*TRAIN, "--gate-lr", "-0.1"], 2, "--gate-lr"),
    "train epochs 0": Case([*TRAIN, "--epochs", "0"], 2, "--epochs"),
    "train batch 0": Case([*TRAIN, "--batch-size", "0"], 2, "--batch-size"),
    "train val 1": Case([*TRAIN, "--val-fraction", "1.0"], 2, "--val-fraction"),
    "train optimizer": Case([*TRAIN, "--optimizer", "lion"], 2, "--optimizer"),
    "train model": Case([*TRAIN, "--model", "resnet"], 2, "--model"),
    "train meta": Case([*TRAIN, "--meta-source", "test"], 2, "--meta-source"),
    "train checkpoint garbage": Case([*TRAIN, "--checkpoint", "{tmp}/file"], 1, "checkpoint"),
    "train checkpoint dir": Case([*TRAIN, "--checkpoint", "{tmp}/full"], 2, "directory"),
    "train cache under file": Case([*TRAIN, "--cache-dir", "{tmp}/file/c"], 2, "cache"),
    # run
    "run scheme": Case(["run", "--storage", "foo://x", "--out", "{tmp}/r"], 2, "unsupported"),
    "run seed": Case(["run", "--seed", "-1", "--out", "{tmp}/r"], 2, "--seed"),
    "run pg down": Case(["run", "--storage", PG_DOWN, "--out", "{tmp}/r"], 1, PG_DOWN_SAYS),
    "run sqlite workers": Case(
        ["run", "--workers", "2", "--storage", "sqlite:///{tmp}/s.db", "--out", "{tmp}/r"],
        2,
        "SQLite",
    ),
    # report
    "report missing dir": Case(["report", "{tmp}/nowhere"], 2, "not a directory"),
    "report empty dir": Case(["report", "{tmp}/empty"], 2, "no optimlab results"),
    "report damaged summary": Case(["report", "{tmp}/results"], 1, "summary.json is damaged"),
    "report name alone": Case(["report", "{tmp}/empty", "--study-name", "x"], 2, "--storage"),
    "report bad db": Case(["report", "{tmp}/new", "--storage", "sqlite:///{tmp}/bad.db"], 1, "db"),
    "report no db": Case(["report", "{tmp}/new", "--storage", "sqlite:///{tmp}/no.db"], 2, "no."),
    "report pg down": Case(["report", "{tmp}/new", "--storage", PG_DOWN], 1, PG_DOWN_SAYS),
    # status
    "status bad db": Case(["status", "--storage", "sqlite:///{tmp}/bad.db"], 1, "damaged"),
    "status bad journal": Case(["status", "--storage", "journal:///{tmp}/bad.journal"], 1, "jou"),
    "status pg down": Case(["status", "--storage", PG_DOWN], 1, PG_DOWN_SAYS),
    "status scheme": Case(["status", "--storage", "foo://x"], 2, "unsupported"),
    "status no db": Case(["status", "--storage", "sqlite:///{tmp}/no.db"], 2, "no storage file"),
    "status empty dir": Case(["status", "{tmp}/empty"], 2, "no study storage"),
    "status damaged config": Case(["status", "{tmp}/damaged"], 2, "not a study config"),
    "status nothing": Case(["status"], 2, "--storage"),
}


def workspace(tmp: Path) -> None:
    """The files the cases point at: damaged stores, a file in the way, run directories."""
    (tmp / "bad.db").write_bytes(b"this is not an SQLite database\n" * 50)
    (tmp / "bad.journal").write_bytes(b'{"op_code": 0}\n\x00\x01 garbage\n')
    (tmp / "file").write_bytes(b"not a directory, not a checkpoint")
    (tmp / "empty").mkdir()
    (tmp / "full").mkdir()
    (tmp / "full" / "notes.txt").write_text("someone else's\n")
    other = StudyConfig(optimizers=["adam"], trials=1, epochs=2, seeds=1)
    (tmp / "other").mkdir()
    (tmp / "other" / "config.json").write_text(json.dumps({"config": other.to_dict()}))
    (tmp / "damaged").mkdir()
    (tmp / "damaged" / "config.json").write_text('{"config": [1, 2')
    same = StudyConfig(optimizers=["adam"], trials=1, epochs=1, seeds=1)
    (tmp / "resume").mkdir()
    (tmp / "resume" / "config.json").write_text(json.dumps({"config": same.to_dict()}))
    (tmp / "resume" / "study.db").write_bytes(b"\x00garbage" * 100)
    results = tmp / "results"
    results.mkdir()
    for name in ("config.json", "trials.csv", "finals.csv", "curves.csv"):
        (results / name).write_text('{"config": {}}' if name.endswith(".json") else "optimizer\n")
    (results / "summary.json").write_text('{"run_name": "mnist1d-0123", "claim": {')


def listing(root: Path) -> dict[str, str]:
    """Every path under `root` with a digest of its content ("dir" for directories)."""
    return {
        str(p.relative_to(root)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors
        return int(exc.code)


def check(case: Case, code: int, out: str, err: str, before: dict, after: dict) -> None:
    assert code == case.code, err
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("optimlab "), lines[0]
    assert case.says in lines[0], lines[0]
    assert SECRET not in err + out
    added = {k: v for k, v in after.items() if before.get(k) != v}
    assert not added, f"partial output: {sorted(added)}"
    assert set(before) <= set(after), "a file was removed"


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPTIMLAB_STORAGE", raising=False)
    workspace(tmp_path)
    return tmp_path


def test_the_table_covers_every_command():
    assert len(CASES) >= 30
    commands = {case.argv[0] for case in CASES.values()}
    assert commands == {"mnist1d", "surfaces", "run", "train", "report", "status"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_in_process(name, tmp, capsys):
    case = CASES[name]
    argv = [a.replace("{tmp}", str(tmp)) for a in case.argv]
    before = listing(tmp)
    code = run_main(argv)
    captured = capsys.readouterr()
    check(case, code, captured.out, captured.err, before, listing(tmp))


END_TO_END = [
    "mnist1d pg down",
    "mnist1d bad journal",
    "mnist1d out under file",
    "surfaces noise",
    "train checkpoint garbage",
    "report damaged summary",
    "status bad db",
]


@pytest.mark.parametrize("name", END_TO_END)
def test_bad_input_end_to_end(name, tmp):
    case = CASES[name]
    argv = [a.replace("{tmp}", str(tmp)) for a in case.argv]
    before = listing(tmp)
    proc = subprocess.run(
        [sys.executable, "-m", "optimlab", *argv],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=120,
    )
    check(case, proc.returncode, proc.stdout, proc.stderr, before, listing(tmp))


def test_debug_shows_the_traceback(tmp, capsys):
    argv = ["--debug", "status", "--storage", f"sqlite:///{tmp}/bad.db"]
    assert run_main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("optimlab status")


def test_a_file_system_error_mid_run_is_one_line(tmp, capsys, monkeypatch):
    import errno

    from optimlab import study_status

    def full(url):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "study.db"))

    monkeypatch.setattr(study_status, "study_rows", full)
    assert run_main(["status", "--storage", f"sqlite:///{tmp}/bad.db"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "No space left on device" in err and "study.db" in err


def test_a_pickle_that_is_no_checkpoint_is_one_line_without_unsafe_advice(tmp):
    import pickle

    (tmp / "legacy.pt").write_bytes(pickle.dumps({"format": 1}, protocol=4))
    proc = subprocess.run(
        [sys.executable, "-m", "optimlab", *TRAIN, "--checkpoint", str(tmp / "legacy.pt")],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=120,
    )
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "weights_only" not in proc.stderr
