"""Result files of a study, read back from the Optuna storage.

trials.csv (tuning trials), finals.csv (one row per final run), curves.csv (per epoch),
beta1.csv (per step, DynamicAdam variants), importances.csv and summary.json (statistics and
verdict; no wall-clock times, so equal seeds give equal files). timings go to timings.json.
Everything the report shows comes from these files.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optimlab.atomic import write_csv, write_json
from optimlab.finals import final_trials
from optimlab.mnist1d.train import EpochMetrics
from optimlab.mnist1d.variants import VARIANTS
from optimlab.stats import mean_ci, welch
from optimlab.storage import SURPLUS_ATTR, open_storage
from optimlab.study import CLAIM, StudyConfig, final_study_name, tune_study_name
from optimlab.study_workers import best_trial
from optimlab.tuning import param_importances, search_space

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
COMPARED = ("test_loss", "test_accuracy", "val_loss")  # Welch's test against Adam
HYPERPARAMETERS = ("lr", "gate_lr", "momentum")
CURVE_FIELDS = [f.name for f in fields(EpochMetrics)]


def write_results(config: StudyConfig, url: str, run_dir: Path) -> dict[str, Any]:
    """Write every result file of the run into `run_dir`; return the timings."""
    storage = open_storage(url)
    run = config.run_name()
    trials, finals, curves, beta1, importances = [], [], [], [], []
    per_optimizer, timings = {}, {}
    for optimizer in config.optimizers:
        tuning = optuna.load_study(storage=storage, study_name=tune_study_name(run, optimizer))
        final = optuna.load_study(storage=storage, study_name=final_study_name(run, optimizer))
        # Surplus trials were asked by a worker once the budget was covered and never ran.
        tune_trials = [
            t
            for t in sorted(tuning.get_trials(deepcopy=False), key=lambda t: t.number)
            if not t.user_attrs.get(SURPLUS_ATTR)
        ]
        trials += [_trial_row(optimizer, t) for t in tune_trials]
        best = best_trial(tuning)
        runs = final_trials(final, best.params) if best else {}
        runs = [runs[s] for s in config.final_seeds() if s in runs]
        rows = [_final_row(optimizer, t) for t in runs]
        finals += rows
        for t in runs:
            seed = t.user_attrs["seed"]
            curves += [{"optimizer": optimizer, "seed": seed, **m} for m in t.user_attrs["history"]]
            beta1 += [
                {"optimizer": optimizer, "seed": seed, "step": i, "beta1": b}
                for i, b in enumerate(t.user_attrs.get("beta1", []), start=1)
            ]
        found = param_importances(tuning)
        importances += [
            {"optimizer": optimizer, "param": p, "importance": v} for p, v in found.items()
        ]
        per_optimizer[optimizer] = _optimizer_summary(optimizer, tune_trials, best, rows, found)
        per_optimizer[optimizer]["meta_source"] = config.train_settings().meta_source_of(optimizer)
        timings[optimizer] = {
            "tuning_trial_seconds": sum(_duration(t) for t in tune_trials),
            "final_run_seconds": sum(_duration(t) for t in runs),
        }
    _compare_with_adam(per_optimizer)
    param_columns = sorted({k for row in trials for k in row if k.startswith("params_")})
    trial_columns = ["optimizer", "number", "state", "value", "diverged", "epochs_run"]
    write_csv(run_dir / "trials.csv", trials, [*trial_columns, "last_value", *param_columns])
    write_csv(run_dir / "finals.csv", finals, FINAL_COLUMNS)
    write_csv(run_dir / "curves.csv", curves, ["optimizer", "seed", *CURVE_FIELDS])
    write_csv(run_dir / "beta1.csv", beta1, ["optimizer", "seed", "step", "beta1"])
    write_csv(run_dir / "importances.csv", importances, ["optimizer", "param", "importance"])
    summary = {
        "run_name": run,
        "claim": CLAIM,
        "budget": {"trials": config.trials, "epochs": config.epochs, "seeds": config.seeds},
        "final_seeds": config.final_seeds(),
        "optimizers": per_optimizer,
    }
    from optimlab.report.verdict import verdict

    summary["verdict"] = verdict(summary).to_dict()
    write_json(run_dir / "summary.json", summary)
    return {"per_optimizer": timings}


FINAL_COLUMNS = [
    "optimizer",
    "seed",
    "tuning_trial",
    *HYPERPARAMETERS,
    *METRICS,
    "diverged",
    "epochs_run",
    "seconds",
]


def _trial_row(optimizer: str, trial: FrozenTrial) -> dict[str, Any]:
    steps = trial.intermediate_values
    return {
        "optimizer": optimizer,
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "diverged": bool(trial.user_attrs.get("diverged", False)),
        "epochs_run": len(steps),
        "last_value": steps[max(steps)] if steps else None,
        **{f"params_{k}": v for k, v in trial.params.items()},
    }


def _final_row(optimizer: str, trial: FrozenTrial) -> dict[str, Any]:
    history = trial.user_attrs["history"]
    last = history[-1] if history else {}
    return {
        "optimizer": optimizer,
        "seed": trial.user_attrs["seed"],
        "tuning_trial": trial.user_attrs.get("tuning_trial"),
        **trial.user_attrs["hyperparameters"],
        **{m: last.get(m) for m in METRICS},
        "diverged": bool(trial.user_attrs.get("diverged", False)),
        "epochs_run": len(history),
        "seconds": trial.user_attrs.get("seconds"),
    }


def _duration(trial: FrozenTrial) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _optimizer_summary(
    optimizer: str,
    trials: list[FrozenTrial],
    best: FrozenTrial | None,
    finals: list[dict[str, Any]],
    importances: dict[str, float],
) -> dict[str, Any]:
    variant = VARIANTS[optimizer]
    states = [t.state for t in trials]
    ok = [row for row in finals if not row["diverged"]]
    return {
        "description": variant.description,
        "reference_only": bool(variant.reference_only),
        "search_space": {k: vars(r) for k, r in search_space(variant).items()},
        "tuning": {
            "complete": states.count(TrialState.COMPLETE),
            "pruned": sum(
                s == TrialState.PRUNED and not t.user_attrs.get("diverged")
                for s, t in zip(states, trials, strict=True)
            ),
            "diverged": sum(bool(t.user_attrs.get("diverged")) for t in trials),
            "failed": states.count(TrialState.FAIL),
            "best_trial": best.number if best else None,
            "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None,
        },
        "importances": importances,
        "finals": {
            "runs": len(finals),
            "diverged": len(finals) - len(ok),
            **{m: mean_ci([row[m] for row in ok]).to_dict() for m in METRICS},
        },
        "_values": {m: [row[m] for row in ok] for m in COMPARED},
    }


def _compare_with_adam(per_optimizer: dict[str, dict[str, Any]]) -> None:
    """Welch's t-test of each optimizer's final metrics against Adam's (when Adam ran)."""
    values = {name: entry.pop("_values") for name, entry in per_optimizer.items()}
    for name, entry in per_optimizer.items():
        if "adam" not in values or name == "adam":
            entry["vs_adam"] = None
        else:
            pairs = {m: welch(values[name][m], values["adam"][m]) for m in COMPARED}
            entry["vs_adam"] = {m: _as_dict(c) for m, c in pairs.items()}


def _as_dict(comparison) -> dict[str, float] | None:
    if comparison is None:
        return None
    return {k: (v if math.isfinite(v) else None) for k, v in comparison.to_dict().items()}
