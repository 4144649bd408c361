"""Optimizers written from scratch as `torch.optim.Optimizer` subclasses, and their registry.

>>> import optimlab.optim as oo
>>> opt = oo.create("adam", model.parameters(), lr=1e-3)
>>> oo.available()
['adagrad', 'adam', 'adamw', 'dynamic_adam', 'rmsprop', 'sgd']
"""

from __future__ import annotations

from typing import Any

import torch

from optimlab.errors import UsageError
from optimlab.optim.adagrad import Adagrad
from optimlab.optim.adam import Adam
from optimlab.optim.adamw import AdamW
from optimlab.optim.dynamic_adam import DynamicAdam
from optimlab.optim.rmsprop import RMSprop
from optimlab.optim.sgd import SGD

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": SGD,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
    "dynamic_adam": DynamicAdam,
}


def available() -> list[str]:
    """The registered optimizer names, sorted."""
    return sorted(OPTIMIZERS)


def get(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class registered under `name` (case-insensitive)."""
    try:
        return OPTIMIZERS[name.lower()]
    except KeyError:
        raise UsageError(
            f"unknown optimizer {name!r}; valid names: {', '.join(available())}"
        ) from None


def create(name: str, params: Any, **hyperparameters: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered under `name` over `params`."""
    return get(name)(params, **hyperparameters)


__all__ = [
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adam",
    "AdamW",
    "DynamicAdam",
    "OPTIMIZERS",
    "available",
    "get",
    "create",
]
