"""`--config FILE.toml` for the study commands: read it, check it, and write back the
resolved config of a run (`config.toml` in its output directory).

Precedence, lowest first: built-in defaults < the `--quick` budgets (`quick = true` in the
file, or `--quick`) < the file's values < options given on the command line.

    optimlab mnist1d   top-level keys: StudyConfig's fields (and `quick`)
    optimlab surfaces  top-level keys: SurfacesConfig's fields (and `quick`)
    optimlab run       top-level `seed` and `quick` for both parts, and the tables
                       [surfaces] and [mnist1d] with the other keys of each part

A resolved config holds every setting (defaults filled in, no `quick`: the budgets are
written out), so feeding it back with `--config` reproduces the run. It never holds a storage
password: such a URL is left out and a comment says to pass it again.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from optimlab.commands.surfaces import DEFAULT_FUNCTIONS, DEFAULTS, FUNCTIONS, OPTIMIZERS
from optimlab.errors import UsageError

MAX_SEED = 2**32 - 1  # as optimlab.commands._args.MAX_SEED
RUN_PARTS = ("surfaces", "mnist1d")
RUN_SHARED = ("seed", "quick")  # run's top-level keys, shared by both parts
NAME = "config.toml"  # the resolved config in a run's output directory


def read(path: str | Path) -> dict[str, Any]:
    """The TOML file at `path` as a dict; UsageError (one line) when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise UsageError(f"config file {str(path)!r} is not readable: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {str(path)!r} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {str(path)!r}: TOML syntax error: {exc}") from None


def pop_quick(data: dict[str, Any]) -> bool:
    """Remove and return the file's `quick` (a preset of budgets, not a setting)."""
    quick = data.pop("quick", False)
    check("quick", quick, lambda v: isinstance(v, bool), "true or false")
    return quick


def build(make: Callable[[dict[str, Any]], Any], merged: dict, given: dict, source: str | None):
    """`make(merged)`; when that fails and the file's values (`given`) alone are already
    wrong, the message names the file, else it is about the combination."""
    try:
        return make(merged)
    except UsageError as merged_error:
        if source is None:
            raise
        try:
            make(given)
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}") from None
        raise merged_error from None


def check(key: str, value: Any, ok: Callable[[Any], bool], requirement: str) -> None:
    if not ok(value):
        raise UsageError(f"config key {key!r}: expected {requirement}, got {_shown(value)}")


def check_keys(data: Mapping[str, Any], valid: list[str]) -> None:
    for key in data:
        if key not in valid:
            raise UsageError(f"unknown config key {key!r}; valid: {', '.join(sorted(valid))}")


def _shown(value: Any) -> str:
    return "a table" if isinstance(value, dict) else repr(value)


def _int(least: int, most: float = math.inf) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and least <= v <= most


def _number(ok: Callable[[float], bool]) -> Callable[[Any], bool]:
    def test(v: Any) -> bool:
        is_number = isinstance(v, int | float) and not isinstance(v, bool)
        return is_number and math.isfinite(v) and ok(v)

    return test


def _optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


def check_names(key: str, value: Any, valid: list[str], what: str) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
        raise UsageError(f"config key {key!r}: expected a non-empty list of {what} names")
    for name in value:
        if name not in valid:
            raise UsageError(f"unknown {what} {name!r}; valid: {', '.join(valid)}")
    if len(set(value)) != len(value):
        raise UsageError(f"config key {key!r}: names must not repeat")


