"""The mnist1d study protocol: tune every optimizer, run finals on fresh seeds, write results.

    config -> run directory (config.json) -> per optimizer: Optuna tuning on train/val,
    then the best configuration on K seeds with test metrics -> result files -> report

Each optimizer is one independent unit (its tuning study, then its final study), so units
run in parallel processes (`jobs`) without changing any number. All progress lives in the
Optuna storage: rerunning the same command on the same directory resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from optimlab.atomic import write_json
from optimlab.errors import UsageError
from optimlab.mnist1d import variants
from optimlab.storage import default_url, mask_url, scheme_of

CLAIM = {"dynamic_adam_val_loss": 0.238, "adam_val_loss": 1.103, "mnist1d_mlp_test_accuracy": 0.68}
QUICK = {"trials": 4, "epochs": 3, "seeds": 2}
FINAL_SEED_OFFSET = 1000  # final seeds are seed+1000, seed+1001, ...: never the tuning seed
MODELS = ("mlp", "cnn")  # optimlab.mnist1d.models.MODELS, without importing torch
# Both cores of a laptop: units run in parallel without changing any number (see jobs).
DEFAULT_JOBS = min(2, os.cpu_count() or 1)


def default_optimizers() -> list[str]:
    return list(variants.DEFAULT_VARIANTS)  # looked up at call time (tests may narrow it)


@dataclass
class StudyConfig:
    """Everything that defines a study run (saved as config.json in the run directory)."""

    optimizers: list[str] = field(default_factory=default_optimizers)
    trials: int = 20  # finished tuning trials per optimizer
    epochs: int = 25
    seeds: int = 5  # final runs per optimizer
    batch_size: int = 100
    model: str = "mlp"
    val_fraction: float = 0.2  # of the official 4000 training examples
    meta_source: str | None = None  # overrides the lookahead variants' meta batches
    seed: int = 0  # data split, tuning sampler and tuning runs; finals use seed + 1000 + i
    storage: str | None = None  # Optuna storage URL; None: study.db / study.journal in the run
    study_name: str | None = None  # prefix of the Optuna study names; None: from the config
    device: str = "cpu"
    jobs: int = field(default_factory=lambda: DEFAULT_JOBS)  # processes, one optimizer each
    threads: int = 1  # torch threads per process

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        """Build from a plain dict (config.json, a TOML table): unknown keys are errors."""
        names = {f.name for f in fields(cls)}
        for name in data:
            if name not in names:
                raise UsageError(f"unknown config key {name!r}; valid: {', '.join(sorted(names))}")
        config = cls(**data)
        config.validate()
        return config

    def validate(self) -> StudyConfig:
        """Check every field; UsageError names the first bad key."""
        valid = list(variants.VARIANTS)
        if not isinstance(self.optimizers, list | tuple) or not self.optimizers:
            raise UsageError("config key 'optimizers': expected a non-empty list of names")
        for name in self.optimizers:
            if name not in valid:
                raise UsageError(f"unknown optimizer {name!r}; valid: {', '.join(valid)}")
        if len(set(self.optimizers)) != len(self.optimizers):
            raise UsageError("config key 'optimizers': names must not repeat")
        self.optimizers = list(self.optimizers)
        for name in ("trials", "epochs", "seeds", "batch_size", "jobs", "threads"):
            _check(name, getattr(self, name), lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        _check("seed", self.seed, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        _check("val_fraction", self.val_fraction, _fraction, "a number in (0, 1)")
        _check("model", self.model, lambda v: v in MODELS, f"one of {', '.join(MODELS)}")
        sources = " or ".join(variants.META_SOURCES)
        _check("meta_source", self.meta_source, _meta_source, f"{sources} (or none)")
        _check("device", self.device, _device, "cpu, or cuda where CUDA is available")
        _check("study_name", self.study_name, _optional_name, "a name of letters, digits, -_.")
        if self.storage is not None:
            _check("storage", self.storage, lambda v: isinstance(v, str), "a URL")
            scheme_of(self.storage)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as saved in config.json: the storage password masked."""
        data = asdict(self)
        if self.storage is not None:
            data["storage"] = mask_url(self.storage)
        return data

    def to_dict_raw(self) -> dict[str, Any]:
        """The config with the storage URL as given (for worker processes, never written)."""
        return asdict(self)

    def train_settings(self):
        from optimlab.tuning import TrainSettings

        return TrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            model=self.model,
            meta_source=self.meta_source,
            device=self.device,
        )

    def experiment(self) -> dict[str, Any]:
        """The fields that define the experiment's numbers (and so its study names)."""
        from optimlab import tuning

        ranges = {k: asdict(r) for k, r in {**tuning.LR_RANGES, **tuning.OTHER_RANGES}.items()}
        pruner = [tuning.PRUNER_STARTUP_TRIALS, tuning.PRUNER_WARMUP_FRACTION]
        keys = ("trials", "epochs", "batch_size", "model", "val_fraction", "meta_source", "seed")
        return {**{k: getattr(self, k) for k in keys}, "search_spaces": ranges, "pruner": pruner}

    def run_name(self) -> str:
        """Prefix of the Optuna study names: --study-name, or a stable hash of `experiment()`."""
        if self.study_name:
            return self.study_name
        digest = hashlib.sha256(json.dumps(self.experiment(), sort_keys=True).encode())
        return f"mnist1d-{digest.hexdigest()[:10]}"

    def final_seeds(self) -> list[int]:
        return [self.seed + FINAL_SEED_OFFSET + i for i in range(self.seeds)]

    def processes(self) -> int:
        """How many processes run units: `jobs`, but one on an explicit SQLite storage (SQLite
        is not made for several writers; use a journal file or PostgreSQL for that)."""
        if self.storage is not None and self.storage.lower().startswith("sqlite"):
            return 1
        return min(self.jobs, len(self.optimizers))

    def storage_url(self, run_dir: Path) -> str:
        """The storage URL: the explicit one, else the run directory's embedded store."""
        return self.storage or default_url(run_dir, processes=self.processes())


