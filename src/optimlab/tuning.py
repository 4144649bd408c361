"""Optuna tuning of one optimizer on mnist1d: search spaces, objective, pruning, budget.

Every optimizer gets the same number of finished trials (COMPLETE or PRUNED). A trial that
crashes or is killed ends FAIL and is run again, so it costs no budget. The objective is the
validation loss after the epoch budget; it is reported each epoch for the MedianPruner. A
diverged trial is PRUNED with `diverged=True` (a NaN value would be a FAIL that teaches TPE
nothing). Tuning never sees the test set: it trains on `splits.without_test()`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from optimlab.errors import UsageError
from optimlab.mnist1d.data import Splits
from optimlab.mnist1d.train import EpochMetrics, TrainConfig, TrainResult, train
from optimlab.mnist1d.variants import VARIANTS, Variant
from optimlab.storage import WORKER_ATTR, heartbeat, reclaim_dead_trials, worker_id

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PRUNER_STARTUP_TRIALS = 5  # trials that always run to the end before the pruner acts
# The first fifth of training is never pruned: early losses favour large learning rates,
# which start fast and may end worse.
PRUNER_WARMUP_FRACTION = 0.2

Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Range:
    """A hyperparameter's search range; `log` draws it log-uniformly."""

    low: float
    high: float
    log: bool = True


# Learning-rate ranges per variant: each spans the optimizer's useful range with margin
# (SGD and Adagrad need larger steps than the Adam family, RMSprop smaller).
LR_RANGES: dict[str, Range] = {
    "adam": Range(1e-4, 1e-1),
    "dynamic_adam": Range(1e-4, 1e-1),
    "dynamic_adam_train": Range(1e-4, 1e-1),
    "dynamic_adam_online": Range(1e-4, 1e-1),
    "dynamic_adam_published": Range(1e-4, 1e-1),
    "sgd": Range(1e-3, 1.0),
    "rmsprop": Range(1e-5, 1e-1),
    "adagrad": Range(1e-3, 1.0),
}
OTHER_RANGES: dict[str, Range] = {
    "gate_lr": Range(1e-5, 1e-1),  # the gate's own Adam (DynamicAdam variants)
    "momentum": Range(0.0, 0.99, log=False),  # SGD
}


def search_space(variant: Variant) -> dict[str, Range]:
    """The ranges Optuna draws `variant`'s tuned hyperparameters from."""
    space = {}
    for name in variant.tuned:
        if name == "lr":
            space[name] = LR_RANGES.get(variant.name) or LR_RANGES[variant.optimizer]
        elif name in OTHER_RANGES:
            space[name] = OTHER_RANGES[name]
        else:
            raise UsageError(f"no search range for hyperparameter {name!r} of {variant.name}")
    return space


@dataclass(frozen=True)
class TrainSettings:
    """Everything of a training run except the optimizer's hyperparameters and the seed."""

    epochs: int
    batch_size: int
    model: str
    meta_source: str | None  # overrides the lookahead variants' meta source when set
    device: str

    def meta_source_of(self, optimizer: str) -> str | None:
        """Where `optimizer`'s meta batches come from (None: it takes none)."""
        own = VARIANTS[optimizer].meta_source
        return (self.meta_source or own) if own is not None else None

    def config(self, optimizer: str, params: dict[str, float], seed: int) -> TrainConfig:
        variant = VARIANTS[optimizer]
        return TrainConfig(
            optimizer=optimizer,
            epochs=self.epochs,
            batch_size=self.batch_size,
            model=self.model,
            seed=seed,
            meta_source=self.meta_source if variant.meta_source is not None else None,
            device=self.device,
            **params,
        )


def make_sampler(seed: int, finished: int = 0) -> optuna.samplers.TPESampler:
    """TPE seeded from the study seed and the number of finished trials.

    Reseeding before every trial makes trial k depend only on (seed, history of k trials),
    so a study interrupted and resumed proposes exactly what an uninterrupted one would.
    """
    return optuna.samplers.TPESampler(seed=(seed * 1_000_003 + finished) % 2**32)


