"""`optimlab run` (`make run`): the surfaces benchmark, the mnist1d study, then the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from optimlab.commands._args import nonnegative_int, positive_int

ORDER = 10

# Small budgets for the surfaces benchmark under --quick, if it has no quick switch itself.
SURFACES_QUICK = {"steps": 150, "starts": 4, "tune_trials": 6}


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
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of both parts (0)")
    parser.add_argument(
        "--jobs",
        type=positive_int,
        help="parallel processes for the study, one optimizer each (default: 2)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from optimlab.commands.mnist1d import default_out
    from optimlab.report.runs import report_any
    from optimlab.study import QUICK, StudyConfig, run_study

    out = args.out or default_out()
    values = {"seed": args.seed, **(QUICK if args.quick else {})}
    if args.jobs is not None:
        values["jobs"] = args.jobs
    config = StudyConfig.from_dict(values)  # validated before any work starts
    run_surfaces(out / "surfaces", quick=args.quick, seed=args.seed)
    run_study(config, out / "mnist1d")
    for path in report_any(out):
        print(path)
    return 0


def run_surfaces(out: Path, *, quick: bool, seed: int) -> None:
    """The surfaces benchmark with its defaults (all functions, all optimizer variants)."""
    from optimlab import surfaces

    budget = getattr(surfaces, "QUICK", SURFACES_QUICK) if quick else {}
    surfaces.benchmark(seed=seed, out=out, progress=True, **budget)
