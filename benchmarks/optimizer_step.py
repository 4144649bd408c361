"""One Adam `step()` on CPU: optimlab's (default path and foreach) against torch.optim's
(for-loop, torch's default on CPU; foreach; fused), at 100k and 10M float32 parameters.

All variants run in one process, each on its own copy of the same parameters and gradients,
interleaved round by round in a rotating order, so that load from other processes hits them
alike. Each round gives every variant's time relative to torch's for-loop step in that round;
the table reports the medians.

    python -m benchmarks.optimizer_step            # writes results/optimizer_step.json
    python -m benchmarks.optimizer_step --quick    # smoke run: small, nothing written
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

import optimlab.optim as oo
from benchmarks.common import save

REFERENCE = "torch for-loop"
VARIANTS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    REFERENCE: lambda params: torch.optim.Adam(params, foreach=False),
    "torch foreach": lambda params: torch.optim.Adam(params, foreach=True),
    "torch fused": lambda params: torch.optim.Adam(params, fused=True),
    "optimlab default": lambda params: oo.Adam(params),
    "optimlab foreach": lambda params: oo.Adam(params, foreach=True),
}


@dataclass
class Size:
    label: str
    tensors: int
    numel_per_tensor: int
    rounds: int


FULL = [Size("100k", 10, 10_000, 300), Size("10M", 20, 500_000, 40)]
QUICK = [Size("100k", 10, 10_000, 20), Size("1M", 4, 250_000, 5)]


@dataclass
class Timing:
    median_ms: float
    ratio: float  # median over rounds of (this variant's time / the reference's time)


def time_steps(size: Size, warmup: int = 3) -> dict[str, Timing]:
    """Each variant's step time at `size`, measured in interleaved rounds."""
    data = torch.Generator().manual_seed(0)
    values = [torch.randn(size.numel_per_tensor, generator=data) for _ in range(size.tensors)]
    grads = [torch.randn(size.numel_per_tensor, generator=data) for _ in range(size.tensors)]
    steps = {}
    for name, make_optimizer in VARIANTS.items():
        params = [v.clone().requires_grad_() for v in values]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        steps[name] = make_optimizer(params).step
    for _ in range(warmup):
        for step in steps.values():
            step()
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(size.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - start)
    reference = seconds[REFERENCE]
    return {
        name: Timing(
            median_ms=1e3 * statistics.median(times),
            ratio=statistics.median(t / r for t, r in zip(times, reference, strict=True)),
        )
        for name, times in seconds.items()
    }


def table(results: dict[str, dict[str, Timing]]) -> str:
    labels = list(results)
    header = f"{'Adam step (CPU)':<18}" + "".join(f"{label:>22}" for label in labels)
    lines = [header, "-" * len(header)]
    for name in VARIANTS:
        cells = "".join(
            f"{results[label][name].median_ms:>10.3f} ms {results[label][name].ratio:>6.2f}x"
            for label in labels
        )
        lines.append(f"{name:<18}{cells}")
    lines.append(f"ratios: per-round time / {REFERENCE} time (torch's default on CPU), median")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run; writes nothing")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    results = {}
    for size in sizes:
        print(f"timing {size.label} parameters, {size.rounds} rounds...", file=sys.stderr)
        results[size.label] = time_steps(size)
    print(table(results))
    if not args.quick:
        payload = {
            "reference": REFERENCE,
            "sizes": {
                size.label: {
                    **asdict(size),
                    "timings": {name: asdict(t) for name, t in results[size.label].items()},
                }
                for size in sizes
            },
        }
        print(f"saved {save('optimizer_step', payload)}", file=sys.stderr)


if __name__ == "__main__":
    main()
