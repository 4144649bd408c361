"""The surfaces benchmark: optimizers on classic 2-D test functions, as pictures and numbers.

    >>> from optimlab import surfaces
    >>> rows = surfaces.benchmark(["sphere", "rosenbrock"], ["adam", "sgd"], out="runs/demo")

Functions live in a registry (`available`, `get`, `register`, `Surface`); each optimizer
variant (`OPTIMIZER_VARIANTS`) is the library optimizer written on batched rows.
"""

from optimlab.surfaces.batched import OPTIMIZER_VARIANTS, VARIANTS
from optimlab.surfaces.bench import DEFAULTS, QUICK, benchmark
from optimlab.surfaces.functions import DEFAULT_FUNCTIONS, Surface, available, get, register

__all__ = [
    "DEFAULTS",
    "QUICK",
    "DEFAULT_FUNCTIONS",
    "OPTIMIZER_VARIANTS",
    "VARIANTS",
    "Surface",
    "available",
    "benchmark",
    "get",
    "register",
]
