"""DynamicAdam in an ordinary training loop, in both hypergradient modes, next to Adam.

    python examples/dynamic_adam_loop.py [--steps 400] [--seed 0]

A small MLP regresses a noisy synthetic teacher. The data has three splits:

- train: the batches the model learns from;
- validation: the meta batches of lookahead mode. The gate learns from them; the model
  never sees their gradient (the optimizer takes it with torch.autograd.grad, not .backward);
- test: touched once, at the end, to report honest numbers.

lookahead: `optimizer.step(meta_closure=...)`, the closure returns the loss on a validation
batch; the optimizer calls it after the update, with the model at the new parameters.
online: `optimizer.step()`, exactly like Adam; the gate learns from the next training
gradient (hypergradient descent).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from optimlab.optim import Adam, DynamicAdam

BATCH = 64


def make_data(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(10, 1, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 10, generator=generator)
        y = torch.tanh(x @ teacher) + 0.1 * torch.randn(n, 1, generator=generator)
        return x, y

    return {"train": split(2000), "validation": split(500), "test": split(1000)}


def train(mode: str, data: dict, steps: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    if mode == "adam":
        optimizer = Adam(model.parameters(), lr=3e-3)
    else:
        optimizer = DynamicAdam(model.parameters(), lr=3e-3, gate_lr=1e-2, hypergradient=mode)
    loss_fn = nn.MSELoss()
    (x, y), (x_val, y_val) = data["train"], data["validation"]
    sampler = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(x), (BATCH,), generator=sampler)
        optimizer.zero_grad()
        loss = loss_fn(model(x[batch]), y[batch])
        loss.backward()
        if mode == "lookahead":
            i = torch.randint(len(x_val), (BATCH,), generator=sampler)
            x_meta, y_meta = x_val[i], y_val[i]  # held out: it trains the gate, not the model
            optimizer.step(meta_closure=lambda x=x_meta, y=y_meta: loss_fn(model(x), y))
        else:
            optimizer.step()
    with torch.no_grad():
        result = {split: loss_fn(model(xs), ys).item() for split, (xs, ys) in data.items()}
    if isinstance(optimizer, DynamicAdam):
        history = optimizer.beta1_history
        result |= {"beta1_min": min(history), "beta1_max": max(history)}
        result["beta1_last"] = optimizer.last_beta1
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = make_data(args.seed)
    print(f"{'optimizer':<10} {'train':>7} {'valid':>7} {'test':>7}   beta1 (min..max, last)")
    for mode in ("adam", "lookahead", "online"):
        r = train(mode, data, args.steps, args.seed)
        losses = f"{r['train']:7.4f} {r['validation']:7.4f} {r['test']:7.4f}"
        beta1 = "0.9 (fixed)"
        if "beta1_last" in r:
            beta1 = f"{r['beta1_min']:.3f}..{r['beta1_max']:.3f}, {r['beta1_last']:.3f}"
        print(f"{mode:<10} {losses}   {beta1}")


if __name__ == "__main__":
    main()
