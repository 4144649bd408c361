"""`optimlab surfaces`: every promised file, figures redrawn from files alone, one-line errors."""

import csv
import json
import shutil

import pytest
from PIL import Image

from optimlab.cli import main
from optimlab.surfaces import plots
from optimlab.surfaces.metrics import COLUMNS

TINY = ["--steps", "40", "--starts", "3", "--tune-trials", "2", "--tune-starts", "2"]
FUNCTIONS = ["sphere", "rosenbrock"]
OPTIMIZERS = ["adam", "sgd", "dynamic_adam"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("surfaces") / "run"
    code = main(
        ["surfaces", "--functions", ",".join(FUNCTIONS), "--optimizers", ",".join(OPTIMIZERS),
         *TINY, "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return out


def figures(out):
    return (
        [out / f"{f}.png" for f in FUNCTIONS]
        + [out / f"{f}.gif" for f in FUNCTIONS]
        + [out / "convergence.png"]
    )


def test_cli_writes_every_promised_file(run_dir):
    for path in figures(run_dir):
        with Image.open(path) as image:
            assert image.width >= 400 and image.height >= 300
            if path.suffix == ".gif":
                assert image.n_frames >= 20
    with open(run_dir / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COLUMNS
    rows = json.loads((run_dir / "summary.json").read_text())["rows"]
    assert [(r["function"], r["optimizer"]) for r in rows] == [
        (f, o) for f in FUNCTIONS for o in OPTIMIZERS
    ]
    assert [list(r) for r in rows] == [COLUMNS] * len(rows)
    for row, line in zip(rows, table, strict=True):
        assert float(line["lr"]) == row["lr"]
        assert float(line["success_rate"]) == row["success_rate"]
    markdown = (run_dir / "summary.md").read_text()
    assert sum(line.startswith(("| sphere", "| rosenbrock")) for line in markdown.splitlines()) == 6
    tuning = json.loads((run_dir / "tuning.json").read_text())
    assert {len(entry["trials"]) for entry in tuning.values()} == {2}  # equal budgets
    run = json.loads((run_dir / "run.json").read_text())
    assert run["optimizers"] == OPTIMIZERS and run["settings"]["steps"] == 40
    assert set(run["timings"]) == {"tuning_s", "evaluation_s", "figures_s", "total_s"}


def test_figures_are_redrawn_from_the_result_files_alone(run_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ["run.json", "trajectories.npz"]:
        shutil.copy(run_dir / name, copy / name)
    written = plots.draw_all(copy)
    assert sorted(written) == sorted(figures(copy))
    assert all(path.stat().st_size > 1000 for path in written)


def test_cli_without_tuning_uses_the_given_hyperparameters(tmp_path, capsys):
    out = tmp_path / "fixed"
    code = main(
        ["surfaces", "--functions", "booth", "--optimizers", "sgd,adam", "--steps", "30",
         "--starts", "2", "--no-tune", "--lr", "0.01", "--momentum", "0.5", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["lr"], r["momentum"]) for r in rows] == [(0.01, 0.5), (0.01, None)]
    printed = capsys.readouterr().out
    assert "| booth | sgd | 0.01 | 0.5 |" in printed and str(out) in printed


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--functions", "sphere,nope"], "unknown function 'nope'; valid: sphere, booth, beale"),
        (["--optimizers", "adam,nadam"], "unknown optimizer 'nadam'; valid: sgd, adagrad"),
        (["--steps", "0"], "must be at least 1"),
        (["--noise", "-1"], "must be >= 0"),
        (["--seed", "18446744073709551616"], "must be in [0, 4294967295]"),
        (["--seed", str(2**32)], "must be in [0, 4294967295]"),
        (["--no-tune", "--momentum", "1"], "must be in [0, 1)"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["surfaces", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--lr", "0.1"], "--lr and --momentum need --no-tune"),
        (["--no-tune", "--tune-trials", "3"], "--no-tune contradicts --tune-trials"),
        (["--no-tune", "--momentum", "0.5", "--optimizers", "adam"], "applies to sgd"),
    ],
)
def test_contradicting_options_give_one_line_and_exit_2(args, expected, capsys, tmp_path):
    assert main(["surfaces", *args, "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("/proc/optimlab-test", "output directory '/proc/optimlab-test' is not writable"),
        ("/etc/passwd", "output directory '/etc/passwd' exists and is not a directory"),
        ("/etc/passwd/run", "output directory '/etc/passwd/run' is not writable"),
    ],
)
def test_an_unusable_out_fails_before_any_work(out, expected, capsys, monkeypatch):
    from optimlab.surfaces import bench

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(bench, "tune", no_work)
    monkeypatch.setattr(bench, "run", no_work)
    assert main(["surfaces", "--out", out]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_the_largest_seed_runs_dynamic_adam(tmp_path):
    code = main(
        ["surfaces", "--functions", "sphere", "--optimizers", "dynamic_adam", "--steps", "5",
         "--starts", "2", "--no-tune", "--seed", str(2**32 - 1), "--out", str(tmp_path / "run")]
    )  # fmt: skip
    assert code == 0


def test_steps_beyond_memory_fail_before_any_work(capsys, monkeypatch, tmp_path):
    from optimlab.surfaces import bench

    monkeypatch.setattr(bench, "tune", lambda *a, **k: pytest.fail("work started"))
    assert main(["surfaces", "--steps", "100000000", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "steps x starts too large" in err and len(err.strip().splitlines()) == 1
