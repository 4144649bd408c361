"""Speed of the mnist1d study against its targets, and torch threads for the tiny MLP.

Targets (2-core CPU, issue 8): the claim's own protocol (adam and dynamic_adam, 20 trials,
25 epochs, 5 final seeds) under 30 s with a warm dataset cache; the full default `make run`
(surfaces and all default optimizers + report) under 3 minutes; `optimlab mnist1d --quick`
under 60 s.

Each run is the real command in a fresh process and a fresh directory, timed wall-clock from
start to exit (imports, data, tuning, finals, result files, report). Threads: one training
epoch of the 40-100-100-10 MLP at batch 100 with 1 and with 2 torch threads, interleaved
round by round in one process; the median ratio is reported.

    python -m benchmarks.study_speed           # threads, quick, claim protocol (~2 min)
    python -m benchmarks.study_speed --full    # also the full `optimlab run` (~5-8 min)
    python -m benchmarks.study_speed --quick   # smoke run: threads and --quick only, not saved
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import save

TARGETS = {
    "claim_protocol": 30.0,
    "claim_protocol_2_workers": 30.0,
    "quick": 60.0,
    "full_run": 180.0,
    "full_run_2_workers": 180.0,
}
# Two workers on one machine give the numbers of one (each tuning study is tuned by one
# worker at a time), so the 2-worker runs are the same experiments on both cores.
COMMANDS = {
    "quick": ["mnist1d", "--quick"],
    "claim_protocol": ["mnist1d", "--optimizers", "adam,dynamic_adam"],
    "claim_protocol_2_workers": ["mnist1d", "--optimizers", "adam,dynamic_adam", "--workers", "2"],
    "full_run": ["run"],
    "full_run_2_workers": ["run", "--workers", "2"],
}


def threads(rounds: int = 7) -> dict[str, float]:
    """Seconds per training epoch with 1 and 2 torch threads (medians over rounds)."""
    from optimlab.mnist1d.data import load_mnist1d, make_splits
    from optimlab.mnist1d.train import TrainConfig, train

    splits = make_splits(load_mnist1d()).without_test()
    config = TrainConfig("adam", lr=1e-2, epochs=2, batch_size=100)
    before = torch.get_num_threads()
    times: dict[int, list[float]] = {1: [], 2: []}
    try:
        for i in range(rounds):
            for n in (1, 2) if i % 2 == 0 else (2, 1):
                torch.set_num_threads(n)
                start = time.perf_counter()
                train(config, splits)
                times[n].append((time.perf_counter() - start) / config.epochs)
    finally:
        torch.set_num_threads(before)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    return {
        "epoch_seconds_1_thread": one,
        "epoch_seconds_2_threads": two,
        "ratio_2_over_1": two / one,
    }


def timed_command(name: str) -> dict[str, float | str]:
    """Wall-clock seconds of one command in a fresh process and directory."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = [sys.executable, "-m", "optimlab", *COMMANDS[name], "--out", str(out)]
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        study = out if (out / "timings.json").exists() else out / "mnist1d"
        timings = json.loads((study / "timings.json").read_text())
    result = {
        "command": "optimlab " + " ".join(COMMANDS[name]),
        "seconds": seconds,
        "target_seconds": TARGETS[name],
        "within_target": seconds < TARGETS[name],
        "study_seconds": timings["wall_seconds_this_invocation"],
        "per_optimizer": timings["per_optimizer"],
    }
    print(f"{name:16s} {seconds:7.1f} s  (target {TARGETS[name]:.0f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also time the full `optimlab run`")
    parser.add_argument("--quick", action="store_true", help="smoke run; nothing is saved")
    args = parser.parse_args()
    measured = threads(rounds=3 if args.quick else 7)
    print(
        f"threads: 1 thread {measured['epoch_seconds_1_thread'] * 1e3:.1f} ms/epoch, "
        f"2 threads {measured['epoch_seconds_2_threads'] * 1e3:.1f} ms/epoch "
        f"(ratio {measured['ratio_2_over_1']:.2f})",
        flush=True,
    )
    claim = ["claim_protocol", "claim_protocol_2_workers"]
    full = ["full_run", "full_run_2_workers"] if args.full else []
    names = ["quick"] if args.quick else ["quick", *claim, *full]
    runs = {name: timed_command(name) for name in names}
    if not args.quick:
        save("study_speed", {"threads": measured, "runs": runs})


if __name__ == "__main__":
    main()
