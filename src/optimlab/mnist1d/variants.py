"""The optimizer variants the mnist1d study compares, by CLI name.

A variant is an optimizer plus what is fixed about it (the DynamicAdam hypergradient mode),
where its meta batches come from, and which hyperparameters tuning searches.
`dynamic_adam_published` is the literal published procedure (optimlab.mnist1d.reference),
which leaks validation gradients into the model update: it is run so the report can show
that mechanism, never offered as an optimizer to use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Variant:
    name: str
    optimizer: str  # optimlab.optim registry name, or "published" for the reference procedure
    fixed: dict[str, Any] = field(default_factory=dict)
    meta_source: str | None = None  # "val" / "train" for lookahead variants, else None
    tuned: tuple[str, ...] = ("lr",)
    reference_only: bool = False
    description: str = ""

    @property
    def has_gate(self) -> bool:
        """Whether the variant has a beta1 gate (and so a `gate_lr`)."""
        return self.optimizer in ("dynamic_adam", "published")


META_SOURCES = ("val", "train")

_VARIANTS = [
    Variant("adam", "adam", description="Adam (from scratch), beta1 = 0.9"),
    Variant(
        "dynamic_adam",
        "dynamic_adam",
        {"hypergradient": "lookahead"},
        meta_source="val",
        tuned=("lr", "gate_lr"),
        description="DynamicAdam, lookahead hypergradient on validation meta batches",
    ),
    Variant(
        "dynamic_adam_train",
        "dynamic_adam",
        {"hypergradient": "lookahead"},
        meta_source="train",
        tuned=("lr", "gate_lr"),
        description="DynamicAdam, lookahead hypergradient on training meta batches",
    ),
    Variant(
        "dynamic_adam_online",
        "dynamic_adam",
        {"hypergradient": "online"},
        tuned=("lr", "gate_lr"),
        description="DynamicAdam, online hypergradient (next training gradient, no meta batch)",
    ),
    Variant(
        "sgd",
        "sgd",
        tuned=("lr", "momentum"),
        description="SGD with (tuned) heavy-ball momentum",
    ),
    Variant("rmsprop", "rmsprop", description="RMSprop (from scratch)"),
    Variant("adagrad", "adagrad", description="Adagrad (from scratch)"),
    Variant(
        "dynamic_adam_published",
        "published",
        meta_source="val",
        tuned=("lr", "gate_lr"),
        reference_only=True,
        description="REFERENCE ONLY: the published procedure, which trains on its validation "
        "meta batches through create_graph=True; shows the leak, not a usable optimizer",
    ),
]

VARIANTS: dict[str, Variant] = {v.name: v for v in _VARIANTS}
DEFAULT_VARIANTS: list[str] = [v.name for v in _VARIANTS]
