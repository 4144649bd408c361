"""Running the study's units (one optimizer: tuning, then finals) in one or more processes.

A unit depends only on the config, the storage and the optimizer, so running units in
parallel processes gives the same numbers as running them in turn. Worker processes send
their progress events to the parent through a queue.
"""

from __future__ import annotations

import functools
import multiprocessing
import queue
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

from optimlab.study import StudyConfig, final_study_name, tune_study_name

Emit = Callable[[dict[str, Any]], None]

# Relative cost of a unit (measured: lookahead variants run an extra forward/backward per step,
# the published procedure a second-order graph): the costliest start first, so parallel
# workers finish together.
COST = {"dynamic_adam_published": 3.0, "dynamic_adam": 1.5, "dynamic_adam_train": 1.5}


def run_units(config: StudyConfig, url: str, emit: Emit) -> None:
    """Tune and run the finals of every optimizer of `config`, resuming what is stored."""
    jobs = config.processes()
    if jobs == 1:
        _setup_process(config.threads)
        for optimizer in config.optimizers:
            run_unit(config, url, optimizer, emit)
        return
    order = sorted(config.optimizers, key=lambda name: -COST.get(name, 1.0))
    context = multiprocessing.get_context("spawn")  # safe with torch; fork is not
    events = context.Queue()
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(events, config.threads)
    ) as pool:
        futures = [pool.submit(_worker_unit, config.to_dict_raw(), url, o) for o in order]
        try:
            pending = set(futures)
            while pending:
                _drain(events, emit, timeout=0.1)
                done, pending = wait(pending, timeout=0, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()  # re-raise a worker's error here
            _drain(events, emit, timeout=0)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _drain(events: Any, emit: Emit, timeout: float) -> None:
    try:
        emit(events.get(timeout=timeout))
        while True:
            emit(events.get_nowait())
    except queue.Empty:
        pass


_EVENTS: Any = None


def _init_worker(events: Any, threads: int) -> None:
    global _EVENTS
    _EVENTS = events
    _setup_process(threads)


def _worker_unit(config: dict[str, Any], url: str, optimizer: str) -> None:
    run_unit(StudyConfig.from_dict(config), url, optimizer, _EVENTS.put)


def _setup_process(threads: int) -> None:
    import optuna
    import torch

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@functools.lru_cache(maxsize=2)
def _splits(val_fraction: float, seed: int, device: str):
    from optimlab.mnist1d.data import load_mnist1d, make_splits

    return make_splits(load_mnist1d(), val_fraction=val_fraction, seed=seed, device=device)


def run_unit(config: StudyConfig, url: str, optimizer: str, emit: Emit) -> None:
    """Tune `optimizer`, then run its best configuration on the final seeds."""
    import optuna

    from optimlab.finals import final_trials, run_finals
    from optimlab.storage import open_storage
    from optimlab.tuning import count_finished, make_pruner, make_sampler, tune

    storage = open_storage(url)
    run = config.run_name()
    splits = _splits(config.val_fraction, config.seed, config.device)
    settings = config.train_settings()
    tuning = optuna.create_study(
        storage=storage,
        study_name=tune_study_name(run, optimizer),
        sampler=make_sampler(config.seed),
        pruner=make_pruner(config.epochs),
        direction="minimize",
        load_if_exists=True,
    )
    finals = optuna.create_study(
        storage=storage,
        study_name=final_study_name(run, optimizer),
        direction="minimize",
        load_if_exists=True,
    )
    best = best_trial(tuning)
    emit(
        {
            "kind": "start",
            "optimizer": optimizer,
            "tuned": count_finished(tuning),
            "finished": len(final_trials(finals, best.params)) if best else 0,
        }
    )
    tune(
        tuning,
        optimizer=optimizer,
        trials=config.trials,
        settings=settings,
        splits=splits.without_test(),
        seed=config.seed,
        emit=emit,
    )
    best = best_trial(tuning)
    if best is None:  # every trial diverged or was pruned: nothing to run
        emit({"kind": "skip", "optimizer": optimizer})
        return
    run_finals(
        finals,
        optimizer=optimizer,
        params=best.params,
        tuning_trial=best.number,
        seeds=config.final_seeds(),
        settings=settings,
        splits=splits,
        emit=emit,
    )


def best_trial(study):
    """The COMPLETE trial with the lowest value (ties: the earliest), or None."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(complete, key=lambda t: (t.value, t.number), default=None)
