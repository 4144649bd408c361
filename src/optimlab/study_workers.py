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

from optimlab.errors import OptimlabError, RunError, UsageError, interrupted
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
        if interrupted(exc):
            raise SystemExit(130) from None
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

    On a server (PostgreSQL, many machines) every worker joins every study; `worker` (0, 1,
    ... on this machine) offsets the seed of the tuning sampler, so workers asking at the
    same time draw different points. In a file store (one machine) with several workers, each
    tuning study is tuned by one worker at a time, under a lock next to the store, and the
    others take the next free study: every study then proposes what a lone worker would, so
    any number of workers gives the numbers of one. Final runs are shared (each is fixed by
    its seed).
    """
    from optimlab.storage import file_path, open_storage

    storage = open_storage(
        url, heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period
    )
    store = file_path(url)
    if store is None or config.workers == 1:  # a server, or no other worker here
        for optimizer in config.optimizers:
            run_unit(config, storage, optimizer, worker, emit, checkpoints=checkpoints)
        return
    run = config.run_name()
    start = worker % len(config.optimizers)  # workers start on different studies
    remaining = config.optimizers[start:] + config.optimizers[:start]
    while remaining:
        optimizer, lock = _claim_tuning(store, {o: tune_study_name(run, o) for o in remaining})
        with lock:
            tune_unit(config, storage, optimizer, 0, emit)
        finals_unit(config, storage, optimizer, emit, checkpoints=checkpoints)
        remaining.remove(optimizer)


def _claim_tuning(store: Path, studies: dict[str, str]) -> tuple[str, Any]:
    """The first optimizer whose tuning study (`studies[optimizer]`) no other worker is
    tuning, with its held lock (an open file); when all are taken, wait for the first.
    The kernel frees the lock of a worker that dies."""
    import fcntl

    def lock(study: str, flags: int) -> Any:
        handle = open(store.with_name(f".{store.name}.{study}.lock"), "a")  # noqa: SIM115
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    for optimizer, study in studies.items():
        if (handle := lock(study, fcntl.LOCK_EX | fcntl.LOCK_NB)) is not None:
            return optimizer, handle
    first = next(iter(studies))
    return first, lock(studies[first], fcntl.LOCK_EX)


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
    tune_unit(config, storage, optimizer, worker, emit)
    finals_unit(config, storage, optimizer, emit, checkpoints=checkpoints)


def tune_unit(config: StudyConfig, storage: Any, optimizer: str, worker: int, emit: Emit) -> None:
    """Run `optimizer`'s tuning study until its budget is finished (joining other workers)."""
    import optuna

    from optimlab.tuning import make_pruner, make_sampler, tune

    tuning = optuna.create_study(
        storage=storage,
        study_name=tune_study_name(config.run_name(), optimizer),
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
    _final_study(config, storage, optimizer)  # both studies exist once work started
    splits = _splits(config.val_fraction, config.seed, config.device)
    tune(
        tuning,
        optimizer=optimizer,
        trials=config.trials,
        settings=config.train_settings(),
        splits=splits.without_test(),
        seed=config.seed,
        worker=worker,
        emit=emit,
    )


def finals_unit(
    config: StudyConfig,
    storage: Any,
    optimizer: str,
    emit: Emit,
    *,
    checkpoints: Path | None = None,
) -> None:
    """Run the best configuration of `optimizer`'s finished tuning on the final seeds."""
    import optuna

    from optimlab.finals import run_finals

    name = tune_study_name(config.run_name(), optimizer)
    best = best_trial(optuna.load_study(storage=storage, study_name=name))
    if best is None:  # every trial diverged or was pruned: nothing to run
        emit({"kind": "skip", "optimizer": optimizer})
        return
    run_finals(
        _final_study(config, storage, optimizer),
        optimizer=optimizer,
        params=best.params,
        tuning_trial=best.number,
        seeds=config.final_seeds(),
        settings=config.train_settings(),
        splits=_splits(config.val_fraction, config.seed, config.device),
        emit=emit,
        checkpoints=checkpoints,
    )


def _final_study(config: StudyConfig, storage: Any, optimizer: str):
    import optuna

    return optuna.create_study(
        storage=storage,
        study_name=final_study_name(config.run_name(), optimizer),
        direction="minimize",
        load_if_exists=True,
    )


def best_trial(study):
    """The COMPLETE trial with the lowest value (ties: the earliest), or None."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(complete, key=lambda t: (t.value, t.number), default=None)
