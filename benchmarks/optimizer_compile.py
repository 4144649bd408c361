"""optimlab's Adam and AdamW with compile=True against torch.optim's CPU paths, 100k to 50M
float32 parameters (20 equal tensors), with the one-off compile time.

All variants run in one process, interleaved round by round in a fresh random order (seeded)
so that load from other processes, and whatever one step leaves behind for the next, hits
them alike. There is one set of parameters, gradients and Adam state per variant (as large
together as when each had its own: most of it is out of cache), and the variants take turns
on the sets, round after round, because where a set sits in physical memory matters: the
same code on two sets differed by up to 5%, fixed within a process, varying between
processes. Each round gives every variant's time relative to the torch fused step of the
same algorithm and to torch.optim.Adam's default on CPU (the for-loop path); the table
reports the median over rounds, and over `--runs` blocks of rounds the median and the range.
Compile time is the first step of a compiled variant; inductor's cache starts empty (a fresh
temporary directory), so it is the cost of a first use in a process (the first one in the
table also pays for inductor's own start-up).

DynamicAdam's update (compile=True and eager, lookahead and online) is timed the same way
against torch's fused Adam at 100k and 10M parameters (`time_dynamic`). Its meta batch costs
nothing here (PrecomputedMetaLoss): what is timed is the step without the meta batch's
forward and backward, the gate and the hypergradient's dot product included.

    python -m benchmarks.optimizer_compile          # writes results/optimizer_compile.json
                                                    # and results/step_scaling.png
    python -m benchmarks.optimizer_compile --quick  # up to 10M, fewer rounds, writes nothing
    python -m benchmarks.optimizer_compile --dynamic-only  # DynamicAdam only, writes nothing
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import optimlab.optim as oo
from benchmarks.common import RESULTS, save
from optimlab.atomic import savefig

DEFAULT = "torch Adam for-loop"  # torch.optim.Adam's default on CPU
FUSED_ADAM, FUSED_ADAMW = "torch Adam fused", "torch AdamW fused"
MakeOptimizer = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


@dataclass
class Variant:
    make: MakeOptimizer
    fused_twin: str  # torch's fused kernel for the same algorithm
    compiled: bool = False


VARIANTS: dict[str, Variant] = {
    DEFAULT: Variant(lambda ps: torch.optim.Adam(ps, foreach=False), FUSED_ADAM),
    "torch Adam foreach": Variant(lambda ps: torch.optim.Adam(ps, foreach=True), FUSED_ADAM),
    FUSED_ADAM: Variant(lambda ps: torch.optim.Adam(ps, fused=True), FUSED_ADAM),
    FUSED_ADAMW: Variant(lambda ps: torch.optim.AdamW(ps, fused=True), FUSED_ADAMW),
    "optimlab Adam eager": Variant(lambda ps: oo.Adam(ps), FUSED_ADAM),
    "optimlab Adam compiled": Variant(lambda ps: oo.Adam(ps, compile=True), FUSED_ADAM, True),
    "optimlab AdamW compiled": Variant(lambda ps: oo.AdamW(ps, compile=True), FUSED_ADAMW, True),
}


@dataclass
class Size:
    label: str
    numel_per_tensor: int
    rounds: int  # per run
    tensors: int = 20

    @property
    def params(self) -> int:
        return self.tensors * self.numel_per_tensor


FULL = [
    Size("100k", 5_000, 200),
    Size("1M", 50_000, 60),
    Size("10M", 500_000, 30),
    Size("50M", 2_500_000, 6),
]
QUICK = [Size("100k", 5_000, 30), Size("1M", 50_000, 10), Size("10M", 500_000, 8)]
HEADLINE = "10M"


@dataclass
class Timing:
    median_ms: float  # median over runs of the run's median step time
    vs_fused: float  # median over runs of the median per-round ratio to the fused twin
    vs_default: float  # the same, to torch.optim.Adam's default (for-loop)
    vs_fused_range: tuple[float, float]  # smallest and largest run value
    vs_default_range: tuple[float, float]
    compile_s: float | None  # first step of a compiled variant


def median_ratio(times: list[float], reference: list[float]) -> float:
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


def time_size(size: Size, runs: int) -> dict[str, Timing]:
    """Every variant's step time at `size`: `runs` blocks of interleaved rounds."""
    data = torch.Generator().manual_seed(0)
    values = [torch.randn(size.numel_per_tensor, generator=data) for _ in range(size.tensors)]
    grads = [torch.randn(size.numel_per_tensor, generator=data) for _ in range(size.tensors)]
    names = list(VARIANTS)
    buffer_sets = []  # one per variant: parameters with gradients, and an Adam state for all
    for _ in names:
        params = [v.clone().requires_grad_() for v in values]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        buffer_sets.append((params, defaultdict(dict)))
    steps: dict[str, list[Callable[[], object]]] = {name: [] for name in names}
    compile_s = {}
    for name in names:
        for params, state in buffer_sets:
            optimizer = VARIANTS[name].make(params)
            optimizer.state = state
            steps[name].append(optimizer.step)
        start = time.perf_counter()
        steps[name][0]()  # creates the state; compiles a compiled variant
        compile_s[name] = time.perf_counter() - start if VARIANTS[name].compiled else None
        for step in steps[name][1:]:
            step()
    order = random.Random(0)
    per_run: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for _ in range(runs):
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(size.rounds):
            for i in order.sample(range(len(names)), len(names)):
                step = steps[names[i]][(i + round_) % len(buffer_sets)]
                start = time.perf_counter()
                step()
                seconds[names[i]].append(time.perf_counter() - start)
        for name in names:
            per_run[name].append(
                (
                    statistics.median(seconds[name]),
                    median_ratio(seconds[name], seconds[VARIANTS[name].fused_twin]),
                    median_ratio(seconds[name], seconds[DEFAULT]),
                )
            )
    timings = {}
    for name, results in per_run.items():
        ms, vs_fused, vs_default = zip(*results, strict=True)
        timings[name] = Timing(
            median_ms=1e3 * statistics.median(ms),
            vs_fused=statistics.median(vs_fused),
            vs_default=statistics.median(vs_default),
            vs_fused_range=(min(vs_fused), max(vs_fused)),
            vs_default_range=(min(vs_default), max(vs_default)),
            compile_s=compile_s[name],
        )
    return timings


