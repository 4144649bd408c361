"""`optimlab status`: progress of every Optuna study in a storage (or a run directory's)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = 60


def register(subparsers) -> None:
    from optimlab.commands.mnist1d import storage_url

    parser = subparsers.add_parser(
        "status",
        help="progress of the Optuna studies in a storage: complete, running, pruned, failed",
        description="List each study of a storage with its trial counts and best value.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--storage",
        type=storage_url,
        metavar="URL",
        help="sqlite:///PATH, journal:///PATH or postgresql://... (default: $OPTIMLAB_STORAGE)",
    )
    where.add_argument(
        "dir",
        type=Path,
        nargs="?",
        metavar="DIR",
        help="a study run directory (uses its embedded storage)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from optimlab.errors import UsageError
    from optimlab.storage import url_or_env
    from optimlab.study_status import study_rows

    url = storage_of(args.dir) if args.dir is not None else url_or_env(args.storage)
    if url is None:
        raise UsageError("name a run directory or --storage URL (or set OPTIMLAB_STORAGE)")
    table = Table("study", "complete", "pruned", "running", "waiting", "failed", "best value")
    for row in study_rows(url):
        best = "-" if row["best"] is None else f"{row['best']:.4f}"
        counts = [str(row[k]) for k in ("complete", "pruned", "running", "waiting", "failed")]
        table.add_row(row["study"], *counts, best)
    console = Console()
    if not console.is_terminal:  # a pipe or a file: full study names, no wrapping
        console = Console(width=200)
    console.print(table)
    return 0


def storage_of(run_dir: Path) -> str:
    """The storage URL of a run directory: its study.db or study.journal."""
    from optimlab.errors import UsageError

    for name, scheme in (("study.db", "sqlite"), ("study.journal", "journal")):
        if (run_dir / name).exists():
            return f"{scheme}:///{(run_dir / name).resolve()}"
    config = run_dir / "config.json"
    if config.exists():
        try:
            stored = json.loads(config.read_text())["config"]["storage"]
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{config} is not a study config; pass --storage URL") from None
        if isinstance(stored, str) and stored and "***" not in stored:
            return stored
    raise UsageError(f"{run_dir} holds no study storage; pass --storage URL")
