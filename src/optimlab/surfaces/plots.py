"""Figures of a finished benchmark, drawn only from its result files (run.json and
trajectories.npz), so `draw_all(DIR)` redraws them without rerunning anything.

Per function: FUNCTION.png (3-D surface and contour map with every optimizer's trajectory from
the canonical start) and FUNCTION.gif (the trajectories animated on the contour map); and
convergence.png (gap per step: median and 25-75% band over starts, log scale).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, to_rgb  # noqa: E402
from PIL import Image  # noqa: E402

from optimlab.atomic import atomic_path, savefig  # noqa: E402

# One colour and line style per optimizer, everywhere. The two DynamicAdam variants follow
# the same path without gradient noise (their meta gradients coincide), hence the dashes.
STYLES: dict[str, dict[str, Any]] = {
    "sgd": {"color": "#1f77b4", "linestyle": "-"},
    "adagrad": {"color": "#ff7f0e", "linestyle": "-"},
    "rmsprop": {"color": "#2ca02c", "linestyle": "-"},
    "adam": {"color": "#d62728", "linestyle": "-"},
    "dynamic_adam_online": {"color": "#9467bd", "linestyle": "-"},
    "dynamic_adam": {"color": "#e377c2", "linestyle": (0, (4, 2))},
}
# Pale greys, light where f is low, so the coloured trajectories stand out everywhere.
CMAP = LinearSegmentedColormap.from_list("optimlab_pale", ["#ffffff", "#d3d9df", "#7d8893"])
GIF_FRAMES = 36
GIF_MS = 90  # per frame; the last frame is held for 2 s


def draw_all(out: str | Path, bar: Any = None) -> list[Path]:
    """Draw every figure of the benchmark in `out`; returns the paths written."""
    out = Path(out)
    run = json.loads((out / "run.json").read_text())
    written = []
    with np.load(out / "trajectories.npz", allow_pickle=False) as npz:
        data = {key: npz[key] for key in npz.files}
    tuned = run["settings"]["tune_trials"] > 0
    if bar is not None:
        bar.phase("figures", len(run["functions"]) + 1)
    for k, function in enumerate(run["functions"]):
        arrays = {
            key.split("/", 1)[1]: v
            for key, v in data.items()
            if key.startswith(function["name"] + "/")
        }
        written.append(
            surface_figure(
                out / f"{function['name']}.png", function, run["optimizers"], arrays, tuned
            )
        )
        written.append(
            animation(out / f"{function['name']}.gif", function, run["optimizers"], arrays)
        )
        if bar is not None:
            bar.update(k + 1)
    written.append(convergence_figure(out / "convergence.png", run, data))
    if bar is not None:
        bar.update(len(run["functions"]) + 1)
    return written


class _Scale:
    """The plotted height: the gap f - f*, or log10(gap + delta) where the function spans
    many decades (delta six decades below its largest gap on the window)."""

    def __init__(self, function: dict[str, Any], grid_gap: np.ndarray) -> None:
        self.log = bool(function["log_scale"])
        top = float(grid_gap.max())
        self.delta = 10.0 ** (math.floor(math.log10(top)) - 6) if top > 0 else 1e-6
        self.label = f"log10(f - f* + {self.delta:.0e})" if self.log else "f - f*"

    def __call__(self, gap: np.ndarray) -> np.ndarray:
        return np.log10(gap + self.delta) if self.log else gap


def _canonical_paths(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each optimizer's path from the canonical start (start 0), cut where it diverged."""
    paths = []
    for points, diverged_at in zip(
        arrays["points"][:, :, 0], arrays["diverged_at"][:, 0], strict=True
    ):
        paths.append(points if diverged_at < 0 else points[: diverged_at + 1])
    return paths


def _contour(
    ax: Any, function: dict[str, Any], arrays: dict[str, np.ndarray], scale: _Scale
) -> Any:
    x, y, gap = arrays["grid"]
    z = scale(gap)
    filled = ax.contourf(x, y, z, levels=24, cmap=CMAP)
    ax.contour(x, y, z, levels=24, colors="#5f6b77", linewidths=0.3, alpha=0.35)
    minima = np.asarray(function["minima"])
    ax.plot(minima[:, 0], minima[:, 1], "*", color="gold", markeredgecolor="black",
            markersize=14, zorder=5, label="global minimum")  # fmt: skip
    sx, sy = function["start"]
    ax.plot(sx, sy, "o", color="white", markeredgecolor="black", markersize=7, zorder=5,
            label="start")  # fmt: skip
    (x0, x1), (y0, y1) = function["window"]
    ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x", ylabel="y", aspect="equal")
    return filled


