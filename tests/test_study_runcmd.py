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
