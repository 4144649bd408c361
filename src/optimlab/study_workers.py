"""The study's workers: each walks every optimizer (tuning, then final runs) in the shared
storage, and leaves a study only when its budget is finished.

Workers share work through Optuna's storage alone, so the same code runs as one process,
as `workers` processes on this machine, or as commands started on many machines against
one PostgreSQL database. Worker processes send their progress events to the parent through
a queue; an error in one stops the others.
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optimlab.errors import OptimlabError, RunError, UsageError
from optimlab.study import CONFIG_ATTR, StudyConfig, final_study_name, tune_study_name

Emit = Callable[[dict[str, Any]], None]
STOP_GRACE = 5.0  # seconds that interrupted workers get to fail their trials and exit


def run_workers(
    config: StudyConfig, url: str, emit: Emit, *, checkpoints: Path | None = None
) -> None:
    """Run `config.workers` workers on this machine until every study of the run is finished.

    `checkpoints`: a directory for the final runs' per-epoch checkpoints, so a final run
    that was killed resumes from its last epoch (None: final runs restart from scratch).
    """
    if config.workers == 1:
        _setup_process(config.threads)
        run_worker(config, url, 0, emit, checkpoints=checkpoints)
        return
    from optimlab.storage import command_started

    context = multiprocessing.get_context("spawn")  # safe with torch; fork is not
    events = context.Queue()
    started = command_started()
    processes = [
        context.Process(
            target=_worker_main,
            args=(config.to_dict_raw(), url, index, events, checkpoints, os.getpid(), started),
            name=f"optimlab-worker-{index}",
        )
        for index in range(config.workers)
    ]
    for process in processes:
        process.start()
    try:
        error = _collect(processes, events, emit)
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too (one process group): each fails its trial (run
        # again on resume) and exits; terminated mid-way, it would leave the trial RUNNING.
        _stop(processes, grace=STOP_GRACE)
        raise
    except BaseException:
        _stop(processes)
        raise
    if error is not None:
        _stop(processes)
        raise error
    for process in processes:
        process.join()
    if all(p.exitcode != 0 for p in processes):
        raise RunError("every worker stopped before the study was finished; rerun to resume")


def _collect(processes: list, events: Any, emit: Emit) -> OptimlabError | None:
    """Pass the workers' events on until all have exited; the first error, if any."""
    lost: set[int] = set()
    while True:
        alive = any(p.is_alive() for p in processes)
        try:
            while True:
                event = events.get(timeout=0.1) if alive else events.get_nowait()
                if event["kind"] == "error":
                    return event["error"]
                emit(event)
        except queue.Empty:
            pass
        for index, process in enumerate(processes):
            if process.exitcode is not None and process.exitcode < 0 and index not in lost:
                lost.add(index)  # killed by a signal: the others fail its trial and rerun it
                emit({"kind": "note", "message": f"worker {index} was killed; the others go on"})
        if not alive:
            return None


def _stop(processes: list, grace: float = 0.0) -> None:
    """Terminate the workers still running after `grace` seconds, and wait for all."""
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()


def _worker_main(
    config: dict[str, Any],
    url: str,
    index: int,
    events: Any,
    checkpoints: Path | None,
    parent: int,
    started: datetime.datetime,
) -> None:
    """A worker process: run the study; errors go to the parent as one-line messages."""
    from optimlab.storage import set_command_started

    try:
        _die_with_parent(parent)
        set_command_started(started)  # the parent's: trials older than that are orphans
        parsed = StudyConfig.from_dict(config)
        _setup_process(parsed.threads)
        run_worker(parsed, url, index, events.put, checkpoints=checkpoints)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except OptimlabError as exc:
        events.put({"kind": "error", "error": type(exc)(str(exc))})
        raise SystemExit(1) from None
    except BaseException as exc:
        traceback.print_exc()
        message = f"worker {index}: {type(exc).__name__}: {exc}".splitlines()[0]
        events.put({"kind": "error", "error": RunError(message)})
        raise SystemExit(1) from None


def _die_with_parent(parent: int) -> None:
    """Never outlive the parent, even when it is SIGKILLed (no chance to stop us then).

    Linux delivers SIGKILL to this process the moment its parent dies (PR_SET_PDEATHSIG);
    elsewhere a daemon thread polls the parent's pid. Either way the trial this worker was
    running stays RUNNING in the storage, and the next run fails and re-runs it.
    """
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="optimlab-parent-watch", daemon=True).start()


def _setup_process(threads: int) -> None:
    import optuna
    import torch

    torch.set_num_threads(threads)
    # Optuna's own log lines (trial finished, surplus trial failed) would drown the progress.
    optuna.logging.set_verbosity(optuna.logging.ERROR)


@functools.lru_cache(maxsize=2)
def _splits(val_fraction: float, seed: int, device: str):
    from optimlab.mnist1d.data import load_mnist1d, make_splits

    return make_splits(load_mnist1d(), val_fraction=val_fraction, seed=seed, device=device)


def run_worker(
    config: StudyConfig, url: str, worker: int, emit: Emit, *, checkpoints: Path | None = None
) -> None:
    """One worker: every optimizer in turn, each until its tuning and final runs are done.

    `worker` (0, 1, ... on this machine) offsets the seed of the tuning sampler, so workers
    asking at the same time draw different points.
    """
    from optimlab.storage import open_storage

    storage = open_storage(
        url, heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period
    )
    for optimizer in config.optimizers:
        run_unit(config, storage, optimizer, worker, emit, checkpoints=checkpoints)


def run_unit(
    config: StudyConfig,
    storage: Any,
    optimizer: str,
    worker: int,
    emit: Emit,
    *,
    checkpoints: Path | None = None,
) -> None:
    """Tune `optimizer`, then run its best configuration on the final seeds."""
    import optuna

    from optimlab.finals import run_finals
    from optimlab.tuning import make_pruner, make_sampler, tune

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
    stored = tuning.user_attrs.get(CONFIG_ATTR)
    if stored is not None and (changed := config.differences(StudyConfig.from_dict(stored))):
        raise UsageError(
            f"study {tuning.study_name} was started with another experiment "
            f"({'; '.join(changed)}); use the same options or another --study-name"
        )
    tuning.set_user_attr(CONFIG_ATTR, config.to_dict())  # for `optimlab report --storage`
    finals = optuna.create_study(
        storage=storage,
        study_name=final_study_name(run, optimizer),
        direction="minimize",
        load_if_exists=True,
    )
    tune(
        tuning,
        optimizer=optimizer,
        trials=config.trials,
        settings=settings,
        splits=splits.without_test(),
        seed=config.seed,
        worker=worker,
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
        checkpoints=checkpoints,
    )


def best_trial(study):
    """The COMPLETE trial with the lowest value (ties: the earliest), or None."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(complete, key=lambda t: (t.value, t.number), default=None)
