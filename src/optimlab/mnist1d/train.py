"""Train one mnist1d model with one optimizer variant: lean, seeded, checkpointed.

The data lives in memory as tensors. Each epoch permutes the training set once (a seeded
torch.Generator), gathers it in that order, and walks contiguous slices of it: no DataLoader,
no per-step host sync. After each epoch the model is evaluated in one forward pass per split
(train, validation, test) at the same weights, and the numbers are synchronised once.

Randomness comes from three streams spawned from `config.seed`: model initialisation (the
same for every optimizer, so comparisons are paired), the training order, and the meta
batches. The generators' states go into the checkpoint, so a resumed run is bit-identical
to an uninterrupted one (on CPU).

Divergence: a non-finite training gradient (DynamicAdam raises FloatingPointError), or an
end-of-epoch training loss that is not finite or above DIVERGED_LOSS, stops training. That
epoch is still recorded, with its metrics as evaluated (non-finite values become nan), and
`TrainResult.diverged` is True; no exception escapes.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import optimlab.optim
from optimlab.atomic import atomic_path
from optimlab.errors import RunError, UsageError
from optimlab.mnist1d.data import CLASSES, Splits
from optimlab.mnist1d.models import MODELS, build_model
from optimlab.mnist1d.reference import PublishedDynamicAdam
from optimlab.mnist1d.variants import META_SOURCES, VARIANTS, Variant
from optimlab.optim.dynamic_adam import DynamicAdam

# A hundred times the loss of a uniform guess: no healthy run gets there.
DIVERGED_LOSS = 100 * math.log(CLASSES)
DEFAULT_GATE_LR = 1e-3
DEFAULT_MOMENTUM = 0.9
CHECKPOINT_FORMAT = 1


@dataclass
class TrainConfig:
    optimizer: str  # a variant name (optimlab.mnist1d.variants.VARIANTS)
    lr: float
    gate_lr: float | None = None  # DynamicAdam variants (DEFAULT_GATE_LR if None)
    momentum: float | None = None  # sgd (DEFAULT_MOMENTUM if None)
    epochs: int = 25
    batch_size: int = 100
    model: str = "mlp"
    seed: int = 0
    meta_source: str | None = None  # overrides the variant's meta source ("val" | "train")
    device: str = "cpu"

    @property
    def variant(self) -> Variant:
        try:
            return VARIANTS[self.optimizer]
        except KeyError:
            raise UsageError(
                f"unknown optimizer {self.optimizer!r}; valid: {', '.join(VARIANTS)}"
            ) from None

    @property
    def effective_meta_source(self) -> str | None:
        """Where meta batches come from: the override, else the variant's, else None."""
        return self.meta_source or self.variant.meta_source

    def validate(self) -> None:
        """Raise UsageError (one line) for anything invalid."""
        variant = self.variant
        if self.model not in MODELS:
            raise UsageError(f"unknown model {self.model!r}; valid: {', '.join(MODELS)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"lr must be a finite number > 0, got {self.lr}")
        if self.gate_lr is not None:
            if not variant.has_gate:
                raise UsageError(
                    f"gate_lr applies only to DynamicAdam variants, not {variant.name}"
                )
            if not (math.isfinite(self.gate_lr) and self.gate_lr >= 0):
                raise UsageError(f"gate_lr must be a finite number >= 0, got {self.gate_lr}")
        if self.momentum is not None:
            if variant.optimizer != "sgd":
                raise UsageError(f"momentum applies only to sgd, not {variant.name}")
            if not 0 <= self.momentum < 1:
                raise UsageError(f"momentum must be in [0, 1), got {self.momentum}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.meta_source is not None:
            if variant.meta_source is None:
                raise UsageError(
                    f"{variant.name} takes no meta batches, so a meta source does not apply"
                )
            if self.meta_source not in META_SOURCES:
                raise UsageError(
                    f"meta source must be one of {', '.join(META_SOURCES)}, "
                    f"got {self.meta_source!r}"
                )
        if not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            raise UsageError(f"device must be cpu or cuda, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("device cuda requested but CUDA is not available here")


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # on the whole training split, at the end of the epoch
    train_accuracy: float  # fractions in [0, 1]
    val_loss: float  # nan when there is no validation split
    val_accuracy: float
    test_loss: float | None  # None when the test set is withheld
    test_accuracy: float | None
    beta1_mean: float | None  # mean beta1 over the epoch's steps (DynamicAdam variants)
    seconds: float  # wall time of the epoch: its steps and this evaluation


@dataclass
class TrainResult:
    config: TrainConfig
    history: list[EpochMetrics]
    diverged: bool
    beta1_history: list[float] = field(default_factory=list)  # per step, DynamicAdam variants

    @property
    def final(self) -> EpochMetrics:
        return self.history[-1]


Step = Callable[[Tensor, Tensor, Tensor | None, Tensor | None], None]


def build_optimizer(config: TrainConfig, model: nn.Module) -> Any:
    """The variant's optimizer over `model` (call with torch's global RNG seeded: the gate's
    first layer is drawn from it)."""
    variant = config.variant
    gate_lr = DEFAULT_GATE_LR if config.gate_lr is None else config.gate_lr
    if variant.optimizer == "published":
        return PublishedDynamicAdam(model, lr=config.lr, gate_lr=gate_lr, **variant.fixed)
    if variant.optimizer == "dynamic_adam":
        return DynamicAdam(model.parameters(), lr=config.lr, gate_lr=gate_lr, **variant.fixed)
    hyperparameters = dict(variant.fixed)
    if variant.optimizer == "sgd":
        momentum = DEFAULT_MOMENTUM if config.momentum is None else config.momentum
        hyperparameters["momentum"] = momentum
    return optimlab.optim.create(
        variant.optimizer, model.parameters(), lr=config.lr, **hyperparameters
    )


def make_step(config: TrainConfig, model: nn.Module, optimizer: Any) -> Step:
    """One training step on a batch (and a meta batch for lookahead variants)."""
    if config.variant.optimizer == "published":

        def published_step(x: Tensor, y: Tensor, xm: Tensor | None, ym: Tensor | None) -> None:
            optimizer.step(x, y, xm, ym)

        return published_step
    lookahead = config.effective_meta_source is not None
    params = list(model.parameters())

    def step(x: Tensor, y: Tensor, xm: Tensor | None, ym: Tensor | None) -> None:
        for p in params:  # zero_grad(set_to_none=True) without its profiler bookkeeping
            p.grad = None
        F.cross_entropy(model(x), y).backward()
        if lookahead:
            optimizer.step(meta_closure=lambda: F.cross_entropy(model(xm), ym))
        else:
            optimizer.step()

    return step


def train(
    config: TrainConfig,
    splits: Splits,
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    checkpoint: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a fresh model as `config` says and return its per-epoch metrics.

    `on_epoch` runs after each recorded epoch, the diverging one included (after the epoch's
    checkpoint is written); what it raises (e.g. optuna.TrialPruned) propagates.
    `checkpoint`: a file rewritten atomically after every epoch; if it exists, training
    resumes from it, provided it was written for the same config and splits (else RunError).
    A finished run's checkpoint returns its result at once.
    """
    config.validate()
    if len(splits.x_train) == 0:
        raise UsageError("the training split is empty: lower val_fraction (--val-fraction)")
    device = torch.device(config.device)
    splits = splits.to(device)
    meta_source = config.effective_meta_source
    meta_x, meta_y = _meta_split(splits, meta_source)
    model_seed, order_seed, meta_seed = np.random.SeedSequence(config.seed).generate_state(3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(model_seed))
        model = build_model(config.model)
        model.to(device)
        optimizer = build_optimizer(config, model)
    order_gen = torch.Generator().manual_seed(int(order_seed))
    meta_gen = torch.Generator().manual_seed(int(meta_seed))
    step = make_step(config, model, optimizer)
    track_beta1 = hasattr(optimizer, "beta1_history")

    key = {"config": asdict(config), "splits": _fingerprint(splits)}
    history: list[EpochMetrics] = []
    beta1_history: list[float] = []
    diverged = False
    if checkpoint is not None and Path(checkpoint).exists():
        saved = _load_checkpoint(checkpoint, key, device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        order_gen.set_state(saved["order_generator"])
        meta_gen.set_state(saved["meta_generator"])
        history = [EpochMetrics(**m) for m in saved["history"]]
        beta1_history = list(saved["beta1_history"])
        diverged = saved["diverged"]

    n, batch = len(splits.x_train), config.batch_size
    steps = math.ceil(n / batch)
    for epoch in range(len(history) + 1, config.epochs + 1):
        if diverged:
            break
        start = time.perf_counter()
        order = torch.randperm(n, generator=order_gen).to(device)
        xs, ys = splits.x_train[order].split(batch), splits.y_train[order].split(batch)
        if meta_x is not None:
            meta_order = _meta_order(len(meta_x), steps * batch, meta_gen).to(device)
            xms, yms = meta_x[meta_order].split(batch), meta_y[meta_order].split(batch)
        else:
            xms = yms = (None,) * steps
        seen = len(optimizer.beta1_history) if track_beta1 else 0
        try:
            for x, y, xm, ym in zip(xs, ys, xms, yms, strict=True):
                step(x, y, xm, ym)
        except FloatingPointError:
            diverged = True
        new_beta1 = list(optimizer.beta1_history[seen:]) if track_beta1 else []
        beta1_history += new_beta1
        metrics = _evaluate(model, splits, epoch, new_beta1)
        metrics.seconds = time.perf_counter() - start
        if not math.isfinite(metrics.train_loss) or metrics.train_loss > DIVERGED_LOSS:
            diverged = True
        history.append(metrics)
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                key=key,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                order_generator=order_gen.get_state(),
                meta_generator=meta_gen.get_state(),
                history=[asdict(m) for m in history],
                beta1_history=beta1_history,
                diverged=diverged,
            )
        if progress is not None:
            progress(describe(metrics, config.epochs, diverged))
        if on_epoch is not None:
            on_epoch(metrics)
    return TrainResult(config, history, diverged, beta1_history)


def describe(m: EpochMetrics, epochs: int, diverged: bool = False) -> str:
    """One line for a progress display."""
    text = f"epoch {m.epoch}/{epochs}: train {m.train_loss:.4f} ({m.train_accuracy:.1%})"
    if not math.isnan(m.val_accuracy):
        text += f", val {m.val_loss:.4f} ({m.val_accuracy:.1%})"
    if m.test_loss is not None:
        text += f", test {m.test_loss:.4f} ({m.test_accuracy:.1%})"
    if m.beta1_mean is not None:
        text += f", beta1 {m.beta1_mean:.3f}"
    return text + f", {m.seconds:.2f}s" + (" DIVERGED" if diverged else "")


def _meta_split(splits: Splits, source: str | None) -> tuple[Tensor | None, Tensor | None]:
    """The tensors meta batches are drawn from: validation or training data, never test."""
    if source is None:
        return None, None
    x, y = (splits.x_val, splits.y_val) if source == "val" else (splits.x_train, splits.y_train)
    if len(x) == 0:
        raise UsageError(
            "meta batches from the validation split need val_fraction > 0 "
            "(or use meta source 'train')"
        )
    assert splits.x_test is None or x.data_ptr() != splits.x_test.data_ptr()
    return x, y


def _meta_order(n: int, count: int, generator: torch.Generator) -> Tensor:
    """`count` indices into n examples: whole permutations back to back, so every example
    serves as often as every other, and each meta batch has distinct examples where n allows."""
    rounds = math.ceil(count / n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:count]


@torch.no_grad()
def _evaluate(model: nn.Module, splits: Splits, epoch: int, beta1: list[float]) -> EpochMetrics:
    """The epoch's metrics (seconds still 0): one forward pass per split, one sync."""
    parts = [(splits.x_train, splits.y_train), (splits.x_val, splits.y_val)]
    if splits.x_test is not None:
        parts.append((splits.x_test, splits.y_test))
    values = []
    for x, y in parts:
        if len(x) == 0:
            values += [torch.tensor(math.nan), torch.tensor(math.nan)]
            continue
        logits = model(x)
        values += [F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()]
    numbers = [
        v if math.isfinite(v) else math.nan for v in torch.stack([v.cpu() for v in values]).tolist()
    ]
    test = numbers[4:6] if splits.x_test is not None else [None, None]
    return EpochMetrics(epoch, *numbers[:4], *test, sum(beta1) / len(beta1) if beta1 else None, 0.0)


def _fingerprint(splits: Splits) -> str:
    """Identifies the split: which examples train and validate, and whether test is scored."""
    digest = hashlib.sha256(splits.train_index.tobytes())
    digest.update(b"|" + splits.val_index.tobytes())
    digest.update(b"|test" if splits.x_test is not None else b"|no-test")
    return digest.hexdigest()


def _save_checkpoint(path: str | Path, **content: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **content}, tmp)


def _load_checkpoint(path: str | Path, key: dict[str, Any], device: torch.device) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # torch's advice (weights_only=False) is unsafe here
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise RunError(
            f"checkpoint {path} is damaged or not an optimlab checkpoint "
            f"({type(exc).__name__}); delete it to restart that run from epoch 0"
        ) from None
    if saved.get("format") != CHECKPOINT_FORMAT or saved.get("key") != key:
        raise RunError(
            f"checkpoint {path} was written for another configuration or split; "
            "delete it or choose another path"
        )
    for name in ("order_generator", "meta_generator"):
        saved[name] = saved[name].cpu()
    return saved