def _label(name: str, gap: float, diverged: bool) -> str:
    return f"{name} (diverged)" if diverged else f"{name} (final gap {gap:.1e})"


def surface_figure(
    path: Path,
    function: dict[str, Any],
    optimizers: list[str],
    arrays: dict[str, np.ndarray],
    tuned: bool = True,
) -> Path:
    """3-D surface (left) and contour map (right), trajectories from the canonical start."""
    x, y, gap = arrays["grid"]
    scale = _Scale(function, gap)
    fig = plt.figure(figsize=(13, 6.2))
    ax3 = fig.add_axes((0.0, 0.16, 0.46, 0.74), projection="3d", computed_zorder=False)
    height = scale(gap)
    floor = height.min()  # trajectories and minima are drawn no lower than the drawn surface
    ax3.plot_surface(x, y, height, cmap=CMAP, rcount=48, ccount=48, linewidth=0,
                     antialiased=False, alpha=0.9, zorder=1)  # fmt: skip
    ax2 = fig.add_axes((0.5, 0.16, 0.36, 0.74))
    filled = _contour(ax2, function, arrays, scale)
    fig.colorbar(filled, cax=fig.add_axes((0.88, 0.16, 0.015, 0.74)), label=scale.label)
    (x0, x1), (y0, y1) = function["window"]
    for name, path_xy, gaps, diverged_at in zip(
        optimizers,
        _canonical_paths(arrays),
        arrays["gaps"][:, :, 0],
        arrays["diverged_at"][:, 0],
        strict=True,
    ):
        style = STYLES.get(name, {})
        final = gaps[len(path_xy) - 1]
        ax2.plot(path_xy[:, 0], path_xy[:, 1], linewidth=1.8, zorder=4,
                 label=_label(name, final, diverged_at >= 0), **style)  # fmt: skip
        ax2.plot(*path_xy[-1], "x" if diverged_at >= 0 else "o", color=style.get("color"),
                 markersize=6, markeredgecolor="black", markeredgewidth=0.5, zorder=6)  # fmt: skip
        inside = (path_xy[:, 0] >= x0) & (path_xy[:, 0] <= x1)
        inside &= (path_xy[:, 1] >= y0) & (path_xy[:, 1] <= y1)
        z = np.where(inside, np.maximum(scale(gaps[: len(path_xy)]), floor), np.nan)
        ax3.plot(path_xy[:, 0], path_xy[:, 1], z, linewidth=1.8, zorder=10, **style)
    minima = np.asarray(function["minima"])
    ax3.scatter(minima[:, 0], minima[:, 1], np.full(len(minima), floor), marker="*", s=140,
                color="gold", edgecolor="black", zorder=11, depthshade=False)  # fmt: skip
    ax3.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x", ylabel="y")
    ax3.set_title(scale.label, fontsize=9)
    ax3.view_init(elev=35, azim=-60)
    fig.legend(*ax2.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=9,
               frameon=False)  # fmt: skip
    steps = arrays["points"].shape[1] - 1
    fig.suptitle(
        f"{function['name']}: {function['description']}. Each optimizer from the canonical "
        f"start, {steps} steps, {'its own tuned' if tuned else 'given'} hyperparameters"
    )
    savefig(fig, path, dpi=90)
    plt.close(fig)
    return path


def frame_times(steps: int, n: int = GIF_FRAMES) -> np.ndarray:
    """Frame times in (fractional) steps, dense early where the action is: 0, ..., steps."""
    return np.concatenate([[0.0], np.geomspace(min(1.0, steps), steps, n - 1)])


def _position(path_xy: np.ndarray, t: float) -> np.ndarray:
    """The path up to (fractional) step t, the last segment interpolated."""
    k = min(int(t), len(path_xy) - 1)
    head = path_xy[: k + 1]
    if k + 1 < len(path_xy) and t > k:
        head = np.vstack([head, path_xy[k] + (t - k) * (path_xy[k + 1] - path_xy[k])])
    return head