@dataclass
class SurfacesConfig:
    """Everything that defines an `optimlab surfaces` run (its options, as TOML keys)."""

    functions: list[str] = field(default_factory=lambda: list(DEFAULT_FUNCTIONS))
    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZERS))
    steps: int = DEFAULTS["steps"]
    starts: int = DEFAULTS["starts"]  # evaluation start points per function
    tune_trials: int = DEFAULTS["tune_trials"]  # 0: no tuning (--no-tune)
    tune_starts: int = DEFAULTS["tune_starts"]
    noise: float = 0.0  # gradient noise sigma
    tol: float = 1e-2  # success: final distance to a global minimum at most tol
    seed: int = 0
    lr: float | None = None  # without tuning: every optimizer's lr (else its default)
    momentum: float | None = None  # without tuning: SGD's momentum

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SurfacesConfig:
        """Build from a TOML table: unknown keys, wrong types and ranges are errors."""
        check_keys(data, [f.name for f in fields(cls)])
        return cls(**data).validate()

    def validate(self) -> SurfacesConfig:
        """Check every field; UsageError names the first bad key."""
        check_names("functions", self.functions, FUNCTIONS, "function")
        check_names("optimizers", self.optimizers, OPTIMIZERS, "optimizer")
        for name, least in [("steps", 1), ("starts", 1), ("tune_trials", 0), ("tune_starts", 1)]:
            check(name, getattr(self, name), _int(least), f"an integer >= {least}")
        check("seed", self.seed, _int(0, MAX_SEED), f"an integer in [0, {MAX_SEED}]")
        check("noise", self.noise, _number(lambda v: v >= 0), "a number >= 0")
        check("tol", self.tol, _number(lambda v: v > 0), "a number > 0")
        check("lr", self.lr, _optional(_number(lambda v: v > 0)), "a number > 0")
        in_range = _optional(_number(lambda v: 0 <= v < 1))
        check("momentum", self.momentum, in_range, "a number in [0, 1)")
        for name in ("noise", "tol", "lr", "momentum"):  # TOML 1 for 1.0
            if getattr(self, name) is not None:
                setattr(self, name, float(getattr(self, name)))
        for name in ("lr", "momentum"):
            if getattr(self, name) is not None and self.tune_trials:
                raise UsageError(
                    f"config key {name!r}: only without tuning (tune_trials = 0); "
                    "otherwise it is tuned"
                )
        if self.momentum is not None and "sgd" not in self.optimizers:
            raise UsageError(
                f"config key {'momentum'!r}: applies to sgd, which is not among the optimizers"
            )
        self.functions, self.optimizers = list(self.functions), list(self.optimizers)
        return self

    def hyperparameters(self) -> dict[str, dict[str, float]] | None:
        """Without tuning: the given lr/momentum per optimizer (others: their defaults)."""
        if self.tune_trials:
            return None
        given = {name: {} if self.lr is None else {"lr": self.lr} for name in self.optimizers}
        if self.momentum is not None:
            given["sgd"]["momentum"] = self.momentum
        return given

    def benchmark_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `optimlab.surfaces.benchmark` for this config."""
        return dict(
            surfaces=self.functions, optimizers=self.optimizers, steps=self.steps,
            starts=self.starts, tune_trials=self.tune_trials, tune_starts=self.tune_starts,
            noise=self.noise, tol=self.tol, seed=self.seed,
            hyperparameters=self.hyperparameters(),
        )  # fmt: skip


def split_run(data: dict[str, Any]) -> tuple[dict, dict, dict]:
    """A run file as (shared top-level keys, [surfaces] table, [mnist1d] table)."""
    check_keys(data, [*RUN_SHARED, *RUN_PARTS])
    shared = {k: data[k] for k in RUN_SHARED if k in data}
    if "seed" in shared:
        check("seed", shared["seed"], _int(0, MAX_SEED), f"an integer in [0, {MAX_SEED}]")
    parts = []
    for part in RUN_PARTS:
        table = data.get(part, {})
        check(part, table, lambda v: isinstance(v, dict), f"a table [{part}]")
        if "seed" in table:
            raise UsageError(
                f"config key '{part}.seed': give seed at the top level (it seeds both parts)"
            )
        parts.append(dict(table))
    return shared, parts[0], parts[1]


def to_toml(data: Mapping[str, Any], comments: list[str]) -> str:
    """TOML text of `data` (None values left out: TOML has no null), after `# comments`."""
    import tomli_w

    def drop_none(table: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: drop_none(v) if isinstance(v, Mapping) else v
            for k, v in table.items()
            if v is not None
        }

    header = "".join(f"# {line}\n" for line in comments)
    return header + "\n" + tomli_w.dumps(drop_none(data))


def study_table(config: Any) -> tuple[dict[str, Any], list[str]]:
    """A StudyConfig's values for TOML, and the comments it needs (a storage password)."""
    from optimlab.storage import mask_url

    data = config.to_dict_raw()
    if config.storage is not None and mask_url(config.storage) != config.storage:
        del data["storage"]
        note = [
            f"storage left out: its URL holds a password ({mask_url(config.storage)});",
            "pass it again with --storage or $OPTIMLAB_STORAGE.",
        ]
        return data, note
    return data, []


def header(command: str) -> list[str]:
    return [
        f"The resolved config of this run of `optimlab {command}`: every setting, defaults",
        f"filled in. `optimlab {command} --config THIS_FILE --out NEW` reproduces the run.",
    ]


def write_study(path: Path, config: Any) -> None:
    from optimlab.atomic import write_text

    data, note = study_table(config)
    write_text(path, to_toml(data, [*header("mnist1d"), *note]))


def write_surfaces(path: Path, config: SurfacesConfig) -> None:
    from optimlab.atomic import write_text

    write_text(path, to_toml(asdict(config), header("surfaces")))


def write_run(path: Path, surfaces: SurfacesConfig, study: Any) -> None:
    """`optimlab run`'s config: the shared seed on top, then each part's table."""
    from optimlab.atomic import write_text

    study_data, note = study_table(study)
    parts = {
        "surfaces": {k: v for k, v in asdict(surfaces).items() if k != "seed"},
        "mnist1d": {k: v for k, v in study_data.items() if k != "seed"},
    }
    write_text(path, to_toml({"seed": study.seed, **parts}, [*header("run"), *note]))
