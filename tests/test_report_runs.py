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
