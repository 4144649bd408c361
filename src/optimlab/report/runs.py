"""Reports of a study directory, a surfaces directory, or an `optimlab run` directory (both)."""

from __future__ import annotations

import math
from pathlib import Path

from optimlab.atomic import write_text
from optimlab.errors import RunError, UsageError
from optimlab.report import build_report
from optimlab.report.document import Heading, Image, Links, Paragraph, Table, to_html, to_markdown
from optimlab.report.files import damaged, read_json

SURFACES_FIX = "rerun `optimlab surfaces` (or `optimlab run`) with the same options"


def report_any(run_dir: str | Path) -> list[Path]:
    """Redraw, from result files alone, the report of a study directory, the figures of a
    surfaces directory, or both parts of a run directory and its index."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory")
    if (run_dir / "config.json").exists():
        return [build_report(run_dir)]
    if _is_surfaces(run_dir):
        return redraw_surfaces(run_dir)
    if (run_dir / "mnist1d" / "config.json").exists():
        written = [build_report(run_dir / "mnist1d")]
        if _is_surfaces(run_dir / "surfaces"):
            written += redraw_surfaces(run_dir / "surfaces")
        return [*written, write_index(run_dir)]
    raise UsageError(
        f"{run_dir} holds no optimlab results (no config.json, run.json or mnist1d/config.json)"
    )


def _is_surfaces(path: Path) -> bool:
    return (path / "run.json").exists() and (path / "trajectories.npz").exists()


def redraw_surfaces(out: Path) -> list[Path]:
    """Every figure and animation of a surfaces benchmark, from run.json and trajectories.npz."""
    import zipfile

    from optimlab.surfaces.plots import draw_all

    read_json(out / "run.json", fix=SURFACES_FIX)  # names the file when it is damaged
    try:
        return draw_all(out)
    except (KeyError, TypeError, ValueError, IndexError, OSError, zipfile.BadZipFile) as exc:
        raise RunError(
            f"the surfaces result files in {out} (run.json, trajectories.npz) are damaged "
            f"({type(exc).__name__}); {SURFACES_FIX}"
        ) from exc


def _fmt(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.3g}"
    return str(value)


def surfaces_table(summary: dict) -> Table:
    """The surfaces summary rows as a table (the columns a reader compares first)."""
    columns = ["function", "optimizer", "final_gap_median", "success_rate", "diverged"]
    headers = ["function", "optimizer", "final gap (median)", "success", "diverged"]
    rows = []
    for row in summary["rows"]:
        cells = [_fmt(row.get(c)) for c in columns]
        if isinstance(row.get("success_rate"), float):
            cells[3] = f"{row['success_rate']:.0%}"
        rows.append(cells)
    return Table(headers, rows)


def _surfaces_table(path: Path) -> Table:
    try:
        return surfaces_table(read_json(path, fix=SURFACES_FIX))
    except (KeyError, TypeError, AttributeError) as exc:
        raise damaged(path, f"{type(exc).__name__}: {exc}", SURFACES_FIX) from None


def write_index(run_dir: Path) -> Path:
    """report.md / report.html of a run directory: the verdict, the surfaces table and links
    to both parts."""
    summary = read_json(run_dir / "mnist1d" / "summary.json")
    headline = (summary.get("verdict") or {}).get("headline")
    if not isinstance(headline, str):
        raise damaged(run_dir / "mnist1d" / "summary.json", "no verdict headline")
    blocks = [
        Heading(1, "optimlab run"),
        Heading(2, "mnist1d study"),
        Paragraph(headline),
        Links(["mnist1d/report.html", "mnist1d/report.md"]),
        Heading(2, "Surfaces benchmark"),
    ]
    surfaces = run_dir / "surfaces"
    if (surfaces / "summary.json").exists():
        blocks += [
            _surfaces_table(surfaces / "summary.json"),
            Image("surfaces/convergence.png", "Convergence: f - f* per step, median and band"),
            Links(
                sorted(
                    str(p.relative_to(run_dir))
                    for p in surfaces.iterdir()
                    if p.suffix in (".md", ".png", ".gif", ".csv", ".json")
                )
            ),
        ]
    else:
        blocks.append(Paragraph("Not run."))
    write_text(run_dir / "report.html", to_html(blocks, title="optimlab run", base_dir=run_dir))
    write_text(run_dir / "report.md", to_markdown(blocks))
    return run_dir / "report.md"
