"""`optimlab mnist1d`: the study (tune every optimizer, final seeds, statistics, report)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from optimlab.commands._args import add_config_option, fraction_below_one, positive_int, seed
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
    """The options of `optimlab mnist1d` (`optimlab run` shares `add_scaleout_options`)."""
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
        type=fraction_below_one,
        help="share of the 4000 training examples held out for validation (0.2)",
    )
    parser.add_argument(
        "--meta-source",
        choices=["val", "train"],
        help="override where the lookahead DynamicAdam variants draw meta batches from",
    )
    add_scaleout_options(parser)
    parser.add_argument("--device", help="torch device (cpu)")
    parser.add_argument("--threads", type=positive_int, help="torch threads per process (1)")
    parser.add_argument("--seed", type=seed, help="split, sampler and tuning seed (0)")
    parser.add_argument(
        "--quick", action="store_true", help="small budgets: 4 trials, 3 epochs, 2 seeds"
    )
    add_config_option(parser)


def add_scaleout_options(parser: argparse.ArgumentParser) -> None:
    """Where the studies live and how many workers run them (mnist1d and run)."""
    parser.add_argument(
        "--storage",
        type=storage_url,
        metavar="URL",
        help="sqlite:///PATH, journal:///PATH or postgresql://USER:PASSWORD@HOST/DB "
        "(default: $OPTIMLAB_STORAGE, else study.db in the run directory, or study.journal "
        "with several workers). Workers on other machines join with the same options",
    )
    parser.add_argument(
        "--study-name",
        metavar="NAME",
        help="prefix of the Optuna study names (default: a hash of the config)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="worker processes on this machine, sharing every study (1; several: journal "
        "or PostgreSQL storage, and proposals that depend on timing)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=positive_int,
        metavar="S",
        help="seconds between heartbeats of a running trial on PostgreSQL (2)",
    )
    parser.add_argument(
        "--grace-period",
        type=positive_int,
        metavar="S",
        help="seconds without a heartbeat before a trial counts as dead and runs again (10)",
    )


SCALEOUT = ["study_name", "workers", "heartbeat_interval", "grace_period"]
STUDY_OPTIONS = [
    "optimizers", "trials", "epochs", "seeds", "batch_size", "model", "val_fraction",
    "meta_source", "seed", "device", "threads", *SCALEOUT,
]  # fmt: skip


def study_config(args: argparse.Namespace):
    """The StudyConfig of the options: defaults < --quick < --config file < options."""
    from optimlab import config_file

    given = config_file.read(args.config) if getattr(args, "config", None) else {}
    quick = config_file.pop_quick(given) or args.quick
    return resolve_study(given, args, quick=quick, source=args.config and str(args.config))


def resolve_study(
    given: dict, args: argparse.Namespace, *, quick: bool, source: str | None, shared=None
):
    """A StudyConfig from a config file's values (`given`, and `shared` ones of `optimlab run`)
    and the options in `args`. Storage: --storage, else the file's, else $OPTIMLAB_STORAGE."""
    from optimlab import config_file
    from optimlab.errors import UsageError
    from optimlab.storage import url_or_env
    from optimlab.study import QUICK, StudyConfig

    options = {n: getattr(args, n) for n in STUDY_OPTIONS if getattr(args, n, None) is not None}
    if options.get("val_fraction") == 0:
        raise UsageError("--val-fraction must be > 0: tuning selects on the validation split")
    merged = {**(QUICK if quick else {}), **(shared or {}), **given, **options}
    storage = getattr(args, "storage", None) or given.get("storage") or url_or_env(None)
    if storage:
        merged["storage"] = storage
    return config_file.build(StudyConfig.from_dict, merged, given, source)


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
    report = run_study(config, out)  # refuses a different config before writing anything
    print(report)
    return 0
