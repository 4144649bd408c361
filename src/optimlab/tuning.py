"""Optuna tuning of one optimizer on mnist1d: search spaces, objective, pruning, budget.

Every optimizer gets the same number of finished trials (COMPLETE or PRUNED), exactly, also
when many workers share the study (see `slot`). A trial that crashes or is killed ends FAIL
and is run again, so it costs no budget. The objective is the validation loss after the
epoch budget; it is reported each epoch for the MedianPruner. A diverged trial is PRUNED
with `diverged=True` (a NaN value would be a FAIL that teaches TPE nothing). Tuning never
sees the test set: it trains on `splits.without_test()`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optimlab.errors import UsageError
from optimlab.mnist1d.data import Splits
from optimlab.mnist1d.train import EpochMetrics, TrainConfig, TrainResult, train
from optimlab.mnist1d.variants import VARIANTS, Variant
from optimlab.storage import SURPLUS_ATTR, WORKER_ATTR, reclaim_dead_trials, worker_id

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PRUNER_STARTUP_TRIALS = 5  # trials that always run to the end before the pruner acts
# The first fifth of training is never pruned: early losses favour large learning rates,
# which start fast and may end worse.
PRUNER_WARMUP_FRACTION = 0.2
POLL_SECONDS = 0.2  # how often a worker waiting for others looks at the storage again

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


def make_sampler(seed: int, slot: int = 0) -> optuna.samplers.TPESampler:
    """TPE seeded from a worker's seed and the trial's slot (its place in the budget).

    Reseeding before every trial makes trial k depend only on (seed, history of k trials),
    so a study interrupted and resumed proposes exactly what an uninterrupted one would.
    """
    return optuna.samplers.TPESampler(seed=(seed * 1_000_003 + slot) % 2**32)


def warmup_epochs(epochs: int) -> int:
    """Epochs a trial runs before it may be pruned (epochs are reported from 1)."""
    return max(1, int(epochs * PRUNER_WARMUP_FRACTION))


class MedianPruner(optuna.pruners.MedianPruner):
    """Optuna's MedianPruner, reading the completed trials once per trial, not every epoch.

    That read costs milliseconds, a fifth of a small model's epoch. With one worker no trial
    completes while another runs, so every verdict is the one Optuna's pruner gives; with
    several, a trial is judged against the trials completed when it was first judged.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._snapshot: tuple[tuple[str, int], _Completed] | None = None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        key = (study.study_name, trial.number)
        if self._snapshot is None or self._snapshot[0] != key:
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._snapshot = key, _Completed(study.direction, complete)
        return super().prune(self._snapshot[1], trial)


class _Completed:
    """What PercentilePruner.prune reads of a study: its direction and its completed trials
    (here a snapshot)."""

    def __init__(self, direction: optuna.study.StudyDirection, complete: list[FrozenTrial]):
        self.direction = direction
        self._complete = complete

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        assert tuple(states or ()) == (TrialState.COMPLETE,), "only completed trials are kept"
        return list(self._complete)


def make_pruner(epochs: int) -> MedianPruner:
    return MedianPruner(
        n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=warmup_epochs(epochs)
    )


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class Surplus(Exception):
    """The trial was asked once its work was already covered: it is failed without running."""


def slot(study: optuna.Study, trial: optuna.Trial) -> int:
    """The trial's place in the shared budget: how many trials before it are not FAIL.

    The storage numbers trials atomically in the order it creates them, whichever worker
    asks, and a trial that will finish is never FAIL. So when `slot >= budget`, earlier
    trials (finished, running or queued) already cover the budget and this one must not run:
    however many workers ask at once, finished trials never exceed the budget. A failed
    trial frees its place, and the next trial takes it (a lone worker: the same slot, so the
    same proposal as if the failure had never happened).
    """
    return sum(
        t.number < trial.number and t.state != TrialState.FAIL
        for t in study.get_trials(deepcopy=False)
    )


def surplus(trial: optuna.Trial) -> Surplus:
    """Mark `trial` as surplus (a user attribute) and return the exception that fails it."""
    trial.set_user_attr(SURPLUS_ATTR, True)
    return Surplus(f"trial {trial.number} is beyond the budget")


