"""`optimlab surfaces`: every optimizer on classic 2-D test functions, tuned fairly, measured
from many start points, drawn as surfaces, contour maps, animations and convergence curves."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from optimlab.commands._args import (
    add_config_option,
    fraction_below_one,
    name_list,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    seed,
)

ORDER = 20

# The built-in names, kept here so `--help` needs no torch import; a test checks that they
# equal optimlab.surfaces' registry and variants.
DEFAULT_FUNCTIONS = ["sphere", "booth", "beale", "himmelblau", "rosenbrock", "rastrigin"]
FUNCTIONS = [*DEFAULT_FUNCTIONS, "ackley", "matyas", "goldstein_price", "six_hump_camel"]
OPTIMIZERS = ["sgd", "adagrad", "rmsprop", "adam", "dynamic_adam_online", "dynamic_adam"]
# Budgets: optimlab.surfaces.DEFAULTS and, for --quick, optimlab.surfaces.QUICK.
DEFAULTS = {"steps": 500, "starts": 16, "tune_trials": 20, "tune_starts": 8}
QUICK = {"steps": 200, "starts": 8, "tune_trials": 8, "tune_starts": 4}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "surfaces",
        help="optimizers on 2-D test functions: figures, animations and fair numbers",
        description="Tune each optimizer per function with Optuna (same trial budget for all, "
        "on start points kept apart from evaluation), run it from many start points, and write "
        "per function a PNG (3-D surface and contour map with trajectories) and a GIF, a grid "
        "of convergence curves, and summary.csv/.json/.md.",
    )
    parser.add_argument(
        "--functions",
        type=name_list(FUNCTIONS, "function"),
        metavar="LIST",
        help=f"comma-separated (default: {','.join(DEFAULT_FUNCTIONS)}; "
        f"also: {','.join(FUNCTIONS[len(DEFAULT_FUNCTIONS) :])})",
    )
    parser.add_argument(
        "--optimizers",
        type=name_list(OPTIMIZERS, "optimizer"),
        metavar="LIST",
        help=f"comma-separated (default: all: {','.join(OPTIMIZERS)})",
    )
    parser.add_argument("--steps", type=positive_int, help="steps per run (500)")
    parser.add_argument(
        "--starts",
        type=positive_int,
        help="start points per function: the canonical one, then a seeded spread (16)",
    )
    parser.add_argument(
        "--tune-trials",
        type=nonnegative_int,
        help="Optuna trials per function and optimizer; 0 = no tuning (20)",
    )
    parser.add_argument(
        "--tune-starts",
        type=positive_int,
        help="start points of the tuning runs, apart from evaluation (8)",
    )
    parser.add_argument(
        "--noise",
        type=nonnegative_float,
        metavar="SIGMA",
        help="add SIGMA * N(0, 1) to every gradient (0)",
    )
    parser.add_argument(
        "--tol",
        type=positive_float,
        help="success: final distance to a global minimum at most TOL (0.01)",
    )
    parser.add_argument("--seed", type=seed, help="seed (0)")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output directory (default: runs/surfaces-<timestamp>); rerunning the same "
        "command into it resumes, a different config is refused",
    )
    add_config_option(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller budgets: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()),
    )
    parser.add_argument(
        "--no-tune",
        action="store_true",
        help="no tuning: use --lr/--momentum or each optimizer's default",
    )
    parser.add_argument("--lr", type=positive_float, help="with --no-tune: every optimizer's lr")
    parser.add_argument(
        "--momentum", type=fraction_below_one, help="with --no-tune: SGD's momentum"
    )
    parser.set_defaults(run=run)


SETTINGS = [
    "functions", "optimizers", "steps", "starts", "tune_trials", "tune_starts", "noise", "tol",
    "seed", "lr", "momentum",
]  # fmt: skip


def surfaces_config(args: argparse.Namespace):
    """The SurfacesConfig of the options: defaults < --quick < --config file < options."""
    from optimlab import config_file
    from optimlab.errors import UsageError

    given = config_file.read(args.config) if args.config else {}
    quick = config_file.pop_quick(given) or args.quick
    options = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    if args.no_tune:
        if args.tune_trials:
            raise UsageError("--no-tune contradicts --tune-trials")
        options["tune_trials"] = 0
    merged = {**(QUICK if quick else {}), **given, **options}
    if {"lr", "momentum"} & set(options) and merged.get("tune_trials", 1) != 0:
        raise UsageError("--lr and --momentum need --no-tune (otherwise they are tuned)")
    source = str(args.config) if args.config else None
    return config_file.build(config_file.SurfacesConfig.from_dict, merged, given, source)


def run(args: argparse.Namespace) -> int:
    from optimlab import config_file
    from optimlab.atomic import ensure_output_dir

    config = surfaces_config(args)
    # Before any run starts: an unusable or foreign --out fails in its first second.
    out = ensure_output_dir(args.out or Path("runs") / time.strftime("surfaces-%Y%m%d-%H%M%S"))
    from optimlab import surfaces
    from optimlab.surfaces.bench import claim_out

    kwargs = config.benchmark_kwargs()
    claim_out(out, **kwargs)
    config_file.write_surfaces(out / config_file.NAME, config)
    rows = surfaces.benchmark(**kwargs, out=out, progress=True)
    print((out / "summary.md").read_text(), end="")
    print(f"\n{len(rows)} rows; figures, GIFs and summary files in {out}/")
    return 0
