"""The report is drawn from result files alone: it comes back identical after deletion, is
self-contained, escapes what it did not write, and changes when the numbers do."""

import json
import re
import shutil

import pytest

from optimlab.cli import main
from optimlab.report import build_report
from optimlab.report.document import Bullets, Image, Paragraph, Table, to_html, to_markdown
from optimlab.report.figures import FIGURES
from optimlab.study import StudyConfig, run_study

TINY = StudyConfig(optimizers=["adam", "dynamic_adam"], trials=2, epochs=2, seeds=2, workers=1)
DRAWN = ["report.md", "report.html", *FIGURES]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    run_study(TINY, out, quiet=True)
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_report_redraws_everything_from_files_alone(run_copy, capsys):
    original = {name: (run_copy / name).read_bytes() for name in DRAWN}
    for name in DRAWN:
        (run_copy / name).unlink()
    for store in run_copy.glob("study.*"):
        store.unlink()  # the report must not need the Optuna storage
    assert main(["report", str(run_copy)]) == 0
    assert str(run_copy / "report.md") in capsys.readouterr().out
    for name in DRAWN:
        assert (run_copy / name).read_bytes() == original[name], name


def test_html_is_self_contained(finished):
    html = (finished / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == len(FIGURES)
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in html and "https://" not in html


def test_strings_from_files_are_escaped(run_copy):
    summary = json.loads((run_copy / "summary.json").read_text())
    summary["optimizers"]["adam"]["tuning"]["best_params"] = {"<script>alert(1)</script>": 0.1}
    (run_copy / "summary.json").write_text(json.dumps(summary))
    build_report(run_copy)
    html = (run_copy / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_report_follows_the_numbers(run_copy):
    summary = json.loads((run_copy / "summary.json").read_text())
    before = (run_copy / "report.md").read_text()
    summary["optimizers"]["dynamic_adam"]["finals"]["val_loss"]["mean"] = 0.2401
    (run_copy / "summary.json").write_text(json.dumps(summary))
    build_report(run_copy)
    after = (run_copy / "report.md").read_text()
    assert after != before
    assert "0.240" in after and "near the claimed 0.238" in after


def test_report_mentions_claim_and_paper(finished):
    text = (finished / "report.md").read_text()
    for needle in ["0.238", "1.103", "68%", "## Verdict", "![", "test loss vs adam"]:
        assert needle in text


def test_report_of_a_non_run_is_a_usage_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "config.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("optimlab report: error:") for line in err)


def test_document_writers(tmp_path):
    from PIL import Image as PILImage

    PILImage.new("RGB", (2, 2)).save(tmp_path / "a.png")
    blocks = [
        Paragraph("a < b & c"),
        Bullets(["x|y"]),
        Table(["h|1", "h2"], [["v|1", "<b>"]]),
        Image("a.png", "cap"),
    ]
    md = to_markdown(blocks)
    assert "| h\\|1 | h2 |" in md and "| v\\|1 | <b> |" in md and "![cap](a.png)" in md
    html = to_html(blocks, title="<t>", base_dir=tmp_path)
    assert "<title>&lt;t&gt;</title>" in html and "<p>a &lt; b &amp; c</p>" in html
    assert "<td>&lt;b&gt;</td>" in html and "data:image/png;base64," in html
