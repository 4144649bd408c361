"""Argument types shared by the sub-commands: each rejects bad values with one line (exit 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def _number(kind: type, check: Callable[[float], bool], requirement: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} ({requirement})"
    return parse


positive_int = _number(int, lambda v: v >= 1, "at least 1")
nonnegative_int = _number(int, lambda v: v >= 0, "at least 0")
positive_float = _number(float, lambda v: v > 0 and v == v and v != float("inf"), "> 0")
nonnegative_float = _number(float, lambda v: 0 <= v < float("inf"), ">= 0")
fraction_below_one = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")
# Seeds: the range every seeded library here accepts (NumPy's legacy RNG, which Optuna's
# samplers use, stops at 2**32 - 1; torch.manual_seed overflows past 2**64 - 1).
MAX_SEED = 2**32 - 1
seed = _number(int, lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]")


def name_list(valid: list[str], what: str) -> Callable[[str], list[str]]:
    """Parse a comma-separated list of names, each one of `valid`."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s")
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {unknown[0]!r}; valid: {', '.join(valid)}"
            )
        return names

    return parse


CONFIG_HELP = (
    "TOML file of settings (the keys are the options' names with _, and quick); options "
    "given here win over it; DIR/config.toml is the resolved config of a run"
)


def add_config_option(parser: argparse.ArgumentParser, help: str = CONFIG_HELP) -> None:
    """`--config FILE.toml` (read by `optimlab.config_file`)."""
    parser.add_argument("--config", type=Path, metavar="FILE", help=help)