def animation(
    path: Path, function: dict[str, Any], optimizers: list[str], arrays: dict[str, np.ndarray]
) -> Path:
    """The trajectories from the canonical start, growing on the contour map (a GIF)."""
    scale = _Scale(function, arrays["grid"][2])
    fig, ax = plt.subplots(figsize=(5.6, 6.2), dpi=80)
    _contour(ax, function, arrays, scale)
    paths = _canonical_paths(arrays)
    lines, heads = [], []
    for name in optimizers:
        style = STYLES.get(name, {})
        (line,) = ax.plot([], [], linewidth=1.8, zorder=4, label=name, **style)
        (head,) = ax.plot([], [], "o", color=style.get("color"), markersize=5, zorder=6)
        lines.append(line)
        heads.append(head)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.93, bottom=0.24)
    title = ax.set_title(" ")
    moving = [*lines, *heads, title]
    for artist in moving:  # drawn per frame over a background rendered once (blitting)
        artist.set_animated(True)
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    steps = arrays["points"].shape[1] - 1
    frames = []
    for t in frame_times(steps):
        for line, head, path_xy in zip(lines, heads, paths, strict=True):
            shown = _position(path_xy, t)
            line.set_data(shown[:, 0], shown[:, 1])
            head.set_data(shown[-1:, 0], shown[-1:, 1])
        title.set_text(f"{function['name']}: step {t:.0f} of {steps}")
        fig.canvas.restore_region(background)
        for artist in moving:
            ax.draw_artist(artist)
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[:, :, :3]))
    plt.close(fig)
    palette = _palette(frames[-1])
    images = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    durations = [GIF_MS] * (len(images) - 1) + [2000]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=durations, loop=0)  # fmt: skip
    return path


def _palette(frame: Image.Image) -> Image.Image:
    """One GIF palette for every frame (no flicker): the optimizers' exact colours and the
    markers', then the background's most representative shades."""
    exact = [to_rgb(style["color"]) for style in STYLES.values()]
    exact += [to_rgb(c) for c in ("gold", "black", "white")]
    adaptive = frame.quantize(colors=256 - len(exact), method=Image.Quantize.MEDIANCUT)
    shades = adaptive.getpalette()[: 3 * (256 - len(exact))]
    palette = Image.new("P", (1, 1))
    palette.putpalette(shades + [round(255 * v) for rgb in exact for v in rgb])
    return palette


def convergence_figure(path: Path, run: dict[str, Any], data: dict[str, np.ndarray]) -> Path:
    """One panel per function: median gap per step over starts and its 25-75% band."""
    functions, optimizers = run["functions"], run["optimizers"]
    cols = min(3, len(functions))
    rows = math.ceil(len(functions) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, function in zip(axes.flat, functions, strict=False):
        gaps = data[f"{function['name']}/gaps"]  # (optimizers, steps + 1, starts)
        steps = np.arange(gaps.shape[1])
        for name, gap in zip(optimizers, gaps, strict=True):
            low, mid, high = _bands(gap)
            style = STYLES.get(name, {})
            ax.plot(steps, mid, label=name, linewidth=1.6, **style)
            ax.fill_between(steps, low, high, color=style.get("color"), alpha=0.15, linewidth=0)
        ax.set(yscale="log", title=function["name"], xlabel="step", ylabel="f - f*")
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(functions) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(optimizers), frameon=False)
    starts = run["settings"]["starts"]
    fig.suptitle(f"Convergence: median and 25-75% band over {starts} starts (gaps below 1e-16 "
                 "drawn at 1e-16; diverged runs count as infinite)")  # fmt: skip
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    savefig(fig, path, dpi=90)
    plt.close(fig)
    return path


def _bands(gap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """25%, 50%, 75% over starts per step; floored at 1e-16, NaN (not drawn) where infinite."""
    big = np.finfo(np.float64).max
    q = np.quantile(np.minimum(gap, big), [0.25, 0.5, 0.75], axis=1)
    q = np.where(q >= big / 4, np.nan, np.maximum(q, 1e-16))
    return q[0], q[1], q[2]