def warmup_epochs(epochs: int) -> int:
    """Epochs a trial runs before it may be pruned (epochs are reported from 1)."""
    return max(1, int(epochs * PRUNER_WARMUP_FRACTION))


def make_pruner(epochs: int) -> optuna.pruners.MedianPruner:
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=warmup_epochs(epochs)
    )


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def tune(
    study: optuna.Study,
    *,
    optimizer: str,
    trials: int,
    settings: TrainSettings,
    splits: Splits,
    seed: int,
    emit: Emit = lambda event: None,
) -> None:
    """Run trials of `optimizer` until `trials` of them have finished (resuming a study).

    `seed` seeds the sampler and every trial's training run (one seed for all trials, so
    configurations are compared on the same initialization and data order).
    """
    if splits.x_test is not None or splits.y_test is not None:
        raise AssertionError("tuning must not see the test set: pass splits.without_test()")
    space = search_space(VARIANTS[optimizer])
    reclaim_dead_trials(study)
    while (done := count_finished(study)) < trials:
        study.sampler = make_sampler(seed, done)
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, worker_id())
        emit({"kind": "unit", "optimizer": optimizer, "phase": "tune", "index": done + 1})
        try:
            with heartbeat(study, trial):
                value = _objective(trial, optimizer, space, settings, splits, seed, emit)
        except optuna.TrialPruned:
            state = "DIVERGED" if trial.user_attrs.get("diverged") else "PRUNED"
            study.tell(trial, state=TrialState.PRUNED)
            value = None
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
            state = "COMPLETE"
        emit(
            {
                "kind": "done",
                "optimizer": optimizer,
                "phase": "tune",
                "index": done + 1,
                "state": state,
                "value": value,
            }
        )


def _objective(
    trial: optuna.Trial,
    optimizer: str,
    space: dict[str, Range],
    settings: TrainSettings,
    splits: Splits,
    seed: int,
    emit: Emit,
) -> float:
    params = {
        name: trial.suggest_float(name, r.low, r.high, log=r.log) for name, r in space.items()
    }
    trial.set_user_attr("diverged", False)

    def on_epoch(metrics: EpochMetrics) -> None:
        emit(_epoch_event(optimizer, "tune", metrics, settings.epochs))
        if not math.isfinite(metrics.val_loss):
            trial.set_user_attr("diverged", True)
            raise optuna.TrialPruned(f"diverged at epoch {metrics.epoch}")
        trial.report(metrics.val_loss, metrics.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {metrics.epoch}")

    result = train(settings.config(optimizer, params, seed), splits, on_epoch=on_epoch)
    value = _final_val_loss(result)
    if result.diverged or value is None:
        trial.set_user_attr("diverged", True)
        raise optuna.TrialPruned("diverged")
    return value


def _final_val_loss(result: TrainResult) -> float | None:
    if not result.history:
        return None
    value = result.final.val_loss
    return value if math.isfinite(value) else None


def _epoch_event(optimizer: str, phase: str, metrics: EpochMetrics, epochs: int) -> dict:
    return {
        "kind": "epoch",
        "optimizer": optimizer,
        "phase": phase,
        "epoch": metrics.epoch,
        "epochs": epochs,
        "val_loss": metrics.val_loss,
    }


def param_importances(study: optuna.Study) -> dict[str, float]:
    """PED-ANOVA importances of the tuned hyperparameters ({} with too few trials).

    With about 20 trials the default top-10% target holds 2 trials; `target_quantile=0.25`
    keeps 5, enough for a stable estimate. A single tuned hyperparameter has importance 1.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = sorted({name for t in complete for name in t.params})
    if len(names) == 1:
        return {names[0]: 1.0}
    if len(complete) < 4 or not names:
        return {}
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (ValueError, RuntimeError, ZeroDivisionError):
            return {}
    return {name: float(value) for name, value in importances.items()}
