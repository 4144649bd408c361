"""The batched rules are the library optimizers: row by row, the same trajectory as
optimlab.optim run alone on one 2-element parameter; and batching pools nothing."""

import pytest
import torch

from optimlab import optim
from optimlab.errors import UsageError
from optimlab.optim.dynamic_adam import DynamicAdam
from optimlab.surfaces import OPTIMIZER_VARIANTS, Surface, get
from optimlab.surfaces.batched import VARIANTS, default_gate, gate_parameters
from optimlab.surfaces.runner import Block, run

STARTS = torch.tensor([[-3.0, 2.5], [1.5, -4.0], [4.0, 4.5]], dtype=torch.float64)
# Per-row hyperparameters, all different, in a range where every row moves a good deal.
HYPER = {
    "sgd": {"lr": [2e-4, 5e-4, 1e-3], "momentum": [0.0, 0.5, 0.9]},
    "adagrad": {"lr": [0.3, 1.0, 2.0]},
    "rmsprop": {"lr": [0.01, 0.05, 0.1]},
    "adam": {"lr": [0.05, 0.2, 0.5]},
    "dynamic_adam_online": {"lr": [0.05, 0.2, 0.5]},
    "dynamic_adam": {"lr": [0.05, 0.2, 0.5]},
}
STEPS = 40


def library_run(surface: Surface, variant: str, start: torch.Tensor, hyper: dict, seed: int):
    """The library optimizer alone on one 2-element parameter: its trajectory and its gate."""
    spec = VARIANTS[variant]
    torch.manual_seed(seed)  # DynamicAdam draws its gate's first layer from torch's generator
    p = start.clone().requires_grad_()
    name = spec.library
    kwargs = {**spec.library_options, **hyper}
    opt = (
        optim.create(name, [p], **kwargs)
        if name in optim.available()
        else DynamicAdam([p], **kwargs)  # until it joins the registry
    )
    gate = gate_parameters(opt.gate) if hasattr(opt, "gate") else None
    points = [p.detach().clone()]
    for _ in range(STEPS):
        opt.zero_grad()
        surface.fn(p[:1], p[1:]).sum().backward()
        if spec.library_options.get("hypergradient") == "lookahead":
            opt.step(meta_closure=lambda: surface.fn(p[:1], p[1:]).sum())
        else:
            opt.step()
        points.append(p.detach().clone())
    return torch.stack(points), gate


@pytest.mark.parametrize("variant", OPTIMIZER_VARIANTS)
@pytest.mark.parametrize("function", ["himmelblau", "rosenbrock"])
def test_batched_rows_equal_library_optimizer_alone(function, variant):
    surface = get(function)
    starts = STARTS * 0.5 + torch.tensor([0.0, 1.0]) if function == "rosenbrock" else STARTS
    rows = [{k: v[i] for k, v in HYPER[variant].items()} for i in range(len(starts))]
    singles = [
        library_run(surface, variant, s, h, seed=i)
        for i, (s, h) in enumerate(zip(starts, rows, strict=True))
    ]
    gates = None if singles[0][1] is None else torch.stack([gate for _, gate in singles])
    hyper = {k: torch.tensor(v, dtype=torch.float64) for k, v in HYPER[variant].items()}
    (batched,) = run([Block(surface, variant, starts, hyper, gate=gates)], STEPS)
    assert (batched.diverged_at == -1).all()
    for i, (reference, _) in enumerate(singles):
        assert (reference - starts[i]).abs().max() > 1e-3  # it moved
        torch.testing.assert_close(batched.points[:, i], reference, rtol=1e-12, atol=1e-12)


def test_dynamic_adam_gates_differ_per_row_and_learn():
    """Rows with different gates give different trajectories (no shared gate state)."""
    surface = get("booth")
    starts = torch.tensor([[-8.0, 8.0]] * 2, dtype=torch.float64)
    gates = torch.stack([default_gate(0), default_gate(1)])
    hyper = {"lr": torch.tensor(0.5)}
    (two,) = run([Block(surface, "dynamic_adam", starts, hyper, gate=gates)], 30)
    (first,) = run([Block(surface, "dynamic_adam", starts[:1], hyper, gate=gates[:1])], 30)
    assert not torch.equal(two.points[:, 0], two.points[:, 1])
    torch.testing.assert_close(two.points[:, :1], first.points, rtol=0, atol=0)


def _hyper(variant: str, lr: float) -> dict:
    return {"lr": lr, **({"momentum": 0.8} if variant == "sgd" else {})}