def run_one(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> FrozenTrial | None:
    """Run one trial through `Study.optimize`, so Optuna itself fails stale trials before
    asking, beats the heartbeat while the trial runs (PostgreSQL) and tells the result.

    Returns the finished trial (a `Surplus` one is FAIL with its mark), or None when another
    worker failed the trial meanwhile because its heartbeat came too late (it was re-queued
    and runs elsewhere). Errors of the objective propagate; their trial is FAIL.
    """
    asked: list[optuna.Trial] = []
    raised: list[BaseException] = []
    told: list[FrozenTrial] = []

    def wrapped(trial: optuna.Trial) -> float:
        asked.append(trial)
        try:
            return objective(trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise  # the trial was failed under us: handled below
        except BaseException as exc:
            raised.append(exc)
            raise

    try:
        study.optimize(
            wrapped, n_trials=1, catch=(Surplus,), callbacks=[lambda _, t: told.append(t)]
        )
    except Exception as exc:
        if any(exc is e for e in raised) or not asked or not _failed(study, asked[0].number):
            raise
        return None
    return told[0]


def drop_queued(study: optuna.Study) -> None:
    """Fail, as surplus, the trials still queued once the work is done: copies of failed
    trials whose place another trial took. A finished study then holds no WAITING trial."""

    def beyond(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        raise surplus(trial)

    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        run_one(study, beyond)


def _failed(study: optuna.Study, number: int) -> bool:
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return trial.state == TrialState.FAIL


def tune(
    study: optuna.Study,
    *,
    optimizer: str,
    trials: int,
    settings: TrainSettings,
    splits: Splits,
    seed: int,
    worker: int = 0,
    emit: Emit = lambda event: None,
    poll: float = POLL_SECONDS,
) -> None:
    """Run trials of `optimizer` until exactly `trials` have finished in `study`, sharing the
    budget with every worker on the same storage (and resuming what is stored).

    A worker returns only when the budget is finished: while the rest of it is running on
    other workers it waits, failing stale trials and running the re-queued copies. `seed`
    seeds every trial's training run (one seed for all trials, so configurations are compared
    on the same initialization and data order); the sampler is seeded from `seed + worker`
    and the trial's slot.
    """
    if splits.x_test is not None or splits.y_test is not None:
        raise AssertionError("tuning must not see the test set: pass splits.without_test()")
    space = search_space(VARIANTS[optimizer])
    index = {}

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        place = slot(study, trial)
        if place >= trials:
            raise surplus(trial)
        study.sampler = make_sampler(seed + worker, place)
        index["value"] = place + 1
        emit({"kind": "unit", "optimizer": optimizer, "phase": "tune", "index": place + 1})
        return _objective(trial, optimizer, space, settings, splits, seed, emit)

    waited = False
    while True:
        reclaim_dead_trials(study)
        states = Counter(t.state for t in study.get_trials(deepcopy=False))
        finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
        emit({"kind": "count", "optimizer": optimizer, "phase": "tune", "finished": finished})
        if finished >= trials:
            drop_queued(study)
            return
        queued = states[TrialState.WAITING]
        if finished + states[TrialState.RUNNING] >= trials and not queued:
            emit({"kind": "wait", "optimizer": optimizer, "phase": "tune"})
            time.sleep(poll)  # the rest of the budget is running on other workers
            waited = True
            continue
        if waited and not queued:
            # A place just freed up: when another worker has failed a dead trial, its copy is
            # queued a moment later. Look once more so the copy, not a new trial, takes it.
            waited = False
            time.sleep(poll)
            continue
        waited = False
        trial = run_one(study, objective)
        if trial is None or trial.user_attrs.get(SURPLUS_ATTR):
            continue
        state = trial.state.name
        if trial.state == TrialState.PRUNED and trial.user_attrs.get("diverged"):
            state = "DIVERGED"
        emit(
            {
                "kind": "done",
                "optimizer": optimizer,
                "phase": "tune",
                "index": index["value"],
                "state": state,
                "value": trial.value if trial.state == TrialState.COMPLETE else None,
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
