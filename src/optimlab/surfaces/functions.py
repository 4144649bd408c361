"""Differentiable 2-D test functions with their domains and known global minima.

Formulas, domains and minima follow Surjanovic and Bingham's Virtual Library of Simulation
Experiments. Every function takes two tensors of the same shape and works elementwise, so
one call evaluates a whole batch of independent points (see `optimlab.surfaces.batched`).

    >>> from optimlab.surfaces import Surface, register
    >>> register(Surface("bowl", lambda x, y: x**2 + 3 * y**2, ((-2, 2), (-2, 2)), [(0, 0)]))
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from optimlab.errors import UsageError

Box = tuple[tuple[float, float], tuple[float, float]]
Point = tuple[float, float]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# Where a function is more than this fraction of its window's range flat (median gap / max
# gap), its contours are drawn on a log scale unless the surface says otherwise.
_LOG_SCALE_FLATNESS = 0.05


def _box(box: Sequence[Sequence[float]], what: str) -> Box:
    try:
        (x0, x1), (y0, y1) = box
        x0, x1, y0, y1 = float(x0), float(x1), float(y0), float(y1)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be ((xmin, xmax), (ymin, ymax)), got {box!r}") from None
    if not (x0 < x1 and y0 < y1) or not all(map(math.isfinite, (x0, x1, y0, y1))):
        raise UsageError(f"{what} needs finite xmin < xmax and ymin < ymax, got {box!r}")
    return (x0, x1), (y0, y1)


def _point(p: Sequence[float], what: str) -> Point:
    try:
        x, y = p
        return float(x), float(y)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a point (x, y), got {p!r}") from None


def _inside(p: Point, box: Box) -> bool:
    (x0, x1), (y0, y1) = box
    return x0 <= p[0] <= x1 and y0 <= p[1] <= y1


@dataclass(frozen=True)
class Surface:
    """A 2-D objective: `fn(x, y)` on tensors (elementwise), its domain and global minima.

    `start` (the canonical start point) defaults to 15% in from the domain's upper-left
    corner; `value` (f*) defaults to `fn` at the first minimum; `window` (the plotting
    window) defaults to the domain; `log_scale` (log-scaled contours) is chosen from how flat
    the function is over the window when left as None.
    """

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]
    domain: Box
    minima: Sequence[Point]
    start: Point | None = None
    value: float | None = None
    window: Box | None = None
    log_scale: bool | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise UsageError(f"surface name must be letters, digits, '_' or '-', got {self.name!r}")
        if self.name == "convergence":  # would clash with convergence.png
            raise UsageError("the surface name 'convergence' is reserved; choose another")
        if not callable(self.fn):
            raise UsageError(f"surface {self.name!r}: fn must be callable fn(x, y)")
        domain = _box(self.domain, f"surface {self.name!r}: domain")
        minima = tuple(_point(p, f"surface {self.name!r}: minimum") for p in self.minima)
        if not minima:
            raise UsageError(f"surface {self.name!r}: give at least one global minimum")
        start = (
            _point(self.start, f"surface {self.name!r}: start")
            if self.start is not None
            else (
                domain[0][0] + 0.15 * (domain[0][1] - domain[0][0]),
                domain[1][1] - 0.15 * (domain[1][1] - domain[1][0]),
            )
        )
        for p in (*minima, start):
            if not _inside(p, domain):
                raise UsageError(f"surface {self.name!r}: point {p} lies outside the domain")
        window = domain if self.window is None else _box(self.window, "window")
        set_ = object.__setattr__
        set_(self, "domain", domain)
        set_(self, "minima", minima)
        set_(self, "start", start)
        set_(self, "window", window)
        _check_elementwise(self.name, self.fn, [minima[0], start, _center(domain)])
        value = self.value if self.value is not None else float(self(*minima[0]))
        if not math.isfinite(value):
            raise UsageError(f"surface {self.name!r}: f at the minimum is not finite")
        set_(self, "value", float(value))
        if self.log_scale is None:
            set_(self, "log_scale", self._is_flat())

    def __call__(self, x: float, y: float) -> float:
        """f at one point, in float64."""
        t = torch.tensor([x, y], dtype=torch.float64)
        return float(self.fn(t[:1], t[1:])[0])

    def _is_flat(self) -> bool:
        xs, ys = grid(self.window, 64)
        gap = self.fn(xs, ys) - self.value
        return bool(gap.median() < _LOG_SCALE_FLATNESS * gap.max())

    def divergence_box(self) -> Box:
        """The domain enlarged tenfold around its center: leaving it counts as divergence."""
        return tuple((c - 10 * h, c + 10 * h) for c, h in _centers(self.domain))  # type: ignore[return-value]


def _check_elementwise(name: str, fn: Callable[[Tensor, Tensor], Tensor], points: list) -> None:
    """fn must map n points to n values, each depending on its own point only (batching)."""
    p = torch.tensor(points, dtype=torch.float64)
    try:
        together = fn(p[:, 0], p[:, 1])
        alone = [fn(p[i : i + 1, 0], p[i : i + 1, 1]) for i in range(len(p))]
        ok = together.shape == (len(p),) and all(a.shape == (1,) for a in alone)
        ok = ok and torch.allclose(together, torch.cat(alone), equal_nan=True)
    except Exception as exc:  # a user's function: report any failure in one line
        raise UsageError(f"surface {name!r}: fn(x, y) failed on tensors: {exc}") from None
    if not ok:
        raise UsageError(
            f"surface {name!r}: fn(x, y) must work elementwise on tensors, one value per point"
        )


def _center(box: Box) -> Point:
    return ((box[0][0] + box[0][1]) / 2, (box[1][0] + box[1][1]) / 2)


def _centers(box: Box) -> list[tuple[float, float]]:
    return [((lo + hi) / 2, (hi - lo) / 2) for lo, hi in box]


def grid(box: Box, n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """An n x n grid over `box` as two (n, n) tensors X, Y (rows follow y)."""
    (x0, x1), (y0, y1) = box
    xs = torch.linspace(x0, x1, n, dtype=dtype)
    ys = torch.linspace(y0, y1, n, dtype=dtype)
    return torch.meshgrid(xs, ys, indexing="xy")


# --- the formulas -------------------------------------------------------------------------


def sphere(x: Tensor, y: Tensor) -> Tensor:
    return x**2 + y**2


def booth(x: Tensor, y: Tensor) -> Tensor:
    return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


def beale(x: Tensor, y: Tensor) -> Tensor:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def himmelblau(x: Tensor, y: Tensor) -> Tensor:
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def rosenbrock(x: Tensor, y: Tensor) -> Tensor:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rastrigin(x: Tensor, y: Tensor) -> Tensor:
    tau = 2 * math.pi
    return 20 + (x**2 - 10 * torch.cos(tau * x)) + (y**2 - 10 * torch.cos(tau * y))


def ackley(x: Tensor, y: Tensor) -> Tensor:
    # sqrt is a cone at 0: the tiny floor keeps its gradient finite (0) there instead of NaN.
    r = torch.sqrt(0.5 * (x**2 + y**2) + torch.finfo(x.dtype).tiny)
    tau = 2 * math.pi
    waves = 0.5 * (torch.cos(tau * x) + torch.cos(tau * y))
    return -20 * torch.exp(-0.2 * r) - torch.exp(waves) + math.e + 20


def matyas(x: Tensor, y: Tensor) -> Tensor:
    return 0.26 * (x**2 + y**2) - 0.48 * x * y


def goldstein_price(x: Tensor, y: Tensor) -> Tensor:
    a = 1 + (x + y + 1) ** 2 * (19 - 14 * x + 3 * x**2 - 14 * y + 6 * x * y + 3 * y**2)
    b = 30 + (2 * x - 3 * y) ** 2 * (18 - 32 * x + 12 * x**2 + 48 * y - 36 * x * y + 27 * y**2)
    return a * b


def six_hump_camel(x: Tensor, y: Tensor) -> Tensor:
    return (4 - 2.1 * x**2 + x**4 / 3) * x**2 + x * y + (-4 + 4 * y**2) * y**2


BUILTIN: tuple[Surface, ...] = (
    Surface("sphere", sphere, ((-5.12, 5.12), (-5.12, 5.12)), [(0, 0)], (-4.0, 3.0), 0.0,
            log_scale=False, description="convex, isotropic"),
    Surface("booth", booth, ((-10, 10), (-10, 10)), [(1, 3)], (-8.0, 8.0), 0.0,
            log_scale=False, description="convex quadratic, condition number 9"),
    Surface("beale", beale, ((-4.5, 4.5), (-4.5, 4.5)), [(3, 0.5)], (1.0, 1.5), 0.0,
            log_scale=True, description="flat plateaus and steep walls"),
    Surface("himmelblau", himmelblau, ((-5, 5), (-5, 5)),
            [(3, 2), (-2.805118086952745, 3.131312518250573),
             (-3.779310253377747, -3.2831859912861696), (3.5844283403304917, -1.8481265269644036)],
            (0.0, 0.0), 0.0, log_scale=True, description="four global minima"),
    Surface("rosenbrock", rosenbrock, ((-2, 2), (-1, 3)), [(1, 1)], (-1.5, 2.5), 0.0,
            log_scale=True, description="curved narrow valley"),
    Surface("rastrigin", rastrigin, ((-5.12, 5.12), (-5.12, 5.12)), [(0, 0)], (-2.0, 3.5), 0.0,
            log_scale=False, description="about a hundred local minima"),
    Surface("ackley", ackley, ((-5, 5), (-5, 5)), [(0, 0)], (3.0, -4.0), 0.0,
            log_scale=False, description="ripples on a cone; not differentiable at 0"),
    Surface("matyas", matyas, ((-10, 10), (-10, 10)), [(0, 0)], (8.0, 5.0), 0.0,
            log_scale=True, description="flat valley along x = y, condition number 25"),
    Surface("goldstein_price", goldstein_price, ((-2, 2), (-2, 2)), [(0, -1)], (-1.5, 1.5), 3.0,
            log_scale=True, description="local minima, values over six decades"),
    Surface("six_hump_camel", six_hump_camel, ((-3, 3), (-2, 2)),
            [(0.08984201310031806, -0.7126564030207396),
             (-0.08984201310031806, 0.7126564030207396)],
            (-2.0, 1.5), -1.0316284534898774, log_scale=True,
            description="six local minima, two global"),
)  # fmt: skip

# The default benchmark: six functions in rising difficulty.
DEFAULT_FUNCTIONS: tuple[str, ...] = (
    "sphere", "booth", "beale", "himmelblau", "rosenbrock", "rastrigin",
)  # fmt: skip

_REGISTRY: dict[str, Surface] = {s.name: s for s in BUILTIN}


def register(surface: Surface, *, replace: bool = False) -> Surface:
    """Make `surface` available by name (to `get`, `benchmark` and the CLI of this process)."""
    if not isinstance(surface, Surface):
        raise UsageError(f"register() takes a Surface, got {type(surface).__name__}")
    if surface.name in _REGISTRY and not replace:
        raise UsageError(f"a surface named {surface.name!r} exists; pass replace=True")
    _REGISTRY[surface.name] = surface
    return surface


def available() -> list[str]:
    """The registered function names: the built-in ones in rising difficulty, then yours."""
    return list(_REGISTRY)


def get(name: str | Surface) -> Surface:
    """The surface registered under `name` (a Surface passes through)."""
    if isinstance(name, Surface):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown function {name!r}; valid: {', '.join(available())}") from None
