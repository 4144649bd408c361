"""Chaos: SIGKILL a quick mnist1d study at random moments, resume it, count what was lost.

An uninterrupted run gives the reference numbers and the length L of a run. Then each round
starts the same command on a run directory and SIGKILLs it after a delay drawn uniformly
from [0, L) by a seeded random.Random: during start-up, tuning, a final run, or while the
result files are written. A kill "hits" a trial when the storage holds a RUNNING trial right
after it (the process died inside a trial), and a final run when a checkpoint is left.
A run directory is killed round after round until a run in it finishes before its kill
(or, after the last round, is let finish): its storage is then audited (finished tuning
trials against the budget, final seeds against the configured ones, nothing left RUNNING or
queued, no checkpoint left) and its numbers are compared with the reference, timing aside.
The next round starts a fresh directory.

    python -m benchmarks.chaos                    # 20 rounds (a few minutes)
    python -m benchmarks.chaos --rounds 50 --seed 3
    python -m benchmarks.chaos --quick            # 5 rounds on a smaller study, not saved

Prints `rounds: R, kills that hit a running trial: H, trials lost: 0, duplicated: 0, final
runs identical: yes` and saves the details to results/chaos.json; exits 1 if anything was
lost, duplicated, left unfinished or different.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STUDY = ["--optimizers", "adam,dynamic_adam", "--trials", "4", "--epochs", "3", "--seeds", "2"]
QUICK_STUDY = [*STUDY[:2], "--trials", "2", "--epochs", "2", "--seeds", "2"]
TIMING = ("seconds",)  # wall-clock fields: the only numbers allowed to differ
COUNTS = ("lost", "duplicated", "unfinished", "stale_checkpoints", "stray_temp_files")
RUN_TIMEOUT = 600  # seconds: an uninterrupted run of the command must end within this


def command(args: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "optimlab", "mnist1d", *args, "--out", str(out)]


def environment() -> dict[str, str]:
    """This environment without $OPTIMLAB_STORAGE: every run keeps its own study.db."""
    return {k: v for k, v in os.environ.items() if k != "OPTIMLAB_STORAGE"}


def start(args: list[str], out: Path, log: Path | None = None) -> subprocess.Popen:
    """Start the study command in its own process group, with Ctrl-C's default action (a
    shell's background job ignores SIGINT, and Python then never raises KeyboardInterrupt):
    a signal to the group then reaches every process of it, as a terminal sends Ctrl-C.
    Its stderr goes to `log`."""
    with open(log or os.devnull, "ab") as stderr:
        return subprocess.Popen(
            command(args, out),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=environment(),
            start_new_session=True,
            preexec_fn=_default_sigint,
        )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_to_end(args: list[str], out: Path, timeout: float = RUN_TIMEOUT) -> float:
    """Run the command to its end; its wall time in seconds (RuntimeError if it fails)."""
    begin = time.perf_counter()
    proc = subprocess.run(
        command(args, out), capture_output=True, text=True, env=environment(), timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - begin


def kill_after(proc: subprocess.Popen, delay: float, log: Path | None = None) -> bool:
    """SIGKILL `proc` after `delay` seconds unless it ended first; whether it was killed."""
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    if proc.returncode != 0:
        tail = log.read_text()[-2000:] if log else ""
        raise RuntimeError(f"the study failed on its own (exit {proc.returncode}): {tail}")
    return False


def _run_info(run_dir: Path) -> tuple[dict[str, Any], str, str]:
    """The run's config, run name and storage URL (its own store wherever the run lies)."""
    from optimlab.storage import default_url

    saved = json.loads((run_dir / "config.json").read_text())
    config = saved["config"]
    url = config["storage"] or default_url(run_dir, processes=config["workers"])
    return config, saved["resolved"]["run_name"], url


