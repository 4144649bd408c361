"""A full training step (forward, backward, step) with DynamicAdam against Adam, on CPU.

Four ways to train, each on its own copy of the same model and batches:

- adam: optimlab's Adam (the reference of every ratio);
- online: DynamicAdam(hypergradient="online"), a drop-in for Adam;
- lookahead: DynamicAdam(hypergradient="lookahead") with a meta batch of the same size: the
  step includes the meta forward and backward;
- create_graph: the published way to train the gate: loss.backward(create_graph=True), fast
  weights built differentiably from the live parameters, meta loss backward into the gate
  (`CreateGraphReference` below; it computes the same gate gradient, see the tests).

on the mnist1d reference MLP (40-100-100-10 ReLU, batch 100) and on a 10.5M-parameter MLP
(batch 16). Times are measured in one process, interleaved round by round in a rotating
order; each ratio is the median over rounds of (time / adam's time in that round). Peak
memory is the peak RSS of a fresh subprocess per configuration that runs a few steps,
reported as a ratio to adam's.

    python -m benchmarks.training_step            # writes results/training_step.json
    python -m benchmarks.training_step --quick    # smoke run: small, nothing written
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call

from benchmarks.common import save
from optimlab.optim.adam import Adam
from optimlab.optim.dynamic_adam import DynamicAdam
from optimlab.optim.gate import beta1_from_output, gradient_features, make_gate

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("adam", "online", "lookahead", "create_graph")
LR, GATE_LR, BETAS, EPS, BETA1_RANGE = 1e-3, 1e-3, (0.9, 0.999), 1e-8, (0.0, 0.999)


@dataclass
class Model:
    label: str
    widths: tuple[int, ...]  # an MLP: Linear layers between these widths, ReLU between them
    batch: int
    rounds: int  # timing rounds (full run)
    steps_per_round: int


MODELS = {
    "mnist1d_mlp": Model(
        "mnist1d MLP", (40, 100, 100, 10), batch=100, rounds=30, steps_per_round=40
    ),
    "mlp_10m": Model(
        "10M MLP", (1024, 2048, 2048, 2048, 10), batch=16, rounds=9, steps_per_round=2
    ),
}


def build(model: Model, seed: int = 0) -> tuple[nn.Module, tuple[Tensor, Tensor], tuple]:
    """The model and a fixed training batch and meta batch of random data."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(model.widths, model.widths[1:], strict=False)):
        layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(model.widths) - 2 else [])
    net = nn.Sequential(*layers)

    def batch() -> tuple[Tensor, Tensor]:
        return torch.randn(model.batch, model.widths[0]), torch.randint(
            model.widths[-1], (model.batch,)
        )

    return net, batch(), batch()


