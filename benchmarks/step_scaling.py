"""Optimizer step time against parameter count (100k to 50M float32 parameters), for each of
optimlab's optimizers and paths (default, foreach, compile=True) against torch.optim's
(default, foreach, fused where it exists).

Parameters are 20 equal tensors with fixed random gradients. One family at a time (the
optimizers of one algorithm, ours and torch's) holds its own copies of parameters,
gradients and state; its variants run interleaved round by round in a fresh random order,
so load from other processes hits them alike. Each round gives every variant's time relative
to the family's reference in that round (torch's fused step, else its foreach step); the
JSON and the table report the medians. DynamicAdam has no torch twin: its reference is
torch.optim.Adam(fused=True), the memory-bandwidth limit of an Adam step (issue 8). Its
lookahead "update" is the step without the meta batch's forward and backward: the meta
closure returns a loss whose gradient is precomputed. Compiled variants are built through
`optimlab.optim.create(name, params, compile=True)`; where that raises TypeError the
variant is skipped with a note. 50M runs only the Adam and DynamicAdam families. One torch
thread by default: on the shared 2-core machine two OpenMP threads stall whenever another
process holds a core (steps then took 10 to 50 times longer, erratically); `--threads 2`
measures the machine's full bandwidth when it is otherwise idle.

    python -m benchmarks.step_scaling          # writes results/step_scaling.json and
                                               # results/step_time_vs_params.png (~3 min)
    python -m benchmarks.step_scaling --quick  # smoke run: 100k, eager only, nothing written
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import optimlab.optim as oo
from benchmarks.common import RESULTS, save

TENSORS = 20
SIZES = {"100k": 100_000, "1M": 1_000_000, "10M": 10_000_000, "50M": 50_000_000}
ROUNDS = {"100k": 60, "1M": 20, "10M": 6, "50M": 3}
LARGE_FAMILIES = ("adam", "dynamic_adam online", "dynamic_adam lookahead")  # also at 50M
HEADLINE = "10M"
LR = 1e-3
COLORS = {  # the same path in the same colour on every panel
    "optimlab default": "C0",
    "optimlab foreach": "C1",
    "optimlab compiled": "C2",
    "torch default": "C3",
    "torch foreach": "C4",
    "torch fused": "C5",
    "torch Adam fused": "C5",
}
Make = Callable[[list[Tensor]], torch.optim.Optimizer]
Step = Callable[[], object]


@dataclass
class Variant:
    label: str
    make: Make
    compiled: bool = False
    lookahead: bool = False  # step with a meta closure (DynamicAdam's lookahead update)


def _torch(cls: type, **kw: object) -> Make:
    return lambda ps: cls(ps, lr=LR, **kw)


def _ours(name: str, **kw: object) -> Make:
    return lambda ps: oo.create(name, ps, lr=LR, **kw)


def _family(name: str, torch_cls: type | None, fused: bool, **kw: object) -> list[Variant]:
    """torch's paths (if it has the algorithm), then optimlab's default, foreach, compiled."""
    variants = []
    if torch_cls is not None:
        variants += [
            Variant("torch default", _torch(torch_cls, foreach=False, **kw)),
            Variant("torch foreach", _torch(torch_cls, foreach=True, **kw)),
        ]
        if fused:
            variants.append(Variant("torch fused", _torch(torch_cls, fused=True, **kw)))
    return variants + [
        Variant("optimlab default", _ours(name, **kw)),
        Variant("optimlab foreach", _ours(name, foreach=True, **kw)),
        Variant("optimlab compiled", _ours(name, compile=True, **kw), compiled=True),
    ]


def _dynamic(mode: str) -> list[Variant]:
    lookahead = mode == "lookahead"
    return [
        Variant("torch Adam fused", _torch(torch.optim.Adam, fused=True)),
        Variant("optimlab default", _ours("dynamic_adam", hypergradient=mode), False, lookahead),
        Variant(
            "optimlab compiled",
            _ours("dynamic_adam", hypergradient=mode, compile=True),
            True,
            lookahead,
        ),
    ]


FAMILIES: dict[str, list[Variant]] = {
    "sgd": _family("sgd", torch.optim.SGD, True, momentum=0.9),
    "adagrad": _family("adagrad", torch.optim.Adagrad, True),
    "rmsprop": _family("rmsprop", torch.optim.RMSprop, False),
    "adam": _family("adam", torch.optim.Adam, True),
    "adamw": _family("adamw", torch.optim.AdamW, True),
    "dynamic_adam online": _dynamic("online"),
    "dynamic_adam lookahead": _dynamic("lookahead"),
}


def reference(family: str, labels: list[str]) -> str:
    """The label every ratio of `family` is taken against: torch's fastest path measured."""
    for label in ("torch fused", "torch Adam fused", "torch foreach"):
        if label in labels:
            return label
    raise ValueError(f"{family}: no torch reference among {labels}")


def fixed_meta_closure(params: list[Tensor], grads: list[Tensor]) -> Callable[[], Tensor]:
    """A meta loss whose gradient with respect to `params` is `grads`, at no compute cost:
    the lookahead update is timed without a meta batch's forward and backward."""

    class Fixed(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, *tensors: Tensor) -> Tensor:
            return tensors[0].new_zeros(())

        @staticmethod
        def backward(ctx: object, _: Tensor) -> tuple[Tensor, ...]:
            return tuple(grads)

    return lambda: Fixed.apply(*params)


