"""Optimizer steps on a GPU: optimlab's Adam, AdamW and DynamicAdam (eager and compile=True)
against torch.optim's CUDA paths, at 10M and 100M float32 parameters (20 equal tensors).

The CPU benchmark's method (benchmarks/optimizer_compile.py), on CUDA: all variants in one
process, interleaved round by round in a fresh seeded order, each round's time relative to
torch's fused step of the same algorithm, medians over rounds. A step is timed from a
synchronised GPU to a synchronised GPU, so launches and Python count (what a step costs when
nothing overlaps it). DynamicAdam's meta batch costs nothing (PrecomputedMetaLoss): the step
is timed without the meta batch's forward and backward, the gate and the hypergradient's
dot product included. Compile time is the first step of a compiled variant (Triton).

    python -m benchmarks.cuda_step          # writes results/cuda_step.json; no CUDA: a line
    python -m benchmarks.cuda_step --quick  # 10M only, few rounds; writes nothing
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch

import optimlab.optim as oo
from benchmarks.common import save
from benchmarks.optimizer_compile import (
    DYNAMIC_VARIANTS,
    FUSED_ADAM,
    FUSED_ADAMW,
    Size,
    dynamic_step,
    median_ratio,
    parameter_sets,
)

Step = Callable[[], object]
MakeStep = Callable[[list[torch.Tensor], list[torch.Tensor]], Step]


def _plain(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]) -> MakeStep:
    return lambda params, _meta: make(params).step


# name: (how to make its step from parameters and meta gradients, the fused reference)
VARIANTS: dict[str, tuple[MakeStep, str]] = {
    FUSED_ADAM: (_plain(lambda ps: torch.optim.Adam(ps, fused=True)), FUSED_ADAM),
    "torch Adam foreach": (_plain(lambda ps: torch.optim.Adam(ps, foreach=True)), FUSED_ADAM),
    FUSED_ADAMW: (_plain(lambda ps: torch.optim.AdamW(ps, fused=True)), FUSED_ADAMW),
    "optimlab Adam eager": (_plain(lambda ps: oo.Adam(ps)), FUSED_ADAM),
    "optimlab Adam compiled": (_plain(lambda ps: oo.Adam(ps, compile=True)), FUSED_ADAM),
    "optimlab AdamW compiled": (_plain(lambda ps: oo.AdamW(ps, compile=True)), FUSED_ADAMW),
    **{
        name: (partial(dynamic_step, variant), FUSED_ADAM)
        for name, variant in DYNAMIC_VARIANTS.items()
    },
}
FULL = [Size("10M", 500_000, 60), Size("100M", 5_000_000, 30)]
QUICK = [Size("10M", 500_000, 10)]
SETS = 2  # parameter sets the variants take turns on


@dataclass
class Timing:
    median_ms: float
    vs_fused: float  # median per-round ratio to torch's fused step of the same algorithm
    compile_s: float | None  # first step of a compiled variant


def synchronised(step: Step) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def time_size(size: Size, device: torch.device) -> dict[str, Timing]:
    sets = parameter_sets(size, SETS, torch.Generator(device).manual_seed(0))
    steps: dict[str, list[Step]] = {}
    compile_s: dict[str, float | None] = {}
    for name, (make, _) in VARIANTS.items():
        steps[name] = [make(params, meta) for params, meta in sets]
        seconds = synchronised(steps[name][0])  # creates the state; compiles
        compile_s[name] = seconds if "compiled" in name else None
        for step in steps[name]:
            synchronised(step)
    names = list(VARIANTS)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)
    for round_ in range(size.rounds):
        for i in order.sample(range(len(names)), len(names)):
            seconds[names[i]].append(synchronised(steps[names[i]][(i + round_) % SETS]))
    return {
        name: Timing(
            median_ms=1e3 * statistics.median(seconds[name]),
            vs_fused=median_ratio(seconds[name], seconds[VARIANTS[name][1]]),
            compile_s=compile_s[name],
        )
        for name in names
    }


def table(results: dict[str, dict[str, Timing]], device_name: str) -> str:
    header = f"{'GPU step':<32}{'params':>7}{'ms':>10}{'/ fused':>9}{'compile s':>11}"
    lines = [header, "-" * len(header)]
    for label, timings in results.items():
        for name, t in timings.items():
            compile_s = f"{t.compile_s:>11.1f}" if t.compile_s is not None else ""
            lines.append(f"{name:<32}{label:>7}{t.median_ms:>10.3f}{t.vs_fused:>8.2f}x{compile_s}")
        lines.append("")
    lines.append(
        f"{device_name}; / fused: per-round time / torch's fused step of the same algorithm "
        "(Adam's for DynamicAdam); synchronised steps, medians over rounds"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10M only, few rounds; no files")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_step: no CUDA device here; nothing to time", file=sys.stderr)
        return
    device = torch.device("cuda")
    device_name = torch.cuda.get_device_name(device)
    results = {}
    for size in QUICK if args.quick else FULL:
        print(f"timing {size.label} parameters on {device_name}...", file=sys.stderr)
        results[size.label] = time_size(size, device)
    print(table(results, device_name))
    if args.quick:
        return
    payload = {
        "device": device_name,
        "sizes": {
            label: {"params": size.params, "timings": {n: asdict(t) for n, t in r.items()}}
            for (label, r), size in zip(results.items(), FULL, strict=True)
        },
    }
    print(f"saved {save('cuda_step', payload)}", file=sys.stderr)


if __name__ == "__main__":
    main()
