"""Final runs: an optimizer's best configuration on K fresh seeds, recorded as Optuna trials.

Each (optimizer, seed) run is one unit of work in the storage: a trial of the study
`<run>-<optimizer>-final`, enqueued with the seed as a fixed parameter and the
hyperparameters as a user attribute, so the trial describes its own work and any process
that pops it can run it. Its metrics (per-epoch history, per-step beta1, test metrics) are
user attributes; its value is the test loss. A diverged run is PRUNED with diverged=True.
Only here is the test set used.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optimlab.mnist1d.data import Splits
from optimlab.mnist1d.train import EpochMetrics, train
from optimlab.storage import WORKER_ATTR, heartbeat, reclaim_dead_trials, worker_id
from optimlab.tuning import FINISHED, Emit, TrainSettings, _epoch_event

SEED_RANGE = (0, 2**31 - 1)


def key(params: dict[str, Any]) -> str:
    """A canonical form of a configuration, to match final runs with the current best."""
    return json.dumps(params, sort_keys=True)


def final_trials(study: optuna.Study, params: dict[str, Any]) -> dict[int, FrozenTrial]:
    """The finished final runs of configuration `params`, by seed."""
    wanted = key(params)
    return {
        int(t.user_attrs["seed"]): t
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if key(t.user_attrs.get("hyperparameters", {})) == wanted
    }


def run_finals(
    study: optuna.Study,
    *,
    optimizer: str,
    params: dict[str, float],
    tuning_trial: int,
    seeds: list[int],
    settings: TrainSettings,
    splits: Splits,
    emit: Emit = lambda event: None,
) -> None:
    """Run the missing seeds of `params` (resuming: finished seeds are kept)."""
    reclaim_dead_trials(study)
    wanted = key(params)
    queued = {
        int(t.user_attrs["seed"])
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if key(t.user_attrs.get("hyperparameters", {})) == wanted
    }
    done = set(final_trials(study, params))
    for seed in seeds:
        if seed not in done and seed not in queued:
            attrs = {"seed": seed, "optimizer": optimizer, "hyperparameters": params}
            study.enqueue_trial({"seed": seed}, user_attrs={**attrs, "tuning_trial": tuning_trial})
    index = len(done)
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = study.ask()
        if "seed" not in trial.user_attrs:  # another worker took the last one
            study.tell(trial, state=TrialState.FAIL)
            break
        index += 1
        seed = trial.suggest_int("seed", *SEED_RANGE)
        trial.set_user_attr(WORKER_ATTR, worker_id())
        emit({"kind": "unit", "optimizer": optimizer, "phase": "final", "index": index})
        try:
            with heartbeat(study, trial):
                state, value = _run_one(trial, seed, settings, splits, emit)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value, state=state)
        emit(
            {
                "kind": "done",
                "optimizer": optimizer,
                "phase": "final",
                "index": index,
                "state": "DIVERGED" if state == TrialState.PRUNED else "COMPLETE",
                "value": value,
            }
        )


def _run_one(
    trial: optuna.Trial, seed: int, settings: TrainSettings, splits: Splits, emit: Emit
) -> tuple[TrialState, float | None]:
    optimizer = trial.user_attrs["optimizer"]
    params = trial.user_attrs["hyperparameters"]

    def on_epoch(metrics: EpochMetrics) -> None:
        emit(_epoch_event(optimizer, "final", metrics, settings.epochs))

    start = time.perf_counter()
    result = train(settings.config(optimizer, params, seed), splits, on_epoch=on_epoch)
    trial.set_user_attr("seconds", time.perf_counter() - start)
    trial.set_user_attr("history", [asdict(m) for m in result.history])
    trial.set_user_attr("beta1", [float(b) for b in result.beta1_history])
    test_loss = result.final.test_loss if result.history else None
    diverged = result.diverged or test_loss is None or not math.isfinite(test_loss)
    trial.set_user_attr("diverged", diverged)
    if diverged:
        return TrialState.PRUNED, None
    return TrialState.COMPLETE, float(test_loss)
