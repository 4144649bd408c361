"""Fault injection: `optimlab mnist1d` killed (SIGKILL, Ctrl-C) at seeded random moments and
rerun until it finishes loses no trial or seed, runs none twice, leaves nothing running or
queued, and ends with the numbers of an uninterrupted run (timing aside); a final run killed
mid-way resumes from its checkpoint, bit-identical to one trained without interruption;
worker processes die with their parent. `optimlab surfaces` and `optimlab run --quick`,
killed and rerun, write an uninterrupted run's numbers (slow).

The counting is benchmarks/chaos.py's `audit` (the run's storage against its config); the
chaos benchmark runs many more kill rounds. Divergence is covered where it is decided:
tests/test_tuning_core.py (diverged trials are PRUNED with diverged=True, the study goes on)
and tests/test_study_finals.py (a diverged final run counts and is not rerun).
"""

from __future__ import annotations

import importlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
# Two optimizers (one with DynamicAdam's gate), tuning and final runs: about 5 s uninterrupted.
SMALL = ["--optimizers", "adam,dynamic_adam", "--trials", "2", "--epochs", "2", "--seeds", "2"]
# One final run long enough to be caught mid-way (small batches: 160 steps an epoch).
FINAL = ["--optimizers", "dynamic_adam", "--trials", "1", "--epochs", "3", "--seeds", "1"]
FINAL_EPOCHS = 3
FINAL_BATCH = 20
INTERRUPTED = "interrupted; rerun the same command to resume."


@pytest.fixture(scope="module")
def chaos():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT))
        yield importlib.import_module("benchmarks.chaos")


@pytest.fixture(scope="module")
def reference(chaos, tmp_path_factory):
    """An uninterrupted run of SMALL: its wall time and its audit."""
    out = tmp_path_factory.mktemp("reference") / "run"
    seconds = chaos.run_to_end(SMALL, out)
    result = chaos.audit(out)
    assert (result.lost, result.duplicated, result.unfinished) == (0, 0, 0)
    assert result.completed == result.expected == 2 * (2 + 2)
    return seconds, result, out


def wait_until(condition, proc: subprocess.Popen, seconds: float = 60, what: str = "") -> None:
    """Poll `condition` until it holds; fail if the run ends first or it takes too long."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)  # started by chaos.start: its own group
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def assert_whole(chaos, run_dir: Path, reference) -> None:
    """The run finished everything exactly once, with the reference's numbers."""
    result = chaos.audit(run_dir)
    assert result.lost == 0 and result.duplicated == 0
    assert result.unfinished == 0 and result.stale_checkpoints == 0
    assert result.completed == result.expected == reference.expected
    assert chaos.differences(result.outcome, reference.outcome) == []


def test_sigkill_mid_study_loses_and_repeats_nothing(chaos, reference, tmp_path):
    """Killed at a seeded moment within a second after its first trial began (past the
    start-up, so inside the study): the rerun keeps what finished, reruns what ran."""
    out, log = tmp_path / "run", tmp_path / "stderr.log"
    proc = chaos.start(SMALL, out, log)
    wait_until(lambda: chaos.running_trials(out) > 0, proc, what="a running trial")
    assert chaos.kill_after(proc, random.Random(1).uniform(0, 1.0), log)
    chaos.run_to_end(SMALL, out)
    assert_whole(chaos, out, reference[1])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 6))
def test_many_sigkills_at_random_moments_lose_and_repeat_nothing(chaos, reference, tmp_path, seed):
    length, expected, _ = reference
    """Four kills, each at a moment drawn uniformly from the length of an uninterrupted run
    (start-up, tuning, final runs or result files; a run that ends first is not killed)."""
    rng = random.Random(seed)
    out, log = tmp_path / "run", tmp_path / "stderr.log"
    for _ in range(4):
        chaos.kill_after(chaos.start(SMALL, out, log), rng.uniform(0, length), log)
    chaos.run_to_end(SMALL, out)
    assert_whole(chaos, out, expected)


def checkpoint_of(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("*.pt"))
    return found[0] if found else None


