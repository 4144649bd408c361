"""Speed of the surfaces benchmark: `optimlab surfaces` and `--quick` end to end (a fresh
process each, imports, figures and GIFs included), their phases, and what batching buys.

Targets (issue 4): the default run under 60 s on the 2-core CPU (later: under 20 s), --quick
under 15 s. The batching ratio compares, in this process, one batched run of 16 start points
x 6 optimizer variants against the same 96 runs made one by one with the library optimizers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import save
from optimlab import optim
from optimlab.optim.dynamic_adam import DynamicAdam
from optimlab.surfaces import OPTIMIZER_VARIANTS, VARIANTS, get
from optimlab.surfaces.bench import start_points
from optimlab.surfaces.runner import Block, run

TARGETS_S = {"default": 60.0, "default_later": 20.0, "quick": 15.0}
LR = {"sgd": 1e-4, "adagrad": 0.5, "rmsprop": 0.01, "adam": 0.05}


def cli_run(*flags: str) -> dict:
    """Wall time of `optimlab surfaces FLAGS` in a fresh process, and its phase timings."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "optimlab", "surfaces", *flags, "--out", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        phases = json.loads((out / "run.json").read_text())["timings"]
    return {"wall_s": wall, **phases}


def batching_ratio(steps: int = 100) -> dict:
    """One batched run vs. the library optimizers one start point at a time (Rosenbrock)."""
    surface = get("rosenbrock")
    starts = start_points(surface, 16, seed=0)
    blocks = [
        Block(
            surface, v, starts, {"lr": LR.get(v, 0.05), **({"momentum": 0.9} if v == "sgd" else {})}
        )
        for v in OPTIMIZER_VARIANTS
    ]
    started = time.perf_counter()
    run(blocks, steps)
    batched = time.perf_counter() - started
    started = time.perf_counter()
    for block in blocks:
        spec = VARIANTS[block.variant]
        for start in starts:
            p = start.clone().requires_grad_()
            kwargs = {**spec.library_options, **block.hyper}
            opt = (
                optim.create(spec.library, [p], **kwargs)
                if spec.library in optim.available()
                else DynamicAdam([p], **kwargs)
            )
            for _ in range(steps):
                opt.zero_grad()
                surface.fn(p[:1], p[1:]).sum().backward()
                if kwargs.get("hypergradient") == "lookahead":
                    opt.step(meta_closure=lambda p=p: surface.fn(p[:1], p[1:]).sum())
                else:
                    opt.step()
    one_by_one = time.perf_counter() - started
    return {
        "runs": len(blocks) * len(starts),
        "steps": steps,
        "batched_s": batched,
        "one_by_one_s": one_by_one,
        "speedup": one_by_one / batched,
    }


def main() -> dict:
    payload = {
        "default": cli_run(),
        "quick": cli_run("--quick"),
        "batching": batching_ratio(),
        "targets_s": TARGETS_S,
    }
    payload["meets"] = {
        name: payload[name.split("_")[0]]["wall_s"] < limit for name, limit in TARGETS_S.items()
    }
    path = save("surfaces_speed", payload)
    print(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
