"""The study report: figures, report.md and a self-contained report.html, from result files.

Nothing here trains or reads the Optuna storage, so `optimlab report DIR` can redraw a
finished run anywhere.
"""

from __future__ import annotations

from pathlib import Path

from optimlab.atomic import write_text
from optimlab.errors import RunError
from optimlab.report.content import build_blocks
from optimlab.report.document import to_html, to_markdown
from optimlab.report.figures import draw_all
from optimlab.report.files import FIX, load_results

TITLE = "mnist1d study: DynamicAdam against tuned baselines"


def build_report(run_dir: str | Path) -> Path:
    """Draw the figures and write report.md and report.html into `run_dir`; return report.md."""
    results = load_results(run_dir)
    run_dir = Path(run_dir)
    try:
        blocks = build_blocks(results, draw_all(results))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        # Files that parse but do not hold what a study writes (edited, another version).
        raise RunError(
            f"the result files in {run_dir} do not fit together ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unexpected content'}); {FIX}"
        ) from exc
    write_text(run_dir / "report.md", to_markdown(blocks))
    write_text(run_dir / "report.html", to_html(blocks, title=TITLE, base_dir=run_dir))
    return run_dir / "report.md"


__all__ = ["build_report"]