class PrecomputedMetaLoss(torch.autograd.Function):
    """A meta loss of 0 whose gradient with respect to the parameters is given: a meta batch
    whose forward and backward cost nothing, so that a lookahead step times only the
    optimizer's own work (the update, the gate, the dot product <grad L_meta, w_t>)."""

    @staticmethod
    def forward(ctx: Any, grads: list[torch.Tensor], *params: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx: Any, _: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, *ctx.grads)


@dataclass
class DynamicVariant:
    hypergradient: str
    compile: bool
    meta: bool = True  # lookahead: a meta closure at every step (the gate learns)


DYNAMIC_VARIANTS = {
    "DynamicAdam compiled lookahead": DynamicVariant("lookahead", True),
    "DynamicAdam compiled online": DynamicVariant("online", True),
    "DynamicAdam compiled no meta": DynamicVariant("lookahead", True, meta=False),
    "DynamicAdam eager lookahead": DynamicVariant("lookahead", False),
    "DynamicAdam eager online": DynamicVariant("online", False),
}
DYNAMIC_FULL = [Size("100k", 5_000, 100), Size("10M", 500_000, 20)]
DYNAMIC_QUICK = [Size("100k", 5_000, 30), Size("10M", 500_000, 8)]
DYNAMIC_SETS = 2  # parameter sets the variants take turns on


@dataclass
class DynamicTiming:
    median_ms: float  # median over runs of the run's median step time
    vs_fused: float  # median over runs of the median per-round ratio to torch's fused Adam
    vs_fused_range: tuple[float, float]  # smallest and largest run value
    compile_s: float | None  # first step of a compiled variant


def dynamic_step(variant: DynamicVariant, params: list[torch.Tensor], meta: list[torch.Tensor]):
    optimizer = oo.create(
        "dynamic_adam", params, hypergradient=variant.hypergradient, compile=variant.compile
    )
    if variant.hypergradient == "online" or not variant.meta:
        return optimizer.step
    return lambda: optimizer.step(meta_closure=lambda: PrecomputedMetaLoss.apply(meta, *params))


