"""How the mnist1d study's wall time grows with the work: against the number of tuning
trials, against the MLP's hidden width, and seconds per trial against local workers.

Each point is a real study (the workers of `optimlab mnist1d`, adam only, few epochs, one
final seed; the workers sweep: adam and sgd, since on one machine each tuning study is tuned
by one worker at a time) on a fresh storage in a temporary directory, run from this process
(workers > 1 start their own processes). Reported per point: the study's wall time (tuning
and the final run; no report) and seconds per tuning trial (summed trial durations /
trials; for the workers sweep also study wall time / trials, the rate the workers reach
together).
Widths use the reference MLP (40 -> w -> w -> 10, residual second layer) registered under
`mlp-w<width>` in this process; 100 is the reference model itself.

    python -m benchmarks.study_scaling          # writes results/study_scaling.json and
                                                # results/study_time_vs_*.png (~2 min)
    python -m benchmarks.study_scaling --quick  # smoke run: tiny sweeps, nothing written
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import RESULTS, save


@dataclass(frozen=True)
class Sweep:
    trials: tuple[int, ...]
    widths: tuple[int, ...]
    workers: tuple[int, ...]
    epochs: int
    width_trials: int
    worker_trials: int
    worker_epochs: int  # more work per trial: a second worker costs a process start


FULL = Sweep((1, 4, 16, 64), (25, 100, 400, 1600), (1, 2), 3, 4, 16, 10)
QUICK = Sweep((1, 2), (100, 200), (1,), 1, 1, 2, 1)


def width_model(width: int) -> str:
    """The model name of the reference MLP at hidden `width` (registered on first use)."""
    from optimlab.mnist1d.models import MLP, MODELS

    if width == 100:
        return "mlp"
    name = f"mlp-w{width}"
    MODELS.setdefault(name, functools.partial(MLP, hidden=width))
    return name


def run_point(
    *, trials: int, epochs: int, model: str = "mlp", workers: int = 1, optimizers=("adam",)
) -> dict:
    """One study in a fresh directory: the workers' wall time (tuning and final runs), and
    the tuning trials' own durations from the storage, per trial of every optimizer. Not
    `run_study`: its config check knows only the built-in models, and the report is not
    what is measured here."""
    from optimlab.results import write_results
    from optimlab.study import StudyConfig
    from optimlab.study_workers import run_workers

    config = StudyConfig(
        optimizers=list(optimizers),
        trials=trials,
        epochs=epochs,
        seeds=1,
        model=model,
        workers=workers,
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        url = config.storage_url(run_dir)
        start = time.perf_counter()
        run_workers(config, url, lambda event: None, checkpoints=run_dir / "checkpoints")
        study = time.perf_counter() - start
        timings = write_results(config, url, run_dir)
    tuning = sum(timings["per_optimizer"][o]["tuning_trial_seconds"] for o in optimizers)
    all_trials = trials * len(optimizers)
    return {
        "optimizers": list(optimizers),
        "trials": trials,
        "epochs": epochs,
        "model": model,
        "workers": workers,
        "study_seconds": study,
        "seconds_per_trial": tuning / all_trials,
        "study_seconds_per_trial": study / all_trials,
    }


def sweep(sweep_: Sweep) -> dict[str, list[dict]]:
    """Every point of the three sweeps, with a progress line for each on stderr."""
    points: dict[str, list[dict]] = {"trials": [], "width": [], "workers": []}
    run_point(trials=1, epochs=1)  # first use: lazy imports and data cache, not measured
    todo = [("trials", {"trials": n, "epochs": sweep_.epochs}) for n in sweep_.trials]
    todo += [
        ("width", {"trials": sweep_.width_trials, "epochs": sweep_.epochs, "width": w})
        for w in sweep_.widths
    ]
    workers = {"trials": sweep_.worker_trials, "epochs": sweep_.worker_epochs}
    todo += [
        ("workers", {**workers, "workers": n, "optimizers": ("adam", "sgd")})
        for n in sweep_.workers
    ]
    for kind, kwargs in todo:
        width = kwargs.pop("width", 100)
        point = run_point(model=width_model(width), **kwargs)
        point["width"] = width
        points[kind].append(point)
        print(
            f"{kind:8s} trials {point['trials']:3d} width {width:5d} "
            f"workers {point['workers']}: study {point['study_seconds']:6.2f} s, "
            f"{point['seconds_per_trial']:.3f} s/trial",
            file=sys.stderr,
            flush=True,
        )
    return points


def plot(points: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optimlab.atomic import savefig

    panels = [
        ("trials", "trials", "study_seconds", "study wall time (s)", "log", "study_time_vs_trials"),
        ("width", "width", "study_seconds", "study wall time (s)", "log", "study_time_vs_width"),
        (
            "workers",
            "workers",
            "study_seconds_per_trial",
            "wall seconds per trial",
            "linear",
            "trial_time_vs_workers",
        ),
    ]
    for kind, x, y, ylabel, scale, name in panels:
        if not points[kind]:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        xs, ys = [p[x] for p in points[kind]], [p[y] for p in points[kind]]
        ax.plot(xs, ys, marker="o")
        ax.set(xscale=scale, yscale=scale, xlabel=x, ylabel=ylabel)
        if kind == "workers":
            ax.set_xticks(xs)
            ax.set_ylim(bottom=0)
        first = points[kind][0]
        trials = "" if kind == "trials" else f", {first['trials']} trials each"
        names = " + ".join(first.get("optimizers", ["adam"]))
        ax.set_title(f"mnist1d study: {names}, {first['epochs']} epochs{trials}", fontsize=9)
        fig.tight_layout()
        savefig(fig, RESULTS / f"{name}.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; nothing is saved")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    load_before = os.getloadavg()[0]
    points = sweep(config)
    if args.quick:
        return
    by_workers = {p["workers"]: p["study_seconds"] for p in points["workers"]}
    payload = {
        "sweep": config.__dict__,
        "cpus": os.cpu_count(),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "points": points,
        "speedup_2_workers": by_workers[1] / by_workers[2] if 2 in by_workers else None,
    }
    print(f"saved {save('study_scaling', payload)}", file=sys.stderr)
    plot(points)


if __name__ == "__main__":
    main()
