"""`optimlab report DIR`: redraw the figures and report of a finished run from its files."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 50


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="redraw the figures and report of a finished run from its result files",
        description="Redraw figures, report.md and report.html from the result files of a "
        "mnist1d study directory (or of an `optimlab run` directory); nothing is retrained.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a run directory")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from optimlab.report.runs import report_any

    for path in report_any(args.dir):
        print(path)
    return 0