def parameter_sets(
    size: Size, count: int, data: torch.Generator
) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """`count` sets of random parameters (with gradients) and meta gradients at `size`, on
    the generator's device."""

    def tensors(scale: float) -> list[torch.Tensor]:
        shape = (size.numel_per_tensor,)
        return [
            torch.randn(shape, generator=data, device=data.device) * scale
            for _ in range(size.tensors)
        ]

    sets = []
    for _ in range(count):
        params = [v.requires_grad_() for v in tensors(1.0)]
        for p, g in zip(params, tensors(1e-2), strict=True):
            p.grad = g
        sets.append((params, tensors(1e-2)))
    return sets


def time_dynamic(size: Size, runs: int) -> dict[str, DynamicTiming]:
    """DynamicAdam's step time at `size` against torch's fused Adam: `runs` blocks of rounds,
    the variants in a fresh random order each round, each taking turns on DYNAMIC_SETS sets of
    parameters, gradients and meta gradients (every variant has its own state on each)."""
    sets = parameter_sets(size, DYNAMIC_SETS, torch.Generator().manual_seed(1))
    names = [FUSED_ADAM, *DYNAMIC_VARIANTS]
    steps: dict[str, list[Callable[[], object]]] = {}
    compile_s = {}
    for name in names:
        variant = DYNAMIC_VARIANTS.get(name)
        steps[name] = [
            torch.optim.Adam(params, fused=True).step
            if variant is None
            else dynamic_step(variant, params, meta)
            for params, meta in sets
        ]
        start = time.perf_counter()
        steps[name][0]()  # creates the state; compiles a compiled variant
        compile_s[name] = time.perf_counter() - start if variant and variant.compile else None
        for step in steps[name]:
            step()
    order = random.Random(0)
    per_run: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(runs):
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(size.rounds):
            for i in order.sample(range(len(names)), len(names)):
                step = steps[names[i]][(i + round_) % DYNAMIC_SETS]
                start = time.perf_counter()
                step()
                seconds[names[i]].append(time.perf_counter() - start)
        for name in names:
            ratio = median_ratio(seconds[name], seconds[FUSED_ADAM])
            per_run[name].append((statistics.median(seconds[name]), ratio))
    timings = {}
    for name, results in per_run.items():
        ms, vs_fused = zip(*results, strict=True)
        timings[name] = DynamicTiming(
            median_ms=1e3 * statistics.median(ms),
            vs_fused=statistics.median(vs_fused),
            vs_fused_range=(min(vs_fused), max(vs_fused)),
            compile_s=compile_s[name],
        )
    return timings


def dynamic_table(results: dict[str, dict[str, DynamicTiming]]) -> str:
    header = f"{'CPU step':<32}{'params':>7}{'ms':>10}{'/ fused Adam':>14}{'range':>13}"
    header += f"{'compile s':>11}"
    lines = [header, "-" * len(header)]
    for label, timings in results.items():
        for name, t in timings.items():
            compile_s = f"{t.compile_s:>11.1f}" if t.compile_s is not None else ""
            lines.append(
                f"{name:<32}{label:>7}{t.median_ms:>10.3f}{t.vs_fused:>13.2f}x"
                f"{t.vs_fused_range[0]:>7.2f}-{t.vs_fused_range[1]:.2f}{compile_s}"
            )
        lines.append("")
    lines.append(
        "DynamicAdam: the step without the meta batch's forward and backward (lookahead: a "
        "meta closure with a precomputed gradient; no meta: lookahead without a meta closure, "
        "the gate does not learn); / fused Adam: per-round time / torch.optim.Adam(fused=True)"
    )
    return "\n".join(lines)