def _studies(run_dir: Path) -> dict[str, tuple[Any, Any]] | None:
    """Per optimizer, its (tuning, final) Optuna studies; None before the run created them."""
    import optuna

    from optimlab.storage import open_storage
    from optimlab.study import final_study_name, tune_study_name

    if not (run_dir / "config.json").exists():
        return None
    config, run, url = _run_info(run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    names = set(optuna.get_all_study_names(storage))
    studies = {}
    for optimizer in config["optimizers"]:
        pair = (tune_study_name(run, optimizer), final_study_name(run, optimizer))
        studies[optimizer] = tuple(
            optuna.load_study(study_name=n, storage=storage) if n in names else None for n in pair
        )
    return studies


def running_trials(run_dir: Path) -> int:
    """How many trials of the run are RUNNING (after a kill: the ones it interrupted)."""
    from optuna.trial import TrialState

    studies = _studies(run_dir) or {}
    return sum(
        len(s.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        for pair in studies.values()
        for s in pair
        if s is not None
    )


@dataclass
class Audit:
    """What a finished run's storage holds, against its config."""

    expected: int  # tuning trials (budget) plus final seeds, over all optimizers
    completed: int  # finished (COMPLETE or PRUNED) tuning trials and final seeds, up to those
    lost: int  # budgeted trials or configured seeds that never finished
    duplicated: int  # finished trials beyond the budget, or a second run of a seed or trial
    unfinished: int  # trials left RUNNING or WAITING
    stale_checkpoints: int  # final-run checkpoints left in the run directory
    stray_temp_files: int  # temporary files of atomic writes a kill interrupted
    outcome: dict[str, Any] = field(repr=False)  # the run's numbers, timing removed


def audit(run_dir: Path) -> Audit:
    """Count completed, lost and duplicated trials and seeds in a run's storage."""
    from optuna.trial import TrialState

    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    config, _, _ = _run_info(run_dir)
    seeds = json.loads((run_dir / "config.json").read_text())["resolved"]["final_seeds"]
    studies = _studies(run_dir)
    expected = completed = lost = duplicated = unfinished = 0
    outcome: dict[str, Any] = {}
    for optimizer, (tuning, finals) in studies.items():
        trials = tuning.get_trials(deepcopy=False) if tuning else []
        finished = [t for t in trials if t.state in finished_states]
        budget = config["trials"]
        # A re-queued copy records the trial it replaces: two finished copies of one is a rerun.
        origins = Counter(t.system_attrs.get("failed_trial", t.number) for t in finished)
        expected += budget + len(seeds)
        completed += min(len(finished), budget)
        lost += max(0, budget - len(finished))
        duplicated += max(0, len(finished) - budget) + sum(n - 1 for n in origins.values())
        unfinished += sum(not t.state.is_finished() for t in trials)
        outcome[f"{optimizer} tuning"] = [_numbers(t) for t in finished]
        runs = finals.get_trials(deepcopy=False) if finals else []
        unfinished += sum(not t.state.is_finished() for t in runs)
        by_seed = Counter(int(t.user_attrs["seed"]) for t in runs if t.state in finished_states)
        completed += sum(seed in by_seed for seed in seeds)
        lost += sum(seed not in by_seed for seed in seeds)
        duplicated += sum(n - 1 for n in by_seed.values()) + sum(s not in seeds for s in by_seed)
        for t in sorted(runs, key=lambda t: t.number):
            if t.state in finished_states:
                outcome[f"{optimizer} final seed {t.user_attrs['seed']}"] = _numbers(t)
    outcome["finals.csv"] = _finals_csv(run_dir / "finals.csv")
    checkpoints = run_dir / "checkpoints"
    stale = len(list(checkpoints.glob("*.pt")))
    temp = len(list(run_dir.rglob(".*.tmp")))
    return Audit(expected, completed, lost, duplicated, unfinished, stale, temp, outcome)


def _numbers(trial: Any) -> dict[str, Any]:
    """A finished trial's results, without its number, bookkeeping and wall-clock times."""
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("worker", "tuning_trial")}
    attrs = {k: v for k, v in attrs.items() if k not in TIMING}
    if "history" in attrs:
        attrs["history"] = [_untimed(epoch) for epoch in attrs["history"]]
    return {
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "intermediate_values": trial.intermediate_values,
        "user_attrs": attrs,
    }


def _untimed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in TIMING}


def _finals_csv(path: Path) -> list[dict[str, str]] | None:
    """finals.csv without timing and the tuning trial's number (a rerun shifts numbers)."""
    if not path.exists():
        return None
    with open(path, newline="") as f:
        return [
            {k: v for k, v in row.items() if k not in (*TIMING, "tuning_trial")}
            for row in csv.DictReader(f)
        ]


