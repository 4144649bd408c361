"""The benchmark summary and the new benchmarks' smoke runs.

The summary is built from small JSON fixtures written here (the shapes the benchmarks save),
and its verdicts are checked against the fixture's own numbers; the quick runs only prove
that each benchmark's code path works end to end (they save nothing).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def summary(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # the benchmarks package is not installed
    return importlib.import_module("benchmarks.summary")


@pytest.fixture
def step_scaling(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("benchmarks.step_scaling")


def timing(ms: float, ratio: float) -> dict:
    return {"median_ms": ms, "ratio": ratio, "first_step_s": 0.1}


STEP_SCALING = {
    "benchmark": "step_scaling",
    "environment": {"torch": "2.x", "threads": 2},
    "headline": "10M",
    "sizes": {"10M": 10_000_000},
    "families": {
        "adam": {
            "10M": {
                "reference": "torch fused",
                "timings": {
                    "torch default": timing(30.0, 4.0),
                    "torch fused": timing(7.5, 1.0),
                    "optimlab compiled": timing(9.0, 1.2),
                },
            }
        }
    },
    "checks": [
        {
            "name": "adam optimlab compiled / torch fused at 10M",
            "value": 1.2,
            "target": "<= 1.1",
            "met": False,
        }
    ],
    "notes": ["sgd optimlab compiled: skipped (TypeError: no compile)"],
}
STUDY_SPEED = {
    "benchmark": "study_speed",
    "runs": {
        "claim_protocol": {
            "command": "optimlab mnist1d --optimizers adam,dynamic_adam",
            "seconds": 27.5,
            "study_seconds": 24.0,
            "target_seconds": 30.0,
        },
        "full_run": {
            "command": "optimlab run",
            "seconds": 200.0,
            "study_seconds": 180.0,
            "target_seconds": 180.0,
        },
    },
}
TRAINING_STEP = {
    "benchmark": "training_step",
    "models": {
        "mnist1d_mlp": {
            "label": "mnist1d MLP",
            "timings": {
                "adam": timing(0.5, 1.0),
                "online": timing(0.55, 1.1),
                "lookahead": timing(1.1, 2.2),
            },
        }
    },
}


def test_summary_tables_and_verdicts_come_from_the_json(summary, tmp_path):
    for data in (STEP_SCALING, STUDY_SPEED, TRAINING_STEP):
        (tmp_path / f"{data['benchmark']}.json").write_text(json.dumps(data))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "step_time_vs_params.png").write_bytes(b"")
    path = summary.write(tmp_path)
    text = path.read_text()
    assert path == tmp_path / "SUMMARY.md"
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.count(" | ") == 4}
    # the claim took 27.5 s against 30 s; the full run 200 s against 180 s
    claim = rows["`optimlab mnist1d --optimizers adam,dynamic_adam` (s)"]
    assert "27.5" in claim and claim.endswith("| yes |")
    assert rows["`optimlab run` (s)"].endswith("| **no** |")
    # training step: online 1.1 <= 1.15 met, lookahead 2.2 > 2.0 not met
    assert rows["mnist1d MLP step, DynamicAdam online / Adam"].endswith("| yes |")
    assert rows["mnist1d MLP step, DynamicAdam lookahead / Adam"].endswith("| **no** |")
    assert "1.2" in rows["adam optimlab compiled / torch fused at 10M"]
    assert "## Targets (issue 8): 2 of 5 met" in text
    assert "| adam | torch fused | 7.500 ms | 1.00x | torch fused |" in text
    assert "- sgd optimlab compiled: skipped" in text
    assert "![step_time_vs_params.png](step_time_vs_params.png)" in text
    assert "broken" not in text  # unreadable JSON is skipped, not fatal


def test_gpu_figures_are_tabled_without_targets(summary):
    timing = {"median_ms": 0.5, "vs_fused": 2.0, "compile_s": None}
    data = {"device": "Some GPU", "sizes": {"10M": {"params": 10**7, "timings": {"x": timing}}}}
    text = summary.build({"cuda_step": data})
    assert "| step on Some GPU (ratio to torch fused) | 10M |" in text
    assert "| x | 0.500 ms (2.00x) |" in text
    assert "0 of 0 met" in text


def test_a_malformed_or_unknown_result_gets_a_line_not_a_crash(summary):
    text = summary.build({"study_speed": {"runs": {"x": {}}}, "mystery": {"a": 1}})
    assert "could not summarise study_speed.json" in text
    assert "## mystery" in text and "no summary for this benchmark" in text
    assert "0 of 0 met" in text


def test_the_fixed_meta_closure_gives_the_precomputed_gradient(step_scaling):
    params = [torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)]
    grads = [torch.randn(3), torch.randn(2)]
    loss = step_scaling.fixed_meta_closure(params, grads)()
    got = torch.autograd.grad(loss, params)
    assert all(torch.equal(g, w) for g, w in zip(got, grads, strict=True))


def test_step_checks_compare_against_the_issue_targets(step_scaling):
    results = {
        "adam": {
            "10M": {
                "timings": {
                    "optimlab compiled": timing(7.7, 0),
                    "torch fused": timing(7.0, 0),
                    "optimlab default": timing(20.0, 0),
                    "torch default": timing(30.0, 0),
                }
            }
        },
    }
    checks = {c["name"]: c for c in step_scaling.checks(results)}
    compiled = checks["adam optimlab compiled / torch fused at 10M"]
    assert compiled["value"] == pytest.approx(1.1) and compiled["met"]
    assert checks["adam optimlab default / torch default at 10M"]["met"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["step_scaling", "study_scaling"])
def test_quick_mode_runs(name):
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


# The speed changes of issue 8 keep results: each fast path against the plain one.


def test_snapshot_pruner_gives_optunas_verdicts():
    import random

    import optuna

    from optimlab import tuning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    epochs, rng = 25, random.Random(0)
    ours = tuning.make_pruner(epochs)
    theirs = optuna.pruners.MedianPruner(
        n_startup_trials=tuning.PRUNER_STARTUP_TRIALS, n_warmup_steps=tuning.warmup_epochs(epochs)
    )
    study = optuna.create_study(direction="minimize")
    verdicts = []
    for _ in range(14):
        trial, scale = study.ask(), rng.uniform(0.5, 2.0)
        for step in range(1, epochs + 1):
            trial.report(scale / step + rng.gauss(0, 0.01), step)
            frozen = study.get_trials(deepcopy=False)[-1]
            verdict = theirs.prune(study, frozen)
            assert ours.prune(study, frozen) == verdict
            verdicts.append(verdict)
            if verdict:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, scale / epochs)
    assert any(verdicts) and not all(verdicts)  # both kinds of verdict were compared


def test_mlp_forward_is_the_submodules_forward_bit_for_bit():
    from optimlab.mnist1d.models import MLP

    torch.manual_seed(0)
    model, x = MLP(), torch.randn(64, 40)
    h = model.linear1(x).relu()
    expected = model.linear3(h + model.linear2(h).relu())
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize("optimizer", ["adam", "dynamic_adam"])
def test_training_step_equals_zero_grad_then_step(optimizer):
    import torch.nn.functional as F

    from optimlab.mnist1d.models import build_model
    from optimlab.mnist1d.train import TrainConfig, build_optimizer, make_step

    config = TrainConfig(optimizer, lr=1e-2)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("mlp")
        models.append((model, build_optimizer(config, model)))
    (fast, fast_opt), (plain, plain_opt) = models
    step = make_step(config, fast, fast_opt)
    data = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(20, 40, generator=data), torch.randint(0, 10, (20,), generator=data)
        xm, ym = torch.randn(20, 40, generator=data), torch.randint(0, 10, (20,), generator=data)
        step(x, y, xm, ym)
        plain_opt.zero_grad(set_to_none=True)
        F.cross_entropy(plain(x), y).backward()
        if optimizer == "adam":
            plain_opt.step()
        else:
            plain_opt.step(meta_closure=lambda x=xm, y=ym: F.cross_entropy(plain(x), y))
    for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


def test_named_benchmarks_run_alone_and_the_summary_is_rebuilt(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("benchmarks.__main__")
    summary_module = importlib.import_module("benchmarks.summary")
    calls, written = [], []
    monkeypatch.setattr(bench, "run", lambda name, quick: calls.append((name, quick)) or (0, 0.0))
    monkeypatch.setattr(summary_module, "write", lambda: written.append(1) or Path("S.md"))
    assert bench.main(["study_scaling", "step_scaling", "study_scaling", "--quick"]) == 0
    assert calls == [("study_scaling", True), ("step_scaling", True)] and written == [1]
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["no_such_benchmark"])
    assert exit_info.value.code == 2 and "unknown benchmark 'no_such_benchmark'" in (
        capsys.readouterr().err
    )
