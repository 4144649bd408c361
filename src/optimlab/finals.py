"""Final runs: an optimizer's best configuration on K fresh seeds, recorded as Optuna trials.

Each (optimizer, seed) run is one unit of work in the storage: a trial of the study
`<run>-<optimizer>-final`, enqueued with the seed as a fixed parameter and the
hyperparameters as a user attribute, so the trial describes its own work and any worker
that pops it, on any machine, can run it. Exactly one run per seed finishes. Its metrics
(per-epoch history, per-step beta1, test metrics) are user attributes; its value is the
test loss. A diverged run is PRUNED with diverged=True.
With a checkpoint directory, each run saves a checkpoint after every epoch (model, optimizer
with DynamicAdam's gate, data-order generators), named by run, optimizer, configuration and
seed: a run that was killed is failed and queued again, and its copy resumes from the last
epoch, bit-identical to an uninterrupted run. The checkpoint is removed once the run is told.
Only here is the test set used.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optimlab import atomic
from optimlab.mnist1d.data import Splits
from optimlab.mnist1d.train import EpochMetrics, train
from optimlab.storage import SURPLUS_ATTR, WORKER_ATTR, reclaim_dead_trials, worker_id
from optimlab.tuning import (
    FINISHED,
    POLL_SECONDS,
    Emit,
    TrainSettings,
    _epoch_event,
    drop_queued,
    run_one,
    surplus,
)

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
    poll: float = POLL_SECONDS,
    checkpoints: Path | None = None,
) -> None:
    """Run the missing seeds of `params`, sharing them with every worker on the storage.

    Returns when every seed has finished (resuming: finished seeds are kept). A seed that is
    neither finished nor queued nor running is enqueued; then this worker pops a queued one,
    or waits while the rest runs elsewhere (failing stale runs, whose copies are re-queued).
    Two workers may enqueue the same seed at once: only the lowest-numbered copy runs.
    """
    wanted = key(params)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        if "seed" not in trial.user_attrs or _taken(study, trial):
            raise surplus(trial)  # nothing was queued, or an earlier copy covers this seed
        seed = trial.suggest_int("seed", *SEED_RANGE)
        index = seeds.index(seed) + 1 if seed in seeds else len(seeds)
        emit({"kind": "unit", "optimizer": optimizer, "phase": "final", "index": index})
        checkpoint = _checkpoint(checkpoints, study.study_name, params, seed)
        test_loss = _train(trial, seed, settings, splits, emit, checkpoint)
        if test_loss is None:
            raise optuna.TrialPruned("diverged")  # PRUNED with diverged=True: counted, not rerun
        return test_loss

    while True:
        reclaim_dead_trials(study)
        ours = [t for t in study.get_trials(deepcopy=False) if _key(t) == wanted]
        done = {int(t.user_attrs["seed"]) for t in ours if t.state in FINISHED}
        emit({"kind": "count", "optimizer": optimizer, "phase": "final", "finished": len(done)})
        if done >= set(seeds):
            drop_queued(study)
            for seed in done:  # a run killed after it was told, before its checkpoint went
                _checkpoint(checkpoints, study.study_name, params, seed, remove=True)
            return
        pending = {int(t.user_attrs["seed"]) for t in ours if not t.state.is_finished()}
        for seed in seeds:
            if seed not in done and seed not in pending:
                attrs = {"seed": seed, "optimizer": optimizer, "hyperparameters": params}
                study.enqueue_trial(
                    {"seed": seed}, user_attrs={**attrs, "tuning_trial": tuning_trial}
                )
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            emit({"kind": "wait", "optimizer": optimizer, "phase": "final"})
            time.sleep(poll)  # the remaining seeds are running on other workers
            continue
        trial = run_one(study, objective)
        if trial is None or trial.user_attrs.get(SURPLUS_ATTR):
            continue
        if "seed" in trial.params:  # told: its checkpoint is no longer needed
            _checkpoint(checkpoints, study.study_name, params, trial.params["seed"], remove=True)
        emit(
            {
                "kind": "done",
                "optimizer": optimizer,
                "phase": "final",
                "index": len(done) + 1,
                "state": "DIVERGED" if trial.state == TrialState.PRUNED else "COMPLETE",
                "value": trial.value if trial.state == TrialState.COMPLETE else None,
            }
        )


def _key(trial: FrozenTrial) -> str:
    return key(trial.user_attrs.get("hyperparameters", {}))


def _taken(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether an earlier trial that did not fail runs (or ran) the same configuration and seed."""
    mine = (_key(trial), trial.user_attrs["seed"])
    return any(
        t.number < trial.number
        and t.state != TrialState.FAIL
        and (_key(t), t.user_attrs.get("seed")) == mine
        for t in study.get_trials(deepcopy=False)
    )


def _checkpoint(
    directory: Path | None, study: str, params: dict[str, Any], seed: int, *, remove: bool = False
) -> Path | None:
    """The checkpoint file of one final run (None without a directory); `remove` deletes it,
    and the temporary copy a kill during its atomic write may have left."""
    if directory is None:
        return None
    digest = hashlib.sha256(key(params).encode()).hexdigest()[:12]
    path = Path(directory) / f"{study}-{digest}-seed{seed}.pt"
    if remove:
        atomic.remove(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _train(
    trial: optuna.Trial,
    seed: int,
    settings: TrainSettings,
    splits: Splits,
    emit: Emit,
    checkpoint: Path | None = None,
) -> float | None:
    """Train one final run, record its metrics on the trial; its test loss (None: diverged)."""
    optimizer = trial.user_attrs["optimizer"]
    params = trial.user_attrs["hyperparameters"]

    def on_epoch(metrics: EpochMetrics) -> None:
        emit(_epoch_event(optimizer, "final", metrics, settings.epochs))

    config = settings.config(optimizer, params, seed)
    result = train(config, splits, on_epoch=on_epoch, checkpoint=checkpoint)
    # Every epoch's time, those restored from a checkpoint included: the run's cost, however
    # often it was interrupted.
    trial.set_user_attr("seconds", sum(m.seconds for m in result.history))
    trial.set_user_attr("history", [asdict(m) for m in result.history])
    trial.set_user_attr("beta1", [float(b) for b in result.beta1_history])
    test_loss = result.final.test_loss if result.history else None
    diverged = result.diverged or test_loss is None or not math.isfinite(test_loss)
    trial.set_user_attr("diverged", diverged)
    return None if diverged else float(test_loss)