def differences(outcome: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """The entries of `outcome` that differ from `reference` (empty: identical)."""
    keys = sorted(set(outcome) | set(reference))
    return [k for k in keys if outcome.get(k) != reference.get(k)]


@dataclass
class Campaign:
    """One run directory, killed until a run of the command finished in it."""

    delays: list[float] = field(default_factory=list)  # seconds to each kill
    hits: int = 0  # kills that left a trial RUNNING
    final_hits: int = 0  # kills mid final run: a checkpoint to resume from was left
    lost: int = 0
    duplicated: int = 0
    unfinished: int = 0
    stale_checkpoints: int = 0
    stray_temp_files: int = 0
    differing: list[str] = field(default_factory=list)  # entries unlike the reference

    def killed(self, run_dir: Path, delay: float) -> None:
        self.delays.append(delay)
        self.hits += running_trials(run_dir) > 0
        self.final_hits += any((run_dir / "checkpoints").glob("*.pt"))

    def finished(self, result: Audit, reference: Audit) -> None:
        for name in COUNTS:
            setattr(self, name, getattr(result, name))
        self.differing = differences(result.outcome, reference.outcome)


def chaos(args: list[str], rounds: int, seed: int, workdir: Path) -> dict[str, Any]:
    """The reference run, then `rounds` kills; the payload saved to results/chaos.json."""
    rng = random.Random(seed)
    length = run_to_end(args, workdir / "reference")
    reference = audit(workdir / "reference")
    log = workdir / "stderr.log"
    campaigns: list[Campaign] = []

    def kills() -> int:
        return sum(len(c.delays) for c in campaigns)

    while kills() < rounds:
        campaign, run_dir = Campaign(), workdir / f"campaign-{len(campaigns)}"
        campaigns.append(campaign)
        finished = False
        while not finished and kills() < rounds:
            delay = rng.uniform(0, length)
            finished = not kill_after(start(args, run_dir, log), delay, log)
            if not finished:
                campaign.killed(run_dir, delay)
                print(f"round {kills()}: killed at {delay:.2f} s", file=sys.stderr)
        if not finished:  # the rounds are done: this campaign's run goes to its end
            run_to_end(args, run_dir)
        campaign.finished(audit(run_dir), reference)
    totals = {
        name: sum(getattr(c, name) for c in campaigns) for name in ("hits", "final_hits", *COUNTS)
    }
    summary = {
        "rounds": kills(),
        **totals,
        "identical": all(not c.differing for c in campaigns),
    }
    return {
        "command": command(args, Path("DIR"))[1:],
        "seed": seed,
        "uninterrupted_seconds": length,
        "reference": {k: v for k, v in asdict(reference).items() if k != "outcome"},
        "campaigns": [asdict(c) for c in campaigns],
        "summary": summary,
    }


def summary_line(summary: dict[str, Any]) -> str:
    return (
        f"rounds: {summary['rounds']}, kills that hit a running trial: {summary['hits']}, "
        f"trials lost: {summary['lost']}, duplicated: {summary['duplicated']}, "
        f"final runs identical: {'yes' if summary['identical'] else 'no'}"
    )


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="kills (20; --quick: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (0)")
    parser.add_argument("--quick", action="store_true", help="a smaller study, 5 rounds")
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    options = parser.parse_args(argv)
    rounds = options.rounds if options.rounds is not None else (5 if options.quick else 20)
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    args = QUICK_STUDY if options.quick else STUDY
    workdir = Path(tempfile.mkdtemp(prefix="optimlab-chaos-"))
    try:
        payload = chaos(args, rounds, options.seed, workdir)
    finally:
        if options.keep:
            shutil.copytree(workdir, options.keep, dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
    print(summary_line(payload["summary"]))
    if not options.quick:
        print(save("chaos", payload), file=sys.stderr)
    s = payload["summary"]
    damage = s["lost"] + s["duplicated"] + s["unfinished"] + s["stale_checkpoints"]
    return 0 if damage == 0 and s["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
