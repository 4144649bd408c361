"""The whole study on tiny budgets: promised files, no test data in tuning, reproducibility,
resuming after an interruption, the CLI."""

import csv
import json
import subprocess
import sys
from dataclasses import replace

import pytest

from optimlab import finals, tuning
from optimlab.cli import main
from optimlab.errors import UsageError
from optimlab.study import StudyConfig, run_study

TINY = StudyConfig(optimizers=["adam", "dynamic_adam"], trials=2, epochs=2, seeds=2, workers=1)
FILES = [
    "config.json",
    "trials.csv",
    "finals.csv",
    "curves.csv",
    "beta1.csv",
    "importances.csv",
    "summary.json",
    "timings.json",
    "report.md",
    "report.html",
    "final_curves.png",
    "test_accuracy.png",
    "optimization_history.png",
    "param_importances.png",
    "beta1.png",
    "study.db",
]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    run_study(TINY, out, quiet=True)
    return out


def test_every_promised_file_is_written(tiny_run):
    for name in FILES:
        assert (tiny_run / name).is_file(), name
    trials = rows(tiny_run / "trials.csv")
    assert len(trials) == 4
    assert {
        "optimizer",
        "number",
        "state",
        "value",
        "diverged",
        "params_lr",
        "params_gate_lr",
    } <= set(trials[0])
    assert {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    final = rows(tiny_run / "finals.csv")
    assert [(r["optimizer"], int(r["seed"])) for r in final] == [
        (o, s) for o in TINY.optimizers for s in TINY.final_seeds()
    ]
    for column in [
        "lr",
        "train_loss",
        "val_loss",
        "test_loss",
        "test_accuracy",
        "diverged",
        "seconds",
    ]:
        assert all(r[column] != "" for r in final if column != "gate_lr"), column
    curves = rows(tiny_run / "curves.csv")
    assert len(curves) == 2 * 2 * TINY.epochs
    assert {"epoch", "val_loss", "test_loss", "beta1_mean", "seconds"} <= set(curves[0])
    beta1 = rows(tiny_run / "beta1.csv")
    assert {r["optimizer"] for r in beta1} == {"dynamic_adam"}
    steps_per_epoch = 32  # 3200 training examples, batch 100
    assert len(beta1) == 2 * TINY.epochs * steps_per_epoch


def test_summary_statistics_match_finals_csv(tiny_run):
    import statistics

    summary = json.loads((tiny_run / "summary.json").read_text())
    final = rows(tiny_run / "finals.csv")
    for name in TINY.optimizers:
        losses = [float(r["test_loss"]) for r in final if r["optimizer"] == name]
        entry = summary["optimizers"][name]["finals"]["test_loss"]
        assert entry["n"] == 2 and entry["mean"] == pytest.approx(statistics.mean(losses))
        assert entry["ci_low"] < entry["mean"] < entry["ci_high"]
    assert summary["optimizers"]["adam"]["vs_adam"] is None
    assert set(summary["optimizers"]["dynamic_adam"]["vs_adam"]) == {
        "test_loss",
        "test_accuracy",
        "val_loss",
    }
    assert summary["verdict"]["headline"]
    assert "seconds" not in json.dumps(summary)  # timings live in timings.json


def test_best_configuration_is_what_finals_ran(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    trials = rows(tiny_run / "trials.csv")
    for name in TINY.optimizers:
        complete = [t for t in trials if t["optimizer"] == name and t["state"] == "COMPLETE"]
        best = min(complete, key=lambda t: float(t["value"]))
        assert summary["optimizers"][name]["tuning"]["best_trial"] == int(best["number"])
        ran = {float(r["lr"]) for r in rows(tiny_run / "finals.csv") if r["optimizer"] == name}
        assert ran == {float(best["params_lr"])}


def test_test_data_never_reaches_tuning(tmp_path, monkeypatch):
    seen = {"tune": [], "final": []}
    real_train = tuning.train

    def spy(phase):
        def train(config, splits, **kw):
            seen[phase].append(splits.x_test is not None)
            return real_train(config, splits, **kw)

        return train

    monkeypatch.setattr(tuning, "train", spy("tune"))
    monkeypatch.setattr(finals, "train", spy("final"))
    config = replace(TINY, optimizers=["adam"], epochs=1)
    run_study(config, tmp_path / "run", quiet=True)
    assert seen["tune"] == [False, False]
    assert seen["final"] == [True, True]


def test_same_config_and_seed_give_identical_results(tiny_run, tmp_path):
    run_study(TINY, tmp_path / "again", quiet=True)
    for name in ["summary.json", "trials.csv", "beta1.csv", "importances.csv"]:
        assert (tmp_path / "again" / name).read_bytes() == (tiny_run / name).read_bytes(), name
    for name in ["curves.csv", "finals.csv"]:  # equal but for their wall-clock "seconds"
        untimed = [{k: v for k, v in r.items() if k != "seconds"} for r in rows(tiny_run / name)]
        again = [
            {k: v for k, v in r.items() if k != "seconds"} for r in rows(tmp_path / "again" / name)
        ]
        assert again == untimed, name


def test_rerun_resumes_without_new_work(tiny_run, monkeypatch):
    def no_training(*args, **kw):
        raise AssertionError("a finished study must not train again")

    monkeypatch.setattr(tuning, "train", no_training)
    monkeypatch.setattr(finals, "train", no_training)
    before = (tiny_run / "summary.json").read_bytes()
    run_study(TINY, tiny_run, quiet=True)
    assert (tiny_run / "summary.json").read_bytes() == before


def test_interrupted_run_resumes_to_the_same_results(tiny_run, tmp_path, monkeypatch):
    real_train, calls = tuning.train, []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 3:  # the first trial of dynamic_adam
            raise KeyboardInterrupt
        return real_train(*args, **kw)

    monkeypatch.setattr(tuning, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(TINY, tmp_path / "run", quiet=True)
    monkeypatch.setattr(tuning, "train", real_train)
    run_study(TINY, tmp_path / "run", quiet=True)
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    original = json.loads((tiny_run / "summary.json").read_text())
    tuned, expected = (
        resumed["optimizers"]["dynamic_adam"]["tuning"],
        original["optimizers"]["dynamic_adam"]["tuning"],
    )
    assert tuned["failed"] == 1  # the interrupted trial, rerun; numbers shift past it
    assert tuned["best_trial"] == expected["best_trial"] + 1
    tuned.update(failed=0, best_trial=expected["best_trial"])
    assert resumed == original
    assert (tmp_path / "run" / "finals.csv").read_text().count("\n") == 5


def test_different_config_in_same_dir_is_refused(tiny_run):
    with pytest.raises(UsageError, match="epochs: 2 there, 3 now"):
        run_study(replace(TINY, epochs=3), tiny_run, quiet=True)


def test_cli_runs_a_study(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "mnist1d",
            "--optimizers",
            "sgd",
            "--trials",
            "1",
            "--epochs",
            "1",
            "--seeds",
            "2",
            "--workers",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert str(out / "report.md") in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["optimizers"] == ["sgd"] and config["trials"] == 1
    assert {r["optimizer"] for r in rows(out / "finals.csv")} == {"sgd"}


def test_quick_sets_small_budgets_and_explicit_options_win():
    from optimlab.cli import build_parser
    from optimlab.commands.mnist1d import study_config

    args = build_parser().parse_args(["mnist1d", "--quick", "--epochs", "7"])
    config = study_config(args)
    assert (config.trials, config.epochs, config.seeds) == (4, 7, 2)
    assert config.optimizers == StudyConfig().optimizers


@pytest.mark.parametrize(
    "args",
    [
        ["--optimizers", "adam,lion"],
        ["--meta-source", "test"],
        ["--trials", "0"],
        ["--epochs", "-1"],
        ["--storage", "mysql://u:secret@h/db"],
        ["--val-fraction", "0"],
        ["--workers", "zero"],
        ["--workers", "2", "--storage", "sqlite:///s.db"],
        ["--grace-period", "1", "--heartbeat-interval", "2"],
    ],
)
def test_bad_options_are_one_line_errors_with_exit_2(args, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "optimlab", "mnist1d", *args, "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_two_local_workers_share_the_budgets_and_write_the_same_files(tiny_run, tmp_path):
    run_study(replace(TINY, workers=2), tmp_path / "parallel", quiet=True)
    assert (tmp_path / "parallel" / "study.journal").exists()
    for name in FILES[:-1]:
        assert (tmp_path / "parallel" / name).is_file(), name
    trials = rows(tmp_path / "parallel" / "trials.csv")
    for name in TINY.optimizers:  # exactly the budget, not one per worker more
        assert sum(t["optimizer"] == name and t["state"] != "FAIL" for t in trials) == TINY.trials
    final = rows(tmp_path / "parallel" / "finals.csv")
    assert sorted((r["optimizer"], int(r["seed"])) for r in final) == sorted(
        (o, s) for o in TINY.optimizers for s in TINY.final_seeds()
    )
    parallel = json.loads((tmp_path / "parallel" / "summary.json").read_text())
    serial = json.loads((tiny_run / "summary.json").read_text())
    assert parallel.keys() == serial.keys() and parallel["run_name"] == serial["run_name"]
