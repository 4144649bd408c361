"""`optimlab mnist1d`: the study (tune every optimizer, final seeds, statistics, report)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from optimlab.commands._args import nonnegative_int, positive_int, unit_interval_open
from optimlab.mnist1d.variants import VARIANTS

ORDER = 30

OPTIMIZERS = list(VARIANTS)  # the CLI names (variants.py imports no torch)


def optimizer_list(text: str) -> list[str]:
    from optimlab.commands._args import name_list

    return name_list(OPTIMIZERS, "optimizer")(text)


optimizer_list.__name__ = "optimizer list"


def storage_url(text: str) -> str:
    from optimlab.errors import UsageError
    from optimlab.storage import scheme_of

    try:
        scheme_of(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


storage_url.__name__ = "storage URL"


def add_study_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `optimlab mnist1d` and `optimlab run`."""
    parser.add_argument(
        "--optimizers",
        type=optimizer_list,
        metavar="LIST",
        help=f"comma-separated; runs exactly these (default: all of {', '.join(OPTIMIZERS)})",
    )
    parser.add_argument(
        "--trials", type=positive_int, help="finished tuning trials per optimizer (20)"
    )
    parser.add_argument("--epochs", type=positive_int, help="epochs per training run (25)")
    parser.add_argument("--seeds", type=positive_int, help="final runs per optimizer (5)")
    parser.add_argument("--batch-size", type=positive_int, help="mini-batch size (100)")
    parser.add_argument("--model", choices=["mlp", "cnn"], help="model (mlp)")
    parser.add_argument(
        "--val-fraction",
        type=unit_interval_open,
        help="share of the 4000 training examples held out for validation (0.2)",
    )
    parser.add_argument(
        "--meta-source",
        choices=["val", "train"],
        help="override where the lookahead DynamicAdam variants draw meta batches from",
    )
    parser.add_argument(
        "--storage",
        type=storage_url,
        metavar="URL",
        help="sqlite:///PATH, journal:///PATH or postgresql://... "
        "(default: study.db in the run directory; study.journal when several processes run)",
    )
    parser.add_argument(
        "--study-name",
        metavar="NAME",
        help="prefix of the Optuna study names (default: a hash of the config)",
    )
    parser.add_argument("--device", help="torch device (cpu)")
    parser.add_argument(
        "--jobs",
        type=positive_int,
        help="parallel processes, one optimizer each (default: 2, or 1 on a one-core machine)",
    )
    parser.add_argument("--threads", type=positive_int, help="torch threads per process (1)")
    parser.add_argument("--seed", type=nonnegative_int, help="split, sampler and tuning seed (0)")
    parser.add_argument(
        "--quick", action="store_true", help="small budgets: 4 trials, 3 epochs, 2 seeds"
    )


def study_config(args: argparse.Namespace):
    """The StudyConfig the options describe (explicit options win over --quick)."""
    from optimlab.study import QUICK, StudyConfig

    values = {}
    names = [
        "optimizers",
        "trials",
        "epochs",
        "seeds",
        "batch_size",
        "model",
        "val_fraction",
        "meta_source",
        "seed",
        "storage",
        "study_name",
        "device",
        "jobs",
        "threads",
    ]
    if args.quick:
        values.update(QUICK)
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if values.get("val_fraction") == 0:
        from optimlab.errors import UsageError

        raise UsageError("--val-fraction must be > 0: tuning selects on the validation split")
    return StudyConfig.from_dict(values)


def default_out() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mnist1d",
        help="the mnist1d study: tune each optimizer, final seeds, statistics, report",
        description="Tune every optimizer with Optuna under the same budget, run the best "
        "configurations on fresh seeds, test once, and write the results and report. "
        "Rerunning the same command with the same --out resumes.",
    )
    add_study_options(parser)
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory (default: runs/<timestamp>)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from optimlab.study import run_study

    config = study_config(args)
    out = args.out or default_out()
    report = run_study(config, out)
    print(report)
    return 0
