"""`optimlab train`: train one mnist1d model with one optimizer variant and print its metrics."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from optimlab.atomic import finite_or_none
from optimlab.commands._args import (
    fraction_below_one,
    nonnegative_float,
    positive_float,
    positive_int,
    seed,
)
from optimlab.mnist1d import variants

ORDER = 40


def register(subparsers: Any) -> None:
    names = variants.DEFAULT_VARIANTS  # looked up now, not at import (tests may narrow it)
    parser = subparsers.add_parser(
        "train",
        help="train one mnist1d model and print its metrics",
        description="Train one mnist1d model with one optimizer variant; print per-epoch "
        "train, validation and test metrics. dynamic_adam_published is the literal published "
        "procedure, which trains on its validation batches: a reference, not an optimizer.",
    )
    parser.add_argument(
        "--optimizer",
        required=True,
        choices=names,
        metavar="NAME",
        help=f"one of: {', '.join(names)}",
    )
    parser.add_argument("--lr", required=True, type=positive_float, help="learning rate")
    parser.add_argument(
        "--gate-lr",
        type=nonnegative_float,
        help="learning rate of DynamicAdam's gate (1e-3; 0 freezes it)",
    )
    parser.add_argument("--momentum", type=fraction_below_one, help="sgd momentum (0.9)")
    parser.add_argument("--epochs", type=positive_int, default=25, help="epochs (25)")
    parser.add_argument("--batch-size", type=positive_int, default=100, help="batch size (100)")
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp", help="model (mlp)")
    parser.add_argument(
        "--val-fraction",
        type=fraction_below_one,
        default=0.2,
        help="share of the 4000 training examples held out for validation "
        "(0.2; 0 trains on all of them, the paper's setting)",
    )
    parser.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="seed of initialisation, batch order and meta batches (0)",
    )
    parser.add_argument(
        "--split-seed",
        type=seed,
        default=0,
        help="seed of the train/validation split (0)",
    )
    parser.add_argument(
        "--meta-source",
        choices=["val", "train"],
        help="where lookahead DynamicAdam variants draw meta batches from",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (1: these models are too small to gain from more, and extra "
        "threads stall when other processes share the cores)",
    )
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="dataset cache ($OPTIMLAB_CACHE or ~/.cache/optimlab)"
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="checkpoint after every epoch; resume from it if it exists",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one line of JSON on stdout (progress stays on stderr)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from optimlab.mnist1d.data import load_mnist1d, make_splits
    from optimlab.mnist1d.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    config = TrainConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        gate_lr=args.gate_lr,
        momentum=args.momentum,
        epochs=args.epochs,
        batch_size=args.batch_size,
        model=args.model,
        seed=args.seed,
        meta_source=args.meta_source,
        device=args.device,
    )
    config.validate()
    _check_paths(args)
    err = Console(stderr=True)
    if config.variant.reference_only:
        err.print(
            f"[yellow]{config.optimizer} is a reference that reproduces a flawed "
            "procedure (it trains on its validation batches); not an optimizer to use"
        )
    data = load_mnist1d(args.cache_dir)
    splits = make_splits(data, val_fraction=args.val_fraction, seed=args.split_seed)
    start = time.perf_counter()
    result = train(
        config,
        splits,
        checkpoint=args.checkpoint,
        progress=lambda line: err.print(line, highlight=False),
    )
    seconds = time.perf_counter() - start
    summary = _summary(result, args, seconds)
    if args.json:
        sys.stdout.write(json.dumps(finite_or_none(summary), separators=(",", ":")) + "\n")
    else:
        _print_table(result, summary)
    return 0


def _check_paths(args: argparse.Namespace) -> None:
    """Fail before training, not after it, where the cache or the checkpoint cannot be written."""
    from pathlib import Path

    from optimlab.atomic import ensure_output_dir
    from optimlab.errors import UsageError
    from optimlab.mnist1d.data import default_cache_dir

    ensure_output_dir(args.cache_dir or default_cache_dir(), what="cache directory")
    if args.checkpoint is not None:
        checkpoint = Path(args.checkpoint)
        if checkpoint.is_dir():
            raise UsageError(f"checkpoint {str(checkpoint)!r} is a directory, not a file")
        ensure_output_dir(checkpoint.parent, what="checkpoint directory")


def _summary(result: Any, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    from dataclasses import asdict

    config = result.config
    final = asdict(result.final)
    return {
        **asdict(config),
        "meta_source": config.effective_meta_source,
        "val_fraction": args.val_fraction,
        "split_seed": args.split_seed,
        "reference_only": config.variant.reference_only,
        "diverged": result.diverged,
        "epochs_run": final.pop("epoch"),
        **{k: v for k, v in final.items() if k != "seconds"},
        "seconds": seconds,
        "history": [asdict(m) for m in result.history],
    }


def _print_table(result: Any, summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from optimlab.mnist1d.train import describe

    def number(value: float | None, fmt: str) -> str:
        return "-" if value is None or math.isnan(value) else format(value, fmt)

    has_beta1 = result.final.beta1_mean is not None
    table = Table(title=f"mnist1d: {result.config.optimizer}, lr {result.config.lr:g}")
    columns = ["epoch", "train loss", "train acc", "val loss", "val acc", "test loss", "test acc"]
    for column in columns + (["beta1"] if has_beta1 else []) + ["s"]:
        table.add_column(column, justify="right")
    for m in result.history:
        row = [
            str(m.epoch),
            number(m.train_loss, ".4f"),
            number(m.train_accuracy, ".1%"),
            number(m.val_loss, ".4f"),
            number(m.val_accuracy, ".1%"),
            number(m.test_loss, ".4f"),
            number(m.test_accuracy, ".1%"),
        ]
        row += [number(m.beta1_mean, ".3f")] if has_beta1 else []
        table.add_row(*row, f"{m.seconds:.2f}")
    out = Console()
    out.print(table)
    status = "DIVERGED, stopped early: " if result.diverged else "final "
    out.print(status + describe(result.final, result.config.epochs), highlight=False)
    out.print(f"total {summary['seconds']:.2f}s", highlight=False)
