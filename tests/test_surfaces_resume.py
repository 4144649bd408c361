"""`optimlab surfaces --out DIR`: a rerun resumes an interrupted run and gives the files of an
uninterrupted one; a different config or a foreign directory is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from optimlab.cli import main
from optimlab.errors import UsageError
from optimlab.surfaces import bench, output, plots

# 6 trials: two tuning rounds of 3 (TPE's random start-up, then one TPE round).
TINY = ["--functions", "sphere,booth", "--optimizers", "adam,sgd", "--steps", "30",
        "--starts", "3", "--tune-trials", "6", "--tune-starts", "2"]  # fmt: skip
FILES = ["summary.csv", "summary.json", "summary.md", "tuning.json", "config.toml"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("surfaces") / "whole"
    assert main(["surfaces", *TINY, "--out", str(out)]) == 0
    return out


def assert_same_results(a, b):
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    runs = [json.loads((d / "run.json").read_text()) for d in (a, b)]
    assert [{k: v for k, v in r.items() if k != "timings"} for r in runs] == [
        {k: v for k, v in runs[0].items() if k != "timings"}
    ] * 2
    with np.load(a / "trajectories.npz") as x, np.load(b / "trajectories.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for key in x.files:
            assert np.array_equal(x[key], y[key], equal_nan=True), key
    for name in ["sphere.png", "booth.gif", "convergence.png"]:
        assert (b / name).stat().st_size > 1000


class Interrupted(Exception):
    pass


def interrupt_call(monkeypatch, n):
    """Make the n-th batched run (tuning rounds, then evaluation) raise; count the calls."""
    calls = []
    real = bench.run

    def counting(*args, **kwargs):
        calls.append(kwargs.get("record", True))
        if len(calls) == n:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "run", counting)
    return calls


@pytest.mark.parametrize(
    ("stop_at", "runs_on_resume"),
    [(2, 2), (3, 1)],  # in the second tuning round; in the evaluation
)
def test_an_interrupted_run_resumes_to_the_same_files(
    uninterrupted, tmp_path, monkeypatch, stop_at, runs_on_resume
):
    out = tmp_path / "run"
    interrupt_call(monkeypatch, stop_at)
    with pytest.raises(Interrupted):
        main(["surfaces", *TINY, "--out", str(out)])
    assert not (out / "summary.json").exists()
    calls = interrupt_call(monkeypatch, 0)
    assert main(["surfaces", *TINY, "--out", str(out)]) == 0
    assert len(calls) == runs_on_resume  # finished tuning rounds were not run again
    assert_same_results(uninterrupted, out)


def test_an_interruption_while_drawing_keeps_the_tuning(uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def broken(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(plots, "draw_all", broken)
    with pytest.raises(Interrupted):
        main(["surfaces", *TINY, "--out", str(out)])
    monkeypatch.undo()
    calls = interrupt_call(monkeypatch, 0)
    assert main(["surfaces", *TINY, "--out", str(out)]) == 0
    assert calls == [True]  # the evaluation only
    assert_same_results(uninterrupted, out)


def test_a_finished_run_is_kept_without_any_work(uninterrupted, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    interrupt_call(monkeypatch, 1)  # any run raises
    rows = bench.benchmark(
        ["sphere", "booth"], ["adam", "sgd"], steps=30, starts=3, tune_trials=6, tune_starts=2,
        out=out,
    )  # fmt: skip
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert [(r["function"], r["optimizer"]) for r in rows] == [
        (f, o) for f in ["sphere", "booth"] for o in ["adam", "sgd"]
    ]
    saved = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["final_gap_median"] for r in rows] == [r["final_gap_median"] for r in saved]


def test_saved_rounds_with_other_proposals_are_run_again(uninterrupted, tmp_path, monkeypatch):
    """A saved round whose params the samplers do not propose (another Optuna, say) is not
    trusted: it runs, and so does every round after it."""
    out = tmp_path / "run"
    interrupt_call(monkeypatch, 3)
    with pytest.raises(Interrupted):
        main(["surfaces", *TINY, "--out", str(out)])
    state = json.loads((out / "state.json").read_text())
    first = state["rounds"][0]["sphere/adam"][0]
    first["params"]["lr"] *= 2
    first["score"] = -99.0
    (out / "state.json").write_text(json.dumps(state))
    calls = interrupt_call(monkeypatch, 0)
    assert main(["surfaces", *TINY, "--out", str(out)]) == 0
    assert len(calls) == 3
    assert_same_results(uninterrupted, out)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["--steps", "31"], "(steps: 30 there, 31 now)"),
        (["--seed", "1"], "(seed: 0 there, 1 now)"),
        (["--tol", "0.1"], "(tol: 0.01 there, 0.1 now)"),
    ],
)
def test_a_different_config_is_refused(uninterrupted, change, expected, capsys, monkeypatch):
    interrupt_call(monkeypatch, 1)
    before = (uninterrupted / "summary.json").read_bytes()
    assert main(["surfaces", *TINY, *change, "--out", str(uninterrupted)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "holds a surfaces run with a different config" in err and expected in err
    assert "rerun with the same options or use another --out" in err
    assert (uninterrupted / "summary.json").read_bytes() == before


def test_a_different_function_list_is_refused(uninterrupted):
    with pytest.raises(UsageError, match=r"functions: \['sphere', 'booth'\] there, \['sphere'\]"):
        bench.claim_out(uninterrupted, ["sphere"], ["adam", "sgd"], steps=30, starts=3,
                        tune_trials=6, tune_starts=2)  # fmt: skip


def test_a_foreign_directory_is_refused_and_an_empty_one_used(tmp_path, capsys, monkeypatch):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    interrupt_call(monkeypatch, 1)
    assert main(["surfaces", *TINY, "--out", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no surfaces run; use an empty or new --out" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    bench.claim_out(empty, ["sphere"], ["adam"], steps=5, starts=1, tune_trials=0)
    assert sorted(p.name for p in empty.iterdir()) == ["state.json"]


def test_a_damaged_state_file_is_a_one_line_error(tmp_path):
    (tmp_path / "state.json").write_text('{"kind": "optimlab surf')
    with pytest.raises(UsageError, match="is not a readable surfaces run state"):
        output.claim(tmp_path, {"steps": 1})


def test_a_temporary_file_of_a_killed_write_does_not_make_a_directory_foreign(tmp_path):
    (tmp_path / ".state.json.abc123.tmp").write_text("{")
    output.claim(tmp_path, {"steps": 1})
    assert (tmp_path / "state.json").is_file()


def test_a_killed_process_resumes(uninterrupted, tmp_path):
    """SIGKILL once the first tuning round is saved, then the same command again."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "optimlab", "surfaces", *TINY, "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        state = out / "state.json"
        if state.exists() and json.loads(state.read_text())["rounds"]:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_results(uninterrupted, out)
