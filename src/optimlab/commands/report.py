"""`optimlab report DIR`: redraw the figures and report of a finished run from its files."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 50
FROM_ENV = "$OPTIMLAB_STORAGE"  # --storage given without a URL


def register(subparsers) -> None:
    from optimlab.commands.mnist1d import storage_url

    parser = subparsers.add_parser(
        "report",
        help="redraw the figures and report of a finished run from its result files",
        description="Redraw figures, report.md and report.html from the result files of a "
        "mnist1d study directory (or of an `optimlab run` directory); nothing is retrained. "
        "With --storage, first write the result files from the Optuna storage the workers "
        "shared (DIR may then be a new directory).",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a run directory")
    parser.add_argument(
        "--storage",
        type=lambda text: text if text == FROM_ENV else storage_url(text),
        nargs="?",
        const=FROM_ENV,
        metavar="URL",
        help="write the result files from this storage first (without URL: $OPTIMLAB_STORAGE)",
    )
    parser.add_argument(
        "--study-name",
        metavar="NAME",
        help="with --storage and a new DIR: the run to take when the storage holds several",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from optimlab.errors import UsageError
    from optimlab.report.runs import report_any

    if args.storage is not None:
        from optimlab.storage import url_or_env
        from optimlab.study import report_from_storage

        url = url_or_env(None if args.storage == FROM_ENV else args.storage)
        if url is None:
            raise UsageError("--storage without a URL needs OPTIMLAB_STORAGE to be set")
        nested = args.dir / "mnist1d"  # an `optimlab run` directory
        study_dir = nested if (nested / "config.json").exists() else args.dir
        report_from_storage(url, study_dir, run=args.study_name)
    elif args.study_name is not None:
        raise UsageError("--study-name only applies with --storage")
    for path in report_any(args.dir):
        print(path)
    return 0