def table(results: dict[str, dict[str, Timing]]) -> str:
    header = (
        f"{'CPU step':<24}{'params':>7}{'ms':>10}{'/ fused':>9}{'range':>13}"
        f"{'/ default':>11}{'range':>13}{'compile s':>11}"
    )
    lines = [header, "-" * len(header)]
    for label, timings in results.items():
        for name, t in timings.items():
            compile_s = f"{t.compile_s:>11.1f}" if t.compile_s is not None else ""
            lines.append(
                f"{name:<24}{label:>7}{t.median_ms:>10.3f}{t.vs_fused:>8.2f}x"
                f"{t.vs_fused_range[0]:>7.2f}-{t.vs_fused_range[1]:.2f}"
                f"{t.vs_default:>10.2f}x{t.vs_default_range[0]:>7.2f}-{t.vs_default_range[1]:.2f}"
                f"{compile_s}"
            )
        lines.append("")
    lines.append(
        f"/ fused: per-round time / torch's fused step of the same algorithm; / default: "
        f"/ {DEFAULT}; medians over rounds, then over runs (range: min-max over runs); "
        f"torch threads: {torch.get_num_threads()}"
    )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Timing]], sizes: list[Size], path: Path) -> None:
    """Step time against parameter count, log-log, one line per variant; beside it the
    ratio to torch's fused step, which load from other processes moves far less."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (times, ratios) = plt.subplots(1, 2, figsize=(12, 4.5))
    counts = [size.params for size in sizes]
    for name, variant in VARIANTS.items():
        style = "-" if variant.compiled else "--" if name.startswith("torch") else ":"
        timings = [results[size.label][name] for size in sizes]
        times.loglog(counts, [t.median_ms for t in timings], style, marker="o", label=name)
        ratios.semilogx(counts, [t.vs_fused for t in timings], style, marker="o", label=name)
    times.set_ylabel("step time (ms, median)")
    ratios.set_ylabel("time / torch fused step of the same algorithm")
    ratios.set_ylim(bottom=0)
    for ax in (times, ratios):
        ax.set_xlabel("float32 parameters (20 equal tensors)")
        ax.grid(True, which="both", alpha=0.3)
    times.legend(fontsize=8)
    fig.suptitle(f"Adam and AdamW steps on CPU, {torch.get_num_threads()} threads")
    fig.tight_layout()
    savefig(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="up to 10M, few rounds; no files")
    parser.add_argument("--runs", type=int, default=3, help="blocks of rounds (default 3)")
    parser.add_argument(
        "--dynamic-only", action="store_true", help="DynamicAdam only; writes nothing"
    )
    args = parser.parse_args(argv)
    sizes = [] if args.dynamic_only else QUICK if args.quick else FULL
    dynamic_sizes = DYNAMIC_QUICK if args.quick else DYNAMIC_FULL
    results, dynamic = {}, {}
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="optimlab-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read at each compile: cold compiles
        try:
            for size in sizes:
                print(
                    f"timing {size.label} parameters: {args.runs} x {size.rounds} rounds...",
                    file=sys.stderr,
                )
                results[size.label] = time_size(size, args.runs)
            for size in dynamic_sizes:
                print(
                    f"timing DynamicAdam at {size.label}: {args.runs} x {size.rounds} rounds...",
                    file=sys.stderr,
                )
                dynamic[size.label] = time_dynamic(size, args.runs)
        finally:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
            if previous is not None:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
    if results:
        print(table(results))
    print(dynamic_table(dynamic))
    if args.quick or args.dynamic_only:
        return
    payload = {
        "default": DEFAULT,
        "headline": HEADLINE,
        "runs": args.runs,
        "inductor_cache": "fresh temporary directory (compile_s is a first use)",
        "sizes": {
            size.label: {
                **asdict(size),
                "params": size.params,
                "timings": {name: asdict(t) for name, t in results[size.label].items()},
            }
            for size in sizes
        },
        "dynamic_adam": {
            size.label: {
                **asdict(size),
                "params": size.params,
                "timings": {name: asdict(t) for name, t in dynamic[size.label].items()},
            }
            for size in dynamic_sizes
        },
    }
    print(f"saved {save('optimizer_compile', payload)}", file=sys.stderr)
    plot(results, sizes, RESULTS / "step_scaling.png")
    print(f"saved {RESULTS / 'step_scaling.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