LRS = {
    "sgd": 1e-3,
    "adagrad": 0.5,
    "rmsprop": 0.03,
    "adam": 0.1,
    "dynamic_adam_online": 0.1,
    "dynamic_adam": 0.1,
}


def test_a_batch_of_everything_equals_each_run_alone():
    """Several functions x all variants x start points in one batch, with gradient noise:
    every row follows exactly the trajectory it follows alone."""
    starts = torch.tensor([[-1.5, 2.0], [0.5, -0.5], [1.8, 2.8]], dtype=torch.float64)
    surfaces = [get("rosenbrock"), get("himmelblau"), get("rastrigin")]
    noise = 0.5 * torch.randn(25, 3, 2, dtype=torch.float64)
    blocks = [Block(s, v, starts, _hyper(v, LRS[v])) for s in surfaces for v in OPTIMIZER_VARIANTS]
    together = run(blocks, 25, noise=noise, gate_seed=3)
    for block, result in zip(blocks, together, strict=True):
        for i in range(len(starts)):
            alone = Block(
                block.surface, block.variant, starts[i : i + 1], block.hyper, torch.tensor([i])
            )
            (single,) = run([alone], 25, noise=noise, gate_seed=3)
            torch.testing.assert_close(
                result.points[:, i : i + 1], single.points, rtol=1e-12, atol=1e-12
            )
            torch.testing.assert_close(
                result.values[:, i : i + 1], single.values, rtol=1e-12, atol=1e-12
            )


def test_a_diverging_row_is_frozen_and_marked_without_touching_the_others():
    surface = get("booth")
    starts = torch.tensor([[-8.0, 8.0]] * 3, dtype=torch.float64)
    hyper = {"lr": torch.tensor([1e-2, 10.0, 1e-2], dtype=torch.float64), "momentum": 0.0}
    (result,) = run([Block(surface, "sgd", starts, hyper)], 50)
    (calm,) = run([Block(surface, "sgd", starts[:1], {"lr": 1e-2, "momentum": 0.0})], 50)
    step = result.diverged_at[1].item()
    assert result.diverged_at.tolist() == [-1, step, -1] and step > 0
    frozen = result.points[step:, 1]
    assert torch.isfinite(result.points).all() and (frozen == frozen[0]).all()
    (lo, hi), _ = surface.divergence_box()
    assert lo <= frozen[0, 0] <= hi  # the last point inside the divergence box is kept
    torch.testing.assert_close(result.points[:, 0], calm.points[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(result.points[:, 2], calm.points[:, 0], rtol=0, atol=0)


def test_non_finite_gradients_count_as_divergence():
    bad = Surface(
        "test_log", lambda x, y: torch.log(x) + y**2, ((0.0, 4.0), (-1, 1)), [(0.0, 0.0)], value=0.0
    )
    (result,) = run([Block(bad, "adam", torch.tensor([[1.0, 0.5], [2.0, 0.5]]), {"lr": 3.0})], 20)
    assert (result.diverged_at > 0).all()
    assert torch.isfinite(result.points).all()


def test_dynamic_adam_lookahead_and_online_coincide_without_noise_only():
    """Their meta gradients at theta_{t+1} are the same when the training gradient is the
    noise-free gradient of the function itself; noise tells them apart."""
    surface, starts = (
        get("himmelblau"),
        torch.tensor([[0.0, 0.0], [-1.0, 4.0]], dtype=torch.float64),
    )
    blocks = [
        Block(surface, v, starts, {"lr": 0.3}) for v in ("dynamic_adam_online", "dynamic_adam")
    ]
    online, lookahead = run(blocks, 40)
    torch.testing.assert_close(online.points, lookahead.points, rtol=0, atol=0)
    noise = torch.randn(40, 2, 2, dtype=torch.float64)
    online, lookahead = run(blocks, 40, noise=noise)
    assert (online.points - lookahead.points).abs().max() > 1e-6


def test_unknown_variant_and_missing_hyperparameters_are_usage_errors():
    surface, starts = get("sphere"), torch.zeros(1, 2, dtype=torch.float64)
    with pytest.raises(UsageError, match="unknown optimizer 'nadam'; valid: sgd"):
        run([Block(surface, "nadam", starts, {"lr": 0.1})], 2)
    with pytest.raises(UsageError, match="missing hyperparameters"):
        run([Block(surface, "sgd", starts, {"lr": 0.1})], 2)
