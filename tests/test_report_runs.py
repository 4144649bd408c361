"""`optimlab report` on a surfaces directory and the index of a run directory."""

import json

import pytest

from optimlab import surfaces
from optimlab.cli import main
from optimlab.errors import UsageError
from optimlab.report.runs import report_any, write_index


@pytest.fixture(scope="module")
def surfaces_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "surfaces"
    surfaces.benchmark(["sphere"], ["adam"], steps=30, starts=2, tune_trials=0, out=out)
    return out


def test_report_redraws_surfaces_figures_from_result_files(surfaces_dir):
    png, gif = surfaces_dir / "sphere.png", surfaces_dir / "sphere.gif"
    png.unlink()
    gif.unlink()
    assert main(["report", str(surfaces_dir)]) == 0
    assert png.stat().st_size > 0 and gif.stat().st_size > 0


def test_run_index_shows_verdict_and_surfaces_table(surfaces_dir):
    run_dir = surfaces_dir.parent
    (run_dir / "mnist1d").mkdir(exist_ok=True)
    headline = "The claim <is> not supported"
    (run_dir / "mnist1d" / "summary.json").write_text(
        json.dumps({"verdict": {"headline": headline}})
    )
    write_index(run_dir)
    markdown = (run_dir / "report.md").read_text()
    assert headline in markdown and "| sphere | adam |" in markdown
    html = (run_dir / "report.html").read_text()
    assert "The claim &lt;is&gt; not supported" in html and "data:image/png;base64" in html


def test_report_of_a_directory_without_results_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="holds no optimlab results"):
        report_any(tmp_path)


def test_run_refuses_a_different_config_before_running_surfaces(tmp_path, monkeypatch):
    from optimlab.commands import run as run_command

    out = tmp_path / "run"
    (out / "mnist1d").mkdir(parents=True)
    (out / "mnist1d" / "config.json").write_text(json.dumps({"config": {"trials": 999}}))

    def surfaces_must_not_run(*args, **kwargs):
        raise AssertionError("surfaces ran before the config check")

    monkeypatch.setattr(run_command, "run_surfaces", surfaces_must_not_run)
    assert main(["run", "--quick", "--out", str(out)]) == 2