def build(variant: Variant, values: list[Tensor], grads: list[Tensor]) -> Step:
    """`variant`'s step on its own copy of the parameters (raises what the constructor does)."""
    params = [v.clone().requires_grad_() for v in values]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    optimizer = variant.make(params)
    if variant.lookahead:
        closure = fixed_meta_closure(params, grads)
        return lambda: optimizer.step(meta_closure=closure)
    return optimizer.step


def time_family(family: str, numel: int, rounds: int, quick: bool) -> tuple[dict, list[str]]:
    """Median ms and median per-round ratio to the reference for each variant; notes."""
    data = torch.Generator().manual_seed(0)
    per = numel // TENSORS
    values = [torch.randn(per, generator=data) for _ in range(TENSORS)]
    grads = [torch.randn(per, generator=data) * 1e-2 for _ in range(TENSORS)]
    steps: dict[str, Step] = {}
    notes, compile_s = [], {}
    for variant in FAMILIES[family]:
        if variant.compiled and quick:
            continue
        try:
            step = build(variant, values, grads)
            start = time.perf_counter()
            step()  # creates the state; compiles a compiled variant
            compile_s[variant.label] = time.perf_counter() - start
            step()
        except (TypeError, RuntimeError, NotImplementedError) as exc:
            notes.append(f"{family} {variant.label}: skipped ({type(exc).__name__}: {exc})")
            continue
        steps[variant.label] = step
    labels = list(steps)
    ref = reference(family, labels)
    order = random.Random(0)
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(rounds):
        for label in order.sample(labels, len(labels)):
            start = time.perf_counter()
            steps[label]()
            seconds[label].append(time.perf_counter() - start)
    timings = {
        label: {
            "median_ms": 1e3 * statistics.median(times),
            "ratio": statistics.median(t / r for t, r in zip(times, seconds[ref], strict=True)),
            "first_step_s": compile_s[label],
        }
        for label, times in seconds.items()
    }
    return {"reference": ref, "timings": timings}, notes


def checks(results: dict) -> list[dict]:
    """Issue 8's step targets at the headline size, where measured."""
    at = {f: r.get(HEADLINE, {}).get("timings", {}) for f, r in results.items()}
    wanted = [
        ("adam", "optimlab compiled", "torch fused", 1.1),
        ("adamw", "optimlab compiled", "torch fused", 1.1),
        ("dynamic_adam lookahead", "optimlab compiled", "torch Adam fused", 1.3),
        ("dynamic_adam online", "optimlab compiled", "torch Adam fused", 1.6),
    ]
    out = []
    for family, ours, theirs, target in wanted:
        t = at.get(family, {})
        if ours in t and theirs in t:
            out.append(_check(f"{family} {ours} / {theirs} at {HEADLINE}", t, ours, theirs, target))
    for family in ("sgd", "adagrad", "rmsprop", "adam", "adamw"):
        t = at.get(family, {})
        if "optimlab default" in t and "torch default" in t:
            name = f"{family} optimlab default / torch default at {HEADLINE}"
            out.append(_check(name, t, "optimlab default", "torch default", 1.0))
    return out


def _check(name: str, timings: dict, ours: str, theirs: str, target: float) -> dict:
    value = timings[ours]["median_ms"] / timings[theirs]["median_ms"]
    return {"name": name, "value": value, "target": f"<= {target}", "met": value <= target}


def plot(results: dict, sizes: dict[str, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optimlab.atomic import savefig

    families = list(results)
    cols = 4
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, family in zip(axes.flat, families, strict=False):
        labels = {label for r in results[family].values() for label in r["timings"]}
        for label in sorted(labels):
            points = [
                (sizes[s], r["timings"][label]["median_ms"])
                for s, r in results[family].items()
                if label in r["timings"]
            ]
            style = "--" if label.startswith("torch") else "-"
            ax.plot(
                *zip(*points, strict=True),
                style,
                marker="o",
                ms=3,
                label=label,
                color=COLORS.get(label),
            )
        ax.set(xscale="log", yscale="log", title=family, xlabel="parameters")
        ax.set_ylabel("ms per step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(families) :]:
        ax.set_visible(False)
    threads = torch.get_num_threads()
    fig.suptitle(f"Optimizer step time on CPU ({threads} thread{'s' * (threads > 1)})")
    fig.tight_layout()
    savefig(fig, RESULTS / "step_time_vs_params.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; nothing is saved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = {"100k": SIZES["100k"]} if args.quick else SIZES
    results: dict[str, dict] = {family: {} for family in FAMILIES}
    notes: list[str] = []
    for label, numel in sizes.items():
        for family in FAMILIES:
            if numel > SIZES[HEADLINE] and family not in LARGE_FAMILIES:
                continue
            print(f"{label:>5} {family}...", file=sys.stderr, flush=True)
            rounds = 3 if args.quick else ROUNDS[label]
            results[family][label], more = time_family(family, numel, rounds, args.quick)
            notes += [n for n in more if n not in notes]
    for family, by_size in results.items():
        for label, r in by_size.items():
            for variant, t in r["timings"].items():
                print(
                    f"{label:>5} {family:24s} {variant:18s} {t['median_ms']:9.3f} ms "
                    f"{t['ratio']:5.2f}x {r['reference']}"
                )
    print("\n".join(notes))
    if not args.quick:
        payload = {
            "tensors": TENSORS,
            "sizes": sizes,
            "headline": HEADLINE,
            "families": results,
            "checks": checks(results),
            "notes": notes,
        }
        print(f"saved {save('step_scaling', payload)}", file=sys.stderr)
        plot(results, sizes)


if __name__ == "__main__":
    main()
