"""Reports of a study directory or of an `optimlab run` directory (surfaces + mnist1d)."""

from __future__ import annotations

import json
from pathlib import Path

from optimlab.atomic import write_text
from optimlab.errors import UsageError
from optimlab.report import build_report
from optimlab.report.document import Heading, Links, Paragraph, to_html, to_markdown


def report_any(run_dir: str | Path) -> list[Path]:
    """Redraw the report of a study directory, or of both parts of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory")
    if (run_dir / "config.json").exists():
        return [build_report(run_dir)]
    if (run_dir / "mnist1d" / "config.json").exists():
        study = build_report(run_dir / "mnist1d")
        return [study, write_index(run_dir)]
    raise UsageError(f"{run_dir} holds no mnist1d study (no config.json, no mnist1d/config.json)")


def write_index(run_dir: Path) -> Path:
    """report.md / report.html of a run directory: the verdict and links to both parts."""
    summary = json.loads((run_dir / "mnist1d" / "summary.json").read_text())
    surfaces = run_dir / "surfaces"
    surface_files = (
        sorted(
            str(p.relative_to(run_dir))
            for p in surfaces.rglob("*")
            if p.is_file() and p.suffix in (".md", ".html", ".png", ".gif", ".csv", ".json")
        )
        if surfaces.is_dir()
        else []
    )
    blocks = [
        Heading(1, "optimlab run"),
        Heading(2, "mnist1d study"),
        Paragraph(summary["verdict"]["headline"]),
        Links(["mnist1d/report.html", "mnist1d/report.md"]),
        Heading(2, "Surfaces benchmark"),
        Links(surface_files) if surface_files else Paragraph("Not run."),
    ]
    write_text(run_dir / "report.html", to_html(blocks, title="optimlab run", base_dir=run_dir))
    write_text(run_dir / "report.md", to_markdown(blocks))
    return run_dir / "report.md"
