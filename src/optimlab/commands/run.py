"""`optimlab run` (`make run`): the surfaces benchmark, the mnist1d study, then the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from optimlab.commands._args import seed
from optimlab.commands.mnist1d import add_scaleout_options

ORDER = 10


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="everything with defaults: surfaces benchmark, mnist1d study, report",
        description="Run the surfaces benchmark into DIR/surfaces and the mnist1d study into "
        "DIR/mnist1d with their defaults, then write the report. Rerunning with the same "
        "--out resumes the study.",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory (default: runs/<timestamp>)"
    )
    parser.add_argument("--quick", action="store_true", help="small budgets for both parts")
    parser.add_argument("--seed", type=seed, default=0, help="seed of both parts (0)")
    add_scaleout_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from optimlab.atomic import ensure_output_dir
    from optimlab.commands.mnist1d import default_out, scaleout_values
    from optimlab.report.runs import report_any
    from optimlab.study import QUICK, StudyConfig, prepare_run_dir, run_study

    out = args.out or default_out()
    values = {"seed": args.seed, **(QUICK if args.quick else {}), **scaleout_values(args)}
    config = StudyConfig.from_dict(values)  # validated before any work starts
    config.validate()
    ensure_output_dir(out)
    prepare_run_dir(config, out / "mnist1d")  # refuses a different config before any work
    run_surfaces(out / "surfaces", quick=args.quick, seed=args.seed)
    run_study(config, out / "mnist1d")
    for path in report_any(out):
        print(path)
    return 0


def run_surfaces(out: Path, *, quick: bool, seed: int) -> None:
    """The surfaces benchmark with its defaults (all functions, all optimizer variants)."""
    from optimlab import surfaces

    budget = surfaces.QUICK if quick else {}
    surfaces.benchmark(seed=seed, out=out, progress=True, **budget)
