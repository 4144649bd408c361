"""The --device cuda paths on a real GPU: skipped where CUDA is not available.

On CUDA our optimizers take the multi-tensor path by default and compile=True goes through
Triton instead of inductor's C++. References: torch.optim on the same device, and the same
code on the CPU in float64 (the math does not depend on the device, so the two agree to
rounding). Training and the study run end to end with `device="cuda"`.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import optimlab.optim as oo
from optimlab.mnist1d.data import load_mnist1d, make_splits
from optimlab.mnist1d.train import TrainConfig, train
from optimlab.study import StudyConfig, run_study

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}
STEPS = 12


def make_problem(device: str) -> tuple[nn.Module, tuple, tuple]:
    """A float64 regression: model, training batch and meta batch, the same on every device."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.3)
    x, x_meta = torch.randn(2, 32, 4, generator=generator, dtype=torch.float64)
    batch, meta = (x, torch.sin(x.sum(1, keepdim=True))), (x_meta, torch.cos(x_meta[:, :1]))
    return model.to(device), tuple(t.to(device) for t in batch), tuple(t.to(device) for t in meta)


def groups(model: nn.Module) -> list[dict]:
    """Two groups with different hyperparameters, so that per-group scalars are exercised."""
    return [
        {"params": [model[0].weight]},
        {"params": [model[0].bias, *model[2].parameters()], "lr": 5e-3, "weight_decay": 0.1},
    ]


def mse(model: nn.Module, batch: tuple) -> torch.Tensor:
    return ((model(batch[0]) - batch[1]) ** 2).mean()


def run(make_optimizer, device: str) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Final parameters (on the CPU) and the optimizer after STEPS steps."""
    model, batch, meta = make_problem(device)
    optimizer = make_optimizer(groups(model))
    for step in range(STEPS):
        optimizer.zero_grad()
        mse(model, (batch[0] * (1 + 0.05 * step), batch[1])).backward()
        if getattr(optimizer, "hypergradient", None) == "lookahead":
            optimizer.step(meta_closure=lambda: mse(model, meta))
        else:
            optimizer.step()
    return [p.detach().cpu() for p in model.parameters()], optimizer


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop", "adam", "adamw"])
@pytest.mark.parametrize("foreach", [False, True])
def test_both_paths_on_cuda_match_torch(name, foreach):
    ours_cls = oo.get(name)
    torch_cls = getattr(torch.optim, ours_cls.__name__)
    options = {"lr": 0.01, "weight_decay": 0.01} | ({"momentum": 0.9} if name == "sgd" else {})
    reference, _ = run(lambda g: torch_cls(g, **options, foreach=False), "cuda")
    ours, _ = run(lambda g: ours_cls(g, **options, foreach=foreach), "cuda")
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, **TOLERANCE)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_compiled_adam_on_cuda_matches_torch(name):
    """compile=True on a GPU is Triton code; torch's fused CUDA kernel is the reference."""
    ours_cls = oo.get(name)
    torch_cls = getattr(torch.optim, ours_cls.__name__)
    reference, _ = run(lambda g: torch_cls(g, lr=0.01, weight_decay=0.01, fused=True), "cuda")
    ours, _ = run(lambda g: ours_cls(g, lr=0.01, weight_decay=0.01, compile=True), "cuda")
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, **TOLERANCE)


@pytest.mark.parametrize("hypergradient", ["lookahead", "online"])
@pytest.mark.parametrize("compile", [False, True])
def test_dynamic_adam_on_cuda_matches_the_cpu(hypergradient, compile):
    """The same gate, beta1 sequence and parameters as the eager CPU run, in float64."""

    def make(device: str, compile: bool):
        torch.manual_seed(0)  # the gate's first layer
        return lambda g: oo.DynamicAdam(
            g, lr=2e-2, gate_lr=0.05, hypergradient=hypergradient, compile=compile
        )

    cpu_params, cpu_optimizer = run(make("cpu", False), "cpu")
    gpu_params, gpu_optimizer = run(make("cuda", compile), "cuda")
    assert len(set(cpu_optimizer.beta1_history)) > 1  # the gate moved beta1
    assert gpu_optimizer.beta1_history == pytest.approx(cpu_optimizer.beta1_history, rel=1e-9)
    for mine, theirs in zip(gpu_params, cpu_params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-12)
    for mine, theirs in zip(
        gpu_optimizer.gate.parameters(), cpu_optimizer.gate.parameters(), strict=True
    ):
        torch.testing.assert_close(mine.detach().cpu(), theirs.detach(), rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return make_splits(load_mnist1d(tmp_path_factory.getbasetemp() / "mnist1d-cache"))


@pytest.mark.parametrize("optimizer", ["adam", "dynamic_adam"])
def test_mnist1d_training_on_cuda_follows_the_cpu(splits, optimizer):
    """float32 kernels differ between devices, so the runs agree to a tolerance, not bits."""
    config = TrainConfig(optimizer, lr=3e-3, epochs=2, seed=1)
    cpu = train(config, splits)
    gpu = train(TrainConfig(optimizer, lr=3e-3, epochs=2, seed=1, device="cuda"), splits)
    for mine, theirs in zip(gpu.history, cpu.history, strict=True):
        assert mine.val_loss == pytest.approx(theirs.val_loss, rel=1e-3)
        assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-3)
    assert gpu.final.test_loss == pytest.approx(cpu.final.test_loss, rel=1e-3)


def test_study_runs_on_cuda(tmp_path):
    config = StudyConfig(
        optimizers=["adam", "dynamic_adam"], trials=2, epochs=2, seeds=2, workers=1, device="cuda"
    )
    run_study(config, tmp_path / "run", quiet=True)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert recorded["config"]["device"] == "cuda"
    assert set(summary["optimizers"]) == {"adam", "dynamic_adam"}
