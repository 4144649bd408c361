"""Reading a study's result files back (the report uses nothing else)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimlab.errors import RunError, UsageError

REQUIRED = ("config.json", "summary.json", "trials.csv", "finals.csv", "curves.csv")
# The columns the report reads from each CSV file, and the keys of the JSON files.
COLUMNS = {
    "trials.csv": ("optimizer", "number", "state", "value"),
    "finals.csv": ("optimizer", "seed", "test_loss", "test_accuracy", "val_loss"),
    "curves.csv": ("optimizer", "seed", "epoch", "val_loss", "test_loss"),
    "beta1.csv": ("optimizer", "seed", "step", "beta1"),
    "importances.csv": ("optimizer", "param", "importance"),
}
SUMMARY_KEYS = ("run_name", "claim", "budget", "final_seeds", "optimizers", "verdict")
FIX = "rerun the study, or rewrite its result files with `optimlab report --storage URL DIR`"


def damaged(path: Path, what: str, fix: str = FIX) -> RunError:
    """The error for a result file that cannot be used, naming the file and the way out."""
    return RunError(f"result file {path} is damaged ({what}); {fix}")


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
    """The rows of a result CSV (none if the file is absent); RunError if it is damaged."""
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS.get(path.name, ()) if c not in (reader.fieldnames or [])]
            if missing:
                raise damaged(path, f"no column {missing[0]!r}")
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise damaged(path, str(exc).splitlines()[0] if str(exc) else "unreadable") from None
    if any(None in row or None in row.values() for row in rows):
        raise damaged(path, "a row has the wrong number of cells")
    return [{k: _value(v) for k, v in row.items()} for row in rows]


def read_json(path: Path, kind: type = dict, fix: str = FIX) -> Any:
    """A result JSON file, which must hold a `kind`; RunError naming the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise damaged(path, f"not valid JSON: {exc}", fix) from None
    if not isinstance(data, kind):
        what = f"expected a JSON {kind.__name__}, got {type(data).__name__}"
        raise damaged(path, what, fix)
    return data


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
    config = read_json(run_dir / "config.json")
    if not isinstance(config.get("config"), dict):
        raise damaged(run_dir / "config.json", "no 'config' table")
    summary = read_json(run_dir / "summary.json")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing or not isinstance(summary["optimizers"], dict):
        what = f"no key {missing[0]!r}" if missing else "'optimizers' is not a table"
        raise damaged(run_dir / "summary.json", what)
    timings_path = run_dir / "timings.json"
    timings = read_json(timings_path) if timings_path.exists() else None
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