class CreateGraphReference:
    """The published way of training the gate (for timing): the gate's gradient flows back
    through a graph of the training update kept by loss.backward(create_graph=True). The
    meta backward also leaks validation gradients into p.grad (design notes 3.4); here the
    update is taken from the detached fast weights, so the model trains as DynamicAdam's."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.names, self.params = zip(*net.named_parameters(), strict=True)
        first = self.params[0]
        self.gate = make_gate(16, BETAS[0], BETA1_RANGE, dtype=first.dtype, device=first.device)
        self.gate_optimizer = Adam(self.gate.parameters(), lr=GATE_LR, foreach=True)
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.product = 1.0  # P_{t-1}
        self.t = 0

    def step(self, loss_fn: Callable, batch: tuple, meta_batch: tuple) -> None:
        self.net.zero_grad(set_to_none=True)
        self.gate_optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the .grad reference cycle it warns of: see the end
            warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
            loss_fn(self.net(batch[0]), batch[1]).backward(create_graph=True)
        grads = [p.grad for p in self.params]
        beta1 = beta1_from_output(self.gate(gradient_features(grads)), *BETA1_RANGE)
        product, self.t = self.product * beta1, self.t + 1
        fast, moments = {}, []
        for name, p, g, m, v in zip(
            self.names, self.params, grads, self.exp_avgs, self.exp_avg_sqs, strict=True
        ):
            m, v = beta1 * m + (1 - beta1) * g, BETAS[1] * v + (1 - BETAS[1]) * g * g
            vhat = v / (1 - BETAS[1] ** self.t)
            fast[name] = p - LR * (m / (1 - product)) / (vhat.sqrt() + EPS)
            moments.append((m, v))
        meta_loss = loss_fn(functional_call(self.net, fast, (meta_batch[0],)), meta_batch[1])
        meta_loss.backward()
        self.gate_optimizer.step()
        with torch.no_grad():
            for name, p, (m, v), m_old, v_old in zip(
                self.names, self.params, moments, self.exp_avgs, self.exp_avg_sqs, strict=True
            ):
                p.copy_(fast[name])
                m_old.copy_(m)
                v_old.copy_(v)
        self.product = product.item()
        self.net.zero_grad(set_to_none=True)  # drop the create_graph graph held by p.grad


def training_step(method: str, model: Model, seed: int = 0) -> Callable[[], None]:
    """A closure running one full training step of `method` on a fresh copy of `model`."""
    net, batch, meta_batch = build(model, seed)
    loss_fn = nn.functional.cross_entropy
    if method == "create_graph":
        reference = CreateGraphReference(net)
        return lambda: reference.step(loss_fn, batch, meta_batch)
    if method == "adam":
        optimizer: torch.optim.Optimizer = Adam(net.parameters(), lr=LR, betas=BETAS, eps=EPS)
    else:
        optimizer = DynamicAdam(
            net.parameters(), lr=LR, betas=BETAS, eps=EPS, gate_lr=GATE_LR, hypergradient=method
        )
    meta = (lambda: loss_fn(net(meta_batch[0]), meta_batch[1])) if method == "lookahead" else None

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(net(batch[0]), batch[1]).backward()
        if meta is None:
            optimizer.step()
        else:
            optimizer.step(meta_closure=meta)

    return step


@dataclass
class Timing:
    median_ms: float
    ratio: float  # median over rounds of (time / adam's time in the same round)


def time_methods(model: Model, rounds: int, steps_per_round: int) -> dict[str, Timing]:
    steps = {method: training_step(method, model) for method in METHODS}
    for step in steps.values():  # warm-up: allocator, lazily created state
        for _ in range(3):
            step()
    seconds: dict[str, list[float]] = {method: [] for method in METHODS}
    for round_ in range(rounds):
        shift = round_ % len(METHODS)
        for method in METHODS[shift:] + METHODS[:shift]:
            step = steps[method]
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            seconds[method].append((time.perf_counter() - start) / steps_per_round)
    adam = seconds["adam"]
    return {
        method: Timing(
            median_ms=1e3 * statistics.median(times),
            ratio=statistics.median(t / a for t, a in zip(times, adam, strict=True)),
        )
        for method, times in seconds.items()
    }


@dataclass
class Memory:
    peak_rss_mb: float
    ratio: float  # peak RSS / adam's peak RSS


def peak_rss_mb(model_key: str, method: str, steps: int, threads: int) -> float:
    """Peak RSS of a fresh process that builds `model_key` and runs `steps` steps."""
    command = [sys.executable, "-m", "benchmarks.training_step", "--child", model_key, method]
    command += ["--steps", str(steps), "--threads", str(threads)]
    output = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(output.stdout)["peak_rss_mb"]


def measure_memory(model_key: str, steps: int, threads: int) -> dict[str, Memory]:
    peaks = {method: peak_rss_mb(model_key, method, steps, threads) for method in METHODS}
    return {method: Memory(peak, peak / peaks["adam"]) for method, peak in peaks.items()}


def child(model_key: str, method: str, steps: int) -> None:
    step = training_step(method, MODELS[model_key])
    for _ in range(steps):
        step()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_rss_mb": peak_kb / 1024}))


def table(timings: dict[str, dict[str, Timing]], memory: dict[str, dict[str, Memory]]) -> str:
    header = (
        f"{'model':<13}{'method':<14}{'ms/step':>10}{'x adam':>8}{'peak RSS MB':>13}{'x adam':>8}"
    )
    lines = [header, "-" * len(header)]
    for key, per_method in timings.items():
        for method, timing in per_method.items():
            peak = memory[key][method]
            lines.append(
                f"{MODELS[key].label:<13}{method:<14}{timing.median_ms:>10.3f}{timing.ratio:>8.2f}"
                f"{peak.peak_rss_mb:>13.0f}{peak.ratio:>8.2f}"
            )
    lines.append("ratios: time per step / adam's in the same round (median); peak RSS / adam's")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run; writes nothing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        child(*args.child, args.steps)
        return
    # Memory first: a child process inherits the parent's peak RSS as its own ru_maxrss at
    # fork/exec, so children are started while this process is still small.
    memory = {}
    for key, model in MODELS.items():
        print(f"peak memory {model.label}: one process per method...", file=sys.stderr)
        memory[key] = measure_memory(key, 2 if args.quick else 5, args.threads)
    timings = {}
    for key, model in MODELS.items():
        rounds, per_round = (3, 2) if args.quick else (model.rounds, model.steps_per_round)
        print(f"timing {model.label}: {rounds} rounds x {per_round} steps...", file=sys.stderr)
        timings[key] = time_methods(model, rounds, per_round)
    print(table(timings, memory))
    if not args.quick:
        payload = {
            "reference": "adam",
            "threads": args.threads,
            "models": {
                key: {
                    **asdict(MODELS[key]),
                    "timings": {m: asdict(t) for m, t in timings[key].items()},
                    "memory": {m: asdict(p) for m, p in memory[key].items()},
                }
                for key in MODELS
            },
        }
        print(f"saved {save('training_step', payload)}", file=sys.stderr)


if __name__ == "__main__":
    main()
