"""Speed-up of the mnist1d study from local workers: `--workers 1` against `--workers 2`.

The same study (adam and dynamic_adam, 12 trials of 10 epochs each, 2 final seeds) runs
as the real command in a fresh process and directory, alternating 1, 2, 2, 1, ... so that
load from other processes falls on both alike. Reported: the fastest and the median wall
time of each (from start to exit, and the study's own wall clock from timings.json) and their
ratios; other jobs only ever add time, so the fastest runs are the cleanest. Two workers
share every study through a journal file; one worker uses study.db. The machine's load
average is recorded too: a second worker only helps when a core is free.

    python -m benchmarks.workers_speed           # 2 rounds (~2 minutes on 2 cores)
    python -m benchmarks.workers_speed --quick   # smoke run: 1 round, small study, not saved
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import save

STUDY = ["--optimizers", "adam,dynamic_adam", "--trials", "12", "--epochs", "10", "--seeds", "2"]
QUICK = ["--optimizers", "adam", "--trials", "4", "--epochs", "3", "--seeds", "2"]


def timed_run(study: list[str], workers: int) -> dict[str, float]:
    """Wall seconds of one study run with `workers` local workers, in a fresh directory."""
    env = {k: v for k, v in os.environ.items() if k != "OPTIMLAB_STORAGE"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = [sys.executable, "-m", "optimlab", "mnist1d", *study, "--workers", str(workers)]
        start = time.perf_counter()
        subprocess.run(
            [*argv, "--out", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        seconds = time.perf_counter() - start
        timings = json.loads((out / "timings.json").read_text())
    return {"seconds": seconds, "study_seconds": timings["wall_seconds_this_invocation"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each (2)")
    parser.add_argument("--quick", action="store_true", help="smoke run; nothing is saved")
    args = parser.parse_args()
    study, rounds = (QUICK, 1) if args.quick else (STUDY, args.rounds)
    load_before = os.getloadavg()[0]  # other jobs on the machine take cores from the workers
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for i in range(rounds):
        for workers in (1, 2) if i % 2 == 0 else (2, 1):
            runs[workers].append(timed_run(study, workers))
            last = runs[workers][-1]
            print(f"workers {workers}: {last['seconds']:6.1f} s", flush=True)
    median = {w: {k: statistics.median(r[k] for r in runs[w]) for k in runs[w][0]} for w in runs}
    best = {w: {k: min(r[k] for r in runs[w]) for k in runs[w][0]} for w in runs}
    result = {
        "command": "optimlab mnist1d " + " ".join(study),
        "cpus": os.cpu_count(),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "rounds": rounds,
        "runs": {str(w): runs[w] for w in runs},
        "best_seconds": {str(w): best[w]["seconds"] for w in best},
        "best_study_seconds": {str(w): best[w]["study_seconds"] for w in best},
        "speedup_best_2_over_1": best[1]["seconds"] / best[2]["seconds"],
        "median_seconds": {str(w): median[w]["seconds"] for w in median},
        "median_study_seconds": {str(w): median[w]["study_seconds"] for w in median},
        "speedup_2_over_1": median[1]["seconds"] / median[2]["seconds"],
        "study_speedup_2_over_1": median[1]["study_seconds"] / median[2]["study_seconds"],
    }
    print(
        f"fastest: 1 worker {best[1]['seconds']:.1f} s, 2 workers {best[2]['seconds']:.1f} s, "
        f"speed-up {result['speedup_best_2_over_1']:.2f}x; median: "
        f"{median[1]['seconds']:.1f} s, {median[2]['seconds']:.1f} s, "
        f"{result['speedup_2_over_1']:.2f}x (load average {load_before:.1f} before, "
        f"{result['load_average_1min']['after']:.1f} after)",
        flush=True,
    )
    if not args.quick:
        save("workers_speed", result)


if __name__ == "__main__":
    main()