def final_trials(chaos, run_dir: Path) -> list:
    ((_, finals),) = chaos._studies(run_dir).values()
    return finals.get_trials(deepcopy=False)


def uninterrupted_final(trial) -> object:
    """The final run of `trial`'s configuration and seed, trained here without interruption
    (one torch thread, as the study's process)."""
    from optimlab.mnist1d.data import load_mnist1d, make_splits
    from optimlab.mnist1d.train import train
    from optimlab.tuning import TrainSettings

    splits = make_splits(load_mnist1d(), val_fraction=0.2, seed=0, device="cpu")
    settings = TrainSettings(
        epochs=FINAL_EPOCHS, batch_size=FINAL_BATCH, model="mlp", meta_source=None, device="cpu"
    )
    config = settings.config("dynamic_adam", trial.user_attrs["hyperparameters"], 1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(config, splits)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "signal_number",
    [signal.SIGKILL, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["sigkill", "ctrl-c"],
)
def test_a_final_run_stopped_mid_way_resumes_from_its_checkpoint_bit_identically(
    chaos, tmp_path, signal_number
):
    """SIGKILL leaves the final trial RUNNING (the rerun fails and re-queues it); Ctrl-C
    (SIGINT to the process group, as a terminal sends it) fails it, exits 130 with the hint.
    Either way the rerun continues from the saved epochs: their wall times, kept in the
    checkpoint, come back unchanged, which a run retrained from scratch could not do."""
    out, log = tmp_path / "run", tmp_path / "stderr.log"
    args = [*FINAL, "--batch-size", str(FINAL_BATCH)]
    proc = chaos.start(args, out, log)
    wait_until(lambda: checkpoint_of(out) is not None, proc, what="a final-run checkpoint")
    os.killpg(proc.pid, signal_number)
    code = proc.wait(timeout=60)
    saved = tmp_path / "saved.pt"
    shutil.copy(checkpoint_of(out), saved)
    history = torch.load(saved, weights_only=True)["history"]
    stopped = final_trials(chaos, out)
    if signal_number == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert [t.state for t in stopped] == [TrialState.RUNNING]
    else:
        stderr = log.read_text()
        assert code == 130 and INTERRUPTED in stderr and "Traceback" not in stderr
        assert [t.state for t in stopped] == [TrialState.FAIL]

    chaos.run_to_end(args, out)
    trials = final_trials(chaos, out)
    done = [t for t in trials if t.state.is_finished() and t.state != TrialState.FAIL]
    assert len(done) == 1 and done[0].user_attrs["seed"] == 1000
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    resumed = done[0].user_attrs["history"]
    assert history and resumed[: len(history)] == history  # these epochs were not retrained
    clean = uninterrupted_final(done[0])
    untimed = [{k: v for k, v in m.items() if k != "seconds"} for m in resumed]
    expected = [{k: v for k, v in vars(m).items() if k != "seconds"} for m in clean.history]
    assert untimed == expected  # bit-identical, every epoch
    assert done[0].user_attrs["beta1"] == clean.beta1_history
    assert done[0].value == clean.final.test_loss
    assert checkpoint_of(out) is None  # removed once the run was told


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_rerun_finishes_with_the_same_numbers(
    chaos, reference, tmp_path
):
    out, log = tmp_path / "run", tmp_path / "stderr.log"
    proc = chaos.start(SMALL, out, log)
    wait_until(lambda: chaos.running_trials(out) > 0, proc, what="a running trial")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    stderr = log.read_text()
    assert INTERRUPTED in stderr and "Traceback" not in stderr
    assert chaos.running_trials(out) == 0  # the interrupted trial was failed, not left running
    chaos.run_to_end(SMALL, out)
    assert_whole(chaos, out, reference[1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc")
def test_ctrl_c_stops_every_worker_cleanly_and_the_rerun_finishes_the_budget(chaos, tmp_path):
    """Ctrl-C reaches the parent and its workers (one process group): all stop, the command
    exits 130 with the hint and no traceback, and the rerun finishes exactly the budget."""
    out, log = tmp_path / "run", tmp_path / "stderr.log"
    args = [*SMALL, "--workers", "2"]
    proc = chaos.start(args, out, log)
    wait_until(
        lambda: len(descendants(proc.pid)) >= 2 and chaos.running_trials(out) > 0,
        proc,
        what="two workers and a running trial",
    )
    children = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    stderr = log.read_text()
    assert INTERRUPTED in stderr and "Traceback" not in stderr, stderr[-2000:]
    # the workers were joined; multiprocessing's resource tracker (also a child) ignores
    # SIGINT and leaves once it reads the parent's end of its pipe close, moments later
    assert_all_gone(children, seconds=3)
    chaos.run_to_end(args, out)
    result = chaos.audit(out)
    assert (result.lost, result.duplicated, result.unfinished) == (0, 0, 0)
    assert result.completed == result.expected


SURFACES = ["surfaces", "--functions", "sphere,booth", "--optimizers", "adam,dynamic_adam"]
SURFACES_BUDGET = ["--steps", "100", "--starts", "4", "--tune-trials", "6", "--tune-starts", "2"]


def surfaces(out: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "optimlab", *SURFACES, *SURFACES_BUDGET, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


@pytest.mark.slow
def test_surfaces_killed_at_random_moments_resumes_to_the_same_numbers(tmp_path):
    """The surfaces benchmark keeps its finished tuning rounds: a rerun after SIGKILLs
    writes the numbers and trajectories of an uninterrupted run."""
    import numpy as np

    log = tmp_path / "stderr.log"
    begin = time.perf_counter()
    assert surfaces(tmp_path / "reference", log).wait(timeout=600) == 0, log.read_text()
    length = time.perf_counter() - begin
    rng = random.Random(11)
    for _ in range(3):
        proc = surfaces(tmp_path / "run", log)
        try:
            proc.wait(timeout=rng.uniform(0, length))
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.wait()
    assert surfaces(tmp_path / "run", log).wait(timeout=600) == 0, log.read_text()[-2000:]
    for name in ("summary.csv", "summary.json"):
        assert (tmp_path / "run" / name).read_text() == (tmp_path / "reference" / name).read_text()
    with np.load(tmp_path / "reference" / "trajectories.npz") as ref:
        with np.load(tmp_path / "run" / "trajectories.npz") as run:
            assert sorted(run.files) == sorted(ref.files)
            for key in ref.files:
                np.testing.assert_array_equal(run[key], ref[key])


@pytest.mark.slow
def test_optimlab_run_killed_at_a_random_moment_resumes_to_the_same_numbers(chaos, tmp_path):
    """`optimlab run --quick` (surfaces, then the study; about 2 minutes): killed once at a
    seeded moment and rerun, its study and surfaces numbers are an uninterrupted run's."""
    log = tmp_path / "stderr.log"

    def start(out: Path) -> subprocess.Popen:
        with open(log, "ab") as stderr:
            command = [sys.executable, "-m", "optimlab", "run", "--quick", "--out", str(out)]
            return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)

    begin = time.perf_counter()
    assert start(tmp_path / "reference").wait(timeout=900) == 0, log.read_text()[-2000:]
    length = time.perf_counter() - begin
    chaos.kill_after(start(tmp_path / "run"), random.Random(5).uniform(0, length), log)
    assert start(tmp_path / "run").wait(timeout=900) == 0, log.read_text()[-2000:]
    assert_whole(
        chaos, tmp_path / "run" / "mnist1d", chaos.audit(tmp_path / "reference" / "mnist1d")
    )
    for name in ("summary.csv", "summary.json"):
        ran, reference = (tmp_path / d / "surfaces" / name for d in ("run", "reference"))
        assert ran.read_text() == reference.read_text()


def descendants(pid: int) -> list[int]:
    """The processes whose parent chain leads to `pid` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_all_gone(pids: list[int], seconds: float) -> None:
    """Every process in `pids` has exited within `seconds`."""
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc")
def test_workers_die_with_a_killed_parent_and_the_rerun_finishes_the_budget(chaos, tmp_path):
    out, log = tmp_path / "run", tmp_path / "stderr.log"
    args = [*SMALL, "--workers", "2"]
    proc = chaos.start(args, out, log)
    wait_until(  # mid-trial (the journal lock of a killed writer dies with it)
        lambda: len(descendants(proc.pid)) >= 2 and chaos.running_trials(out) > 0,
        proc,
        what="two workers and a running trial",
    )
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)  # the parent alone: no chance to stop its workers
    proc.wait()
    assert_all_gone(children, seconds=3)
    chaos.run_to_end(args, out)
    result = chaos.audit(out)  # parallel proposals depend on timing: counts, not numbers
    assert (result.lost, result.duplicated, result.unfinished) == (0, 0, 0)
    assert result.completed == result.expected == 2 * (2 + 2)


def test_a_checkpoint_left_by_a_run_killed_after_it_was_told_is_removed(chaos, reference, tmp_path):
    """Killed between telling a final run and deleting its checkpoint (or while writing
    it): the rerun, finding every seed finished, deletes it without training anything."""
    from optimlab import finals

    run = tmp_path / "run"
    shutil.copytree(reference[2], run)
    (_, final), _ = chaos._studies(run).values()
    params = final.trials[0].user_attrs["hyperparameters"]
    path = finals._checkpoint(run / "checkpoints", final.study_name, params, 1000)
    path.write_bytes(b"left behind")
    stray = path.parent / f".{path.name}.x1y2z3.tmp"  # an atomic write a kill cut short
    stray.write_bytes(b"half")
    finals.run_finals(
        final,
        optimizer="adam",
        params=params,
        tuning_trial=0,
        seeds=[1000, 1001],
        settings=None,
        splits=None,
        checkpoints=run / "checkpoints",
    )
    assert not path.exists() and not stray.exists()
    assert chaos.audit(run).stale_checkpoints == 0


def test_the_audit_counts_a_seed_run_twice_a_trial_beyond_the_budget_and_a_lost_seed(
    chaos, reference, tmp_path
):
    """The counting itself, on a copy of the reference run: one final seed finished twice,
    one tuning trial too many, and a configured seed that never ran are each seen."""
    import json

    from optuna.distributions import FloatDistribution, IntDistribution

    run = tmp_path / "run"
    shutil.copytree(reference[2], run)
    (tune, finals), _ = chaos._studies(run).values()
    first = finals.trials[0]
    finals.add_trial(
        optuna.trial.create_trial(
            params=first.params,
            distributions={"seed": IntDistribution(0, 2**31 - 1)},
            value=first.value,
            user_attrs=first.user_attrs,
        )
    )
    tune.add_trial(
        optuna.trial.create_trial(
            params={"lr": 0.01},
            distributions={"lr": FloatDistribution(1e-4, 0.1, log=True)},
            value=1.0,
        )
    )
    saved = json.loads((run / "config.json").read_text())
    saved["resolved"]["final_seeds"].append(1002)  # as if --seeds 3: one more per optimizer
    (run / "config.json").write_text(json.dumps(saved))
    result = chaos.audit(run)
    assert (result.duplicated, result.lost) == (2, 2)
    assert result.completed == reference[1].completed
    assert chaos.differences(result.outcome, reference[1].outcome) == ["adam tuning"]


def test_a_resumed_run_says_once_what_was_already_finished():
    import io

    from rich.console import Console

    from optimlab.study import StudyConfig
    from optimlab.study_progress import StudyProgress

    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    config = StudyConfig(optimizers=["adam", "sgd"], trials=4, seeds=2)
    with StudyProgress(config, console=console) as progress:
        for finished in (3, 3, 4):
            progress.emit(
                {"kind": "count", "optimizer": "adam", "phase": "tune", "finished": finished}
            )
        progress.emit({"kind": "count", "optimizer": "sgd", "phase": "tune", "finished": 0})
        progress.emit({"kind": "count", "optimizer": "sgd", "phase": "final", "finished": 1})
    assert console.file.getvalue().splitlines() == [
        "adam: 3/4 tuning trials already finished; resuming"
    ]
