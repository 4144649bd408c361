"""The study's figures, drawn with matplotlib from the result files only.

Bands are 95% t-based confidence intervals of the mean over final seeds. Figures use
matplotlib's object API (no pyplot state), so drawing is safe inside any program.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from optimlab.atomic import savefig
from optimlab.report.files import Results, number
from optimlab.stats import mean_ci

MLP_PAPER_ACCURACY = 0.68
DPI = 110


def colors(optimizers: list[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % 10] for i, name in enumerate(optimizers)}


def _band(rows: list[dict], x_key: str, y_key: str) -> tuple[list, list, list, list]:
    """x, mean, low, high of `y_key` grouped by `x_key`: the 95% CI of the mean (low = high =
    mean where n < 2)."""
    groups: dict[float, list[float]] = defaultdict(list)
    for row in rows:
        groups[row[x_key]].append(number(row[y_key]))
    xs, mean, low, high = [], [], [], []
    for x in sorted(groups):
        est = mean_ci(groups[x])
        if est.mean is None:
            continue
        xs.append(x)
        mean.append(est.mean)
        low.append(est.ci_low if est.ci_low is not None else est.mean)
        high.append(est.ci_high if est.ci_high is not None else est.mean)
    return xs, mean, low, high


def _range(rows: list[dict], x_key: str, y_key: str) -> tuple[list, list, list, list]:
    """x, mean, min, max of `y_key` grouped by `x_key` (vectorised: beta1 has a row per step)."""
    import numpy as np

    groups: dict[float, list[float]] = defaultdict(list)
    for row in rows:
        groups[row[x_key]].append(number(row[y_key]))
    xs = sorted(groups)
    values = [np.asarray(groups[x]) for x in xs]
    return (
        xs,
        [float(np.nanmean(v)) for v in values],
        [float(np.nanmin(v)) for v in values],
        [float(np.nanmax(v)) for v in values],
    )


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    savefig(fig, path, dpi=DPI, metadata={"Software": None})
    return path


def final_curves(results: Results, path: Path) -> Path:
    """Validation and test loss per epoch of the final runs: mean and 95% band."""
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    palette = colors(results.optimizers)
    for ax, metric, title in zip(
        axes, ("val_loss", "test_loss"), ("validation loss", "test loss"), strict=True
    ):
        for name in results.optimizers:
            rows = [r for r in results.curves if r["optimizer"] == name]
            xs, mean, low, high = _band(rows, "epoch", metric)
            if not xs:
                continue
            ax.plot(xs, mean, color=palette[name], label=name)
            ax.fill_between(xs, low, high, color=palette[name], alpha=0.2, linewidth=0)
        ax.set_title(f"Final runs: {title} per epoch (mean, 95% CI)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy loss")
    axes[1].legend(fontsize=8)
    return _save(fig, path)


def test_accuracy(results: Results, path: Path) -> Path:
    """Test accuracy of every final run, with the mean and its 95% CI per optimizer."""
    fig = Figure(figsize=(9, 4.2))
    ax = fig.subplots()
    palette = colors(results.optimizers)
    for i, name in enumerate(results.optimizers):
        values = [number(r["test_accuracy"]) for r in results.finals if r["optimizer"] == name]
        est = mean_ci(values)
        finite = [v for v in values if math.isfinite(v)]
        ax.scatter([i] * len(finite), finite, color=palette[name], alpha=0.5, s=14)
        if est.mean is None:
            continue
        low = est.mean - est.ci_low if est.ci_low is not None else 0.0
        high = est.ci_high - est.mean if est.ci_high is not None else 0.0
        ax.errorbar(
            i + 0.15, est.mean, yerr=[[low], [high]], fmt="o", color=palette[name], capsize=4
        )
    ax.axhline(MLP_PAPER_ACCURACY, color="gray", linestyle="--", label="mnist1d paper MLP (68%)")
    ax.set_xticks(range(len(results.optimizers)), results.optimizers, rotation=30, ha="right")
    ax.set_ylabel("test accuracy")
    ax.set_title("Final runs: test accuracy (seeds, mean and 95% CI)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def optimization_history(results: Results, path: Path) -> Path:
    """Tuning trials per optimizer: value of each trial and the best so far."""
    names = results.optimizers
    cols = min(4, len(names))
    rows_n = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.9 * rows_n))
    axes = fig.subplots(rows_n, cols, squeeze=False, sharey=True)
    palette = colors(names)
    for ax, name in zip(axes.flat, names, strict=False):
        trials = sorted(
            (t for t in results.trials if t["optimizer"] == name), key=lambda t: t["number"]
        )
        complete = [t for t in trials if t["state"] == "COMPLETE"]
        pruned = [t for t in trials if t["state"] == "PRUNED" and not t["diverged"]]
        diverged = [t for t in trials if t["diverged"]]
        ax.scatter(
            [t["number"] for t in complete],
            [t["value"] for t in complete],
            s=14,
            color=palette[name],
            label="complete",
        )
        ax.scatter(
            [t["number"] for t in pruned],
            [number(t["last_value"]) for t in pruned],
            s=14,
            marker="x",
            color="gray",
            label="pruned (last value)",
        )
        for t in diverged:
            ax.axvline(t["number"], color="red", alpha=0.3, linewidth=1)
        best, xs, ys = math.inf, [], []
        for t in complete:
            best = min(best, t["value"])
            xs.append(t["number"])
            ys.append(best)
        ax.step(xs, ys, where="post", color="black", linewidth=1, label="best so far")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("val loss")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("Optuna optimization history (red lines: diverged trials)")
    return _save(fig, path)


def param_importances(results: Results, path: Path) -> Path:
    """PED-ANOVA importance of each tuned hyperparameter, per optimizer."""
    fig = Figure(figsize=(8, 0.35 * max(len(results.importances), 4) + 1))
    ax = fig.subplots()
    palette = colors(results.optimizers)
    labels = [f"{r['optimizer']}: {r['param']}" for r in results.importances]
    values = [number(r["importance"]) for r in results.importances]
    bar_colors = [palette.get(r["optimizer"], "C0") for r in results.importances]
    ax.barh(range(len(values)), values, color=bar_colors)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("importance (PED-ANOVA, normalised per optimizer)")
    ax.set_title("Hyperparameter importances" + ("" if values else " (too few trials)"))
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def beta1(results: Results, path: Path) -> Path:
    """beta1 chosen by the gate at every step of the final runs: mean over seeds and the range
    from the lowest to the highest seed (a t-interval would leave beta1's range [0, 1))."""
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    palette = colors(results.optimizers)
    shown = [n for n in results.optimizers if any(r["optimizer"] == n for r in results.beta1)]
    for name in shown:
        xs, mean, low, high = _range(
            [r for r in results.beta1 if r["optimizer"] == name], "step", "beta1"
        )
        ax.plot(xs, mean, color=palette[name], label=name, linewidth=1)
        ax.fill_between(xs, low, high, color=palette[name], alpha=0.2, linewidth=0)
    ax.axhline(0.9, color="gray", linestyle="--", linewidth=1, label="Adam's beta1 = 0.9")
    ax.set_xlabel("training step")
    ax.set_ylabel("beta1")
    ax.set_ylim(0, 1)
    ax.set_title("DynamicAdam: beta1 over training (final runs: mean, band = seeds' range)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


FIGURES = {
    "final_curves.png": (final_curves, "Validation (left) and test (right) loss per epoch"),
    "test_accuracy.png": (test_accuracy, "Test accuracy of the final runs"),
    "optimization_history.png": (optimization_history, "Optuna optimization history"),
    "param_importances.png": (param_importances, "Hyperparameter importances"),
    "beta1.png": (beta1, "beta1 over training (DynamicAdam variants)"),
}


def draw_all(results: Results) -> dict[str, str]:
    """Draw every figure into the run directory; return {file name: caption}."""
    drawn = {}
    for name, (draw, caption) in FIGURES.items():
        if name == "beta1.png" and not results.beta1:
            continue
        draw(results, results.run_dir / name)
        drawn[name] = caption
    return drawn