def tune_study_name(run: str, optimizer: str) -> str:
    return f"{run}-{optimizer}-tune"


def final_study_name(run: str, optimizer: str) -> str:
    return f"{run}-{optimizer}-final"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fraction(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and 0 < value < 1


def _meta_source(value: Any) -> bool:
    return value is None or value in variants.META_SOURCES


def _device(value: Any) -> bool:
    if value == "cpu":
        return True
    if not isinstance(value, str) or not (value == "cuda" or value.startswith("cuda:")):
        return False
    import torch  # checked before the run directory is written, not at the first trial

    return torch.cuda.is_available()


def _optional_name(value: Any) -> bool:
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    return value is None or (isinstance(value, str) and value != "" and set(value) <= ok)


def _check(name: str, value: Any, ok, requirement: str) -> None:
    if not ok(value):
        raise UsageError(f"config key {name!r}: expected {requirement}, got {value!r}")


def prepare_run_dir(config: StudyConfig, run_dir: Path) -> None:
    """Create the run directory, or accept it to resume when it holds the same config."""
    saved_path = run_dir / "config.json"
    current = config.to_dict()
    if saved_path.exists():
        try:
            saved = json.loads(saved_path.read_text())["config"]
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{saved_path} is not a study config; use another --out") from None
        changed = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
        if changed:
            differences = "; ".join(
                f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in changed
            )
            raise UsageError(
                f"{run_dir} holds a run with a different config ({differences}); "
                "rerun with the same options or use another --out"
            )
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UsageError(f"{run_dir} exists and is not an empty directory or a study run")
    resolved = {
        "run_name": config.run_name(),
        "storage": mask_url(config.storage_url(run_dir)),
        "final_seeds": config.final_seeds(),
    }
    write_json(saved_path, {"config": current, "resolved": resolved})


def run_study(config: StudyConfig, run_dir: str | Path, *, quiet: bool = False) -> Path:
    """Run (or resume) the whole study into `run_dir`; return the path of report.md."""
    from optimlab.report import build_report
    from optimlab.results import write_results
    from optimlab.study_progress import StudyProgress
    from optimlab.study_workers import run_units

    config.validate()
    run_dir = Path(run_dir)
    prepare_run_dir(config, run_dir)
    url = config.storage_url(run_dir)
    start = time.perf_counter()
    with StudyProgress(config, quiet=quiet) as progress:
        run_units(config, url, progress.emit)
    seconds = time.perf_counter() - start
    timings = write_results(config, url, run_dir)
    write_json(run_dir / "timings.json", {"wall_seconds_this_invocation": seconds, **timings})
    return build_report(run_dir)
