"""`optimlab run`: surfaces benchmark, then the study, then the report, in one directory."""

import json

import PIL.Image
import pytest

from optimlab import study
from optimlab.cli import main


def test_run_wires_both_parts_and_the_report(tmp_path, monkeypatch, capsys):
    import optimlab.surfaces

    calls = []

    def fake_benchmark(**kw):
        calls.append(kw)
        kw["out"].mkdir(parents=True)
        (kw["out"] / "summary.csv").write_text("function,optimizer\nsphere,adam\n")
        row = {"function": "sphere", "optimizer": "adam", "success_rate": 1.0}
        (kw["out"] / "summary.json").write_text(json.dumps({"rows": [row]}))
        PIL.Image.new("RGB", (2, 2)).save(kw["out"] / "convergence.png")

    monkeypatch.setattr(optimlab.surfaces, "benchmark", fake_benchmark)
    monkeypatch.setattr(study, "QUICK", {"trials": 1, "epochs": 1, "seeds": 2})
    monkeypatch.setattr("optimlab.mnist1d.variants.DEFAULT_VARIANTS", ["adam", "dynamic_adam"])
    out = tmp_path / "run"
    assert main(["run", "--quick", "--seed", "3", "--workers", "1", "--out", str(out)]) == 0
    assert len(calls) == 1 and calls[0]["seed"] == 3 and calls[0]["out"] == out / "surfaces"
    assert calls[0]["steps"] < 500 and calls[0]["starts"] < 16  # quick budgets
    config = json.loads((out / "mnist1d" / "config.json").read_text())["config"]
    assert config["seed"] == 3 and config["optimizers"] == ["adam", "dynamic_adam"]
    for name in ["report.md", "report.html", "mnist1d/report.md", "mnist1d/summary.json"]:
        assert (out / name).is_file(), name
    index = (out / "report.md").read_text()
    assert "surfaces/summary.csv" in index and "mnist1d/report.md" in index
    printed = capsys.readouterr().out
    assert str(out / "report.md") in printed
    assert main(["report", str(out)]) == 0  # the run directory redraws too


@pytest.mark.slow
def test_run_quick_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--quick", "--out", str(out)]) == 0
    assert (out / "mnist1d" / "report.html").is_file()
    assert any((out / "surfaces").iterdir())


RUN_TOML = """seed = 1
[surfaces]
functions = ["sphere"]
optimizers = ["adam", "sgd"]
steps = 20
starts = 2
tune_trials = 2
tune_starts = 2
[mnist1d]
optimizers = ["sgd"]
trials = 1
epochs = 1
seeds = 1
"""


def test_a_rerun_keeps_the_finished_surfaces_part(tmp_path, monkeypatch):
    """Killed during the study: the rerun resumes it without running surfaces again."""
    from optimlab.surfaces import bench

    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML)
    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run_study", killed)
    assert main(["run", "--config", str(config), "--out", str(out)]) == 130
    surfaces = {p.name: p.read_bytes() for p in (out / "surfaces").iterdir()}
    assert "summary.json" in surfaces and (out / "config.toml").is_file()
    monkeypatch.undo()
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("surfaces ran again"))
    assert main(["run", "--config", str(config), "--out", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in (out / "surfaces").iterdir()} == surfaces
    assert (out / "mnist1d" / "summary.json").is_file() and (out / "report.md").is_file()


def test_a_rerun_with_another_surfaces_config_is_refused_before_any_work(
    tmp_path, monkeypatch, capsys
):
    from optimlab.surfaces import bench

    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML)
    out = tmp_path / "run"
    (out / "surfaces").mkdir(parents=True)
    bench.claim_out(out / "surfaces", ["sphere"], ["adam", "sgd"], steps=21, starts=2,
                    tune_trials=2, tune_starts=2, seed=1)  # fmt: skip
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("surfaces ran"))
    assert main(["run", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "(steps: 21 there, 20 now)" in err and len(err.strip().splitlines()) == 1
    assert not (out / "mnist1d").exists() and not (out / "config.toml").exists()
