"""Reading a study's result files back (the report uses nothing else)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimlab.errors import UsageError

REQUIRED = ("config.json", "summary.json", "trials.csv", "finals.csv", "curves.csv")


def _value(text: str) -> Any:
    """CSV cell -> None, bool, int, float or the string itself."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def number(value: Any) -> float:
    """A cell as a float (nan when empty)."""
    return float(value) if value is not None else math.nan


@dataclass
class Results:
    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    trials: list[dict[str, Any]]
    finals: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    beta1: list[dict[str, Any]]
    importances: list[dict[str, Any]]
    timings: dict[str, Any] | None

    @property
    def optimizers(self) -> list[str]:
        return list(self.summary["optimizers"])


def load_results(run_dir: str | Path) -> Results:
    """The result files of `run_dir`; UsageError if it is not a finished study run."""
    run_dir = Path(run_dir)
    missing = [name for name in REQUIRED if not (run_dir / name).exists()]
    if missing:
        raise UsageError(f"{run_dir} is not a finished mnist1d study run (missing {missing[0]})")
    try:
        config = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        timings_path = run_dir / "timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else None
    except ValueError as exc:
        raise UsageError(f"{run_dir}: a result file is not valid JSON ({exc})") from None
    return Results(
        run_dir=run_dir,
        config=config,
        summary=summary,
        trials=read_csv(run_dir / "trials.csv"),
        finals=read_csv(run_dir / "finals.csv"),
        curves=read_csv(run_dir / "curves.csv"),
        beta1=read_csv(run_dir / "beta1.csv"),
        importances=read_csv(run_dir / "importances.csv"),
        timings=timings,
    )
