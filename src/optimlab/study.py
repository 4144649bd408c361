"""The mnist1d study protocol: tune every optimizer, run finals on fresh seeds, write results.

    config -> run directory (config.json) -> per optimizer: Optuna tuning on train/val,
    then the best configuration on K seeds with test metrics -> result files -> report

Each optimizer has a tuning study and a final-run study, named from the config, so every
worker started with the same options (processes here, `workers`, or machines sharing a
PostgreSQL storage) joins the same studies and shares their budgets. All progress lives in
the Optuna storage: rerunning the same command on the same directory resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from optimlab.atomic import ensure_output_dir, remove_temporary_files, write_json
from optimlab.errors import UsageError
from optimlab.mnist1d import variants
from optimlab.storage import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    default_url,
    file_path,
    mask_url,
    scheme_of,
)

CLAIM = {"dynamic_adam_val_loss": 0.238, "adam_val_loss": 1.103, "mnist1d_mlp_test_accuracy": 0.68}
QUICK = {"trials": 4, "epochs": 3, "seeds": 2}
CONFIG_ATTR = "config"  # study user attribute: the config of the run (storage masked)
CHECKPOINTS = "checkpoints"  # final runs' per-epoch checkpoints, inside the run directory
FINAL_SEED_OFFSET = 1000  # final seeds are seed+1000, seed+1001, ...: never the tuning seed
MODELS = ("mlp", "cnn")  # optimlab.mnist1d.models.MODELS, without importing torch


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
    # Worker processes on this machine. With a file store each tuning study is tuned by one
    # worker at a time, so any number gives one worker's results; on PostgreSQL they share.
    workers: int = 1
    threads: int = 1  # torch threads per process
    heartbeat_interval: int = HEARTBEAT_INTERVAL  # seconds (PostgreSQL heartbeats)
    grace_period: int = GRACE_PERIOD  # seconds without heartbeat before a trial is re-run

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
        positive = ("trials", "epochs", "seeds", "batch_size", "workers", "threads")
        for name in (*positive, "heartbeat_interval", "grace_period"):
            _check(name, getattr(self, name), lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        if self.grace_period <= self.heartbeat_interval:
            raise UsageError(
                f"config key 'grace_period': expected more than the heartbeat interval "
                f"({self.heartbeat_interval} s), got {self.grace_period}"
            )
        _check("seed", self.seed, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        _check("val_fraction", self.val_fraction, _fraction, "a number in (0, 1)")
        _check("model", self.model, lambda v: v in MODELS, f"one of {', '.join(MODELS)}")
        sources = " or ".join(variants.META_SOURCES)
        _check("meta_source", self.meta_source, _meta_source, f"{sources} (or none)")
        _check("device", self.device, _device_name, "cpu, cuda or cuda:N")
        if self.device != "cpu" and not _cuda_available():
            raise UsageError(f"device {self.device} requested but CUDA is not available here")
        _check("study_name", self.study_name, _optional_name, "a name of letters, digits, -_.")
        if self.storage is not None:
            _check("storage", self.storage, lambda v: isinstance(v, str), "a URL")
            if scheme_of(self.storage) == "sqlite" and self.workers > 1:
                raise UsageError(
                    "SQLite is not safe for several writers: with --workers > 1 use "
                    "journal:///PATH or postgresql://..."
                )
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

    def differences(self, other: StudyConfig) -> list[str]:
        """The experiment fields in which `other` differs from this config, as "key: a there,
        b here" (workers that share studies must run the same experiment)."""
        ours, theirs = self.experiment(), other.experiment()
        return [f"{k}: {theirs[k]!r} there, {ours[k]!r} here" for k in ours if theirs[k] != ours[k]]

    def run_name(self) -> str:
        """Prefix of the Optuna study names: --study-name, or a stable hash of `experiment()`."""
        if self.study_name:
            return self.study_name
        digest = hashlib.sha256(json.dumps(self.experiment(), sort_keys=True).encode())
        return f"mnist1d-{digest.hexdigest()[:10]}"

    def final_seeds(self) -> list[int]:
        return [self.seed + FINAL_SEED_OFFSET + i for i in range(self.seeds)]

    def storage_url(self, run_dir: Path) -> str:
        """The storage URL: the explicit one, else the run directory's embedded store."""
        return self.storage or default_url(run_dir, processes=self.workers)


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


def _device_name(value: Any) -> bool:
    return isinstance(value, str) and (value in ("cpu", "cuda") or value.startswith("cuda:"))


def _cuda_available() -> bool:
    import torch  # checked before the run directory is written, not at the first trial

    return torch.cuda.is_available()


def _optional_name(value: Any) -> bool:
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    return value is None or (isinstance(value, str) and value != "" and set(value) <= ok)


def _check(name: str, value: Any, ok, requirement: str) -> None:
    if not ok(value):
        raise UsageError(f"config key {name!r}: expected {requirement}, got {value!r}")


# How a run is carried out, not what it computes: a run may resume with other values
# (heartbeats only decide when a dead trial runs again). Not `workers`: one worker's default
# store is study.db, several workers' study.journal.
EXECUTION = ("heartbeat_interval", "grace_period")


def prepare_run_dir(config: StudyConfig, run_dir: Path) -> None:
    """Create the run directory (config.json, the resume contract, and config.toml, the
    resolved config to feed back with --config), or accept it to resume when it holds the
    same config.

    Nothing is written before the storage has opened: a run refused for an unreachable
    server or a damaged file leaves no config.json behind that would then refuse the rerun
    with the corrected --storage as "a different config".
    """
    from optimlab import config_file
    from optimlab.storage import open_storage

    saved_path = run_dir / "config.json"
    current = config.to_dict()
    if saved_path.exists():
        saved = _read_config(saved_path, hint="; use another --out")
        keys = sorted((set(saved) | set(current)) - set(EXECUTION))
        changed = [k for k in keys if saved.get(k) != current.get(k)]
        if changed:
            differences = "; ".join(
                f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in changed
            )
            raise UsageError(
                f"{run_dir} holds a run with a different config ({differences}); "
                "rerun with the same options or use another --out"
            )
        open_storage(config.storage_url(run_dir))  # resuming: a damaged store fails now
        for directory in (run_dir, run_dir / CHECKPOINTS):
            remove_temporary_files(directory)  # left by writes a kill interrupted
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UsageError(f"{run_dir} exists and is not an empty directory or a study run")
    if config.storage is not None:
        open_storage(config.storage)
    ensure_output_dir(run_dir, what="run directory")
    resolved = {
        "run_name": config.run_name(),
        "storage": mask_url(config.storage_url(run_dir)),
        "final_seeds": config.final_seeds(),
    }
    write_json(saved_path, {"config": current, "resolved": resolved})
    config_file.write_study(run_dir / config_file.NAME, config)  # to feed back with --config


def run_study(config: StudyConfig, run_dir: str | Path, *, quiet: bool = False) -> Path:
    """Run (or resume) the whole study into `run_dir`; return the path of report.md.

    This invocation's workers return once every study of the run is finished, whichever
    worker (here or on another machine) ran each trial; the result files are then written
    from the storage, so every machine's run directory gets the same results.
    """
    from optimlab.report import build_report
    from optimlab.results import write_results
    from optimlab.study_progress import StudyProgress
    from optimlab.study_workers import run_workers

    config.validate()
    run_dir = Path(run_dir)
    prepare_run_dir(config, run_dir)
    url = config.storage_url(run_dir)
    start = time.perf_counter()
    with StudyProgress(config, quiet=quiet) as progress:
        run_workers(config, url, progress.emit, checkpoints=run_dir / CHECKPOINTS)
    seconds = time.perf_counter() - start
    with contextlib.suppress(OSError):  # every final run was recorded: nothing to resume
        (run_dir / CHECKPOINTS).rmdir()  # (only if empty: another run may still need it)
    timings = write_results(config, url, run_dir)
    write_json(run_dir / "timings.json", {"wall_seconds_this_invocation": seconds, **timings})
    return build_report(run_dir)


def report_from_storage(url: str, run_dir: str | Path, *, run: str | None = None) -> Path:
    """Write the result files and the report of a run from its storage into `run_dir`.

    `run_dir` is the run directory of any worker (its config.json names the run), or a new
    or empty directory: the run then comes from the storage, where every worker leaves its
    config on the tuning studies; `run` (a study prefix) picks one when there are several.
    """
    from optimlab.report import build_report
    from optimlab.results import write_results

    run_dir = Path(run_dir)
    path = file_path(url)
    if path is not None and not path.exists():  # opening it would create an empty store
        raise UsageError(f"no storage file {path}")
    saved = run_dir / "config.json"
    if saved.exists():
        config = StudyConfig.from_dict(_read_config(saved))
        if run is not None and run != config.run_name():
            raise UsageError(f"{run_dir} holds run {config.run_name()!r}, not {run!r}")
    else:
        config = stored_config(url, run)
        config.storage = url  # recorded masked
        prepare_run_dir(config, run_dir)
    missing = sorted(set(_study_names(config)) - set(_stored_names(url)))
    if missing:
        raise UsageError(f"{mask_url(url)} holds no study {missing[0]}; is it the run's storage?")
    timings_path = run_dir / "timings.json"
    try:  # only its wall-clock time is kept: a damaged file is simply replaced
        previous = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    except ValueError:
        previous = {}
    previous = previous if isinstance(previous, dict) else {}
    wall = {k: v for k, v in previous.items() if k == "wall_seconds_this_invocation"}
    write_json(timings_path, {**wall, **write_results(config, url, run_dir)})
    return build_report(run_dir)


def stored_config(url: str, run: str | None = None) -> StudyConfig:
    """The config of run `run` (or of the only run) that workers left in the storage."""
    import optuna

    from optimlab.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = optuna.get_all_study_summaries(open_storage(url), include_best_trial=False)
    names = {s.study_name for s in studies}
    runs: dict[str, StudyConfig] = {}
    for study in studies:
        data = study.user_attrs.get(CONFIG_ATTR)
        if study.study_name.endswith("-tune") and isinstance(data, dict):
            config = StudyConfig.from_dict(data)
            known = runs.setdefault(config.run_name(), config)
            known.optimizers += [o for o in config.optimizers if o not in known.optimizers]
    if not runs:
        raise UsageError(f"no mnist1d study run in {mask_url(url)}")
    listed = ", ".join(sorted(runs))
    if run is None and len(runs) == 1:
        run = next(iter(runs))
    elif run is None:
        raise UsageError(f"{mask_url(url)} holds runs: {listed}; pick one with --study-name")
    if run not in runs:
        raise UsageError(f"no run {run!r} in {mask_url(url)} (runs: {listed})")
    config = runs[run]
    config.optimizers = [o for o in config.optimizers if tune_study_name(run, o) in names]
    return config


def _study_names(config: StudyConfig) -> list[str]:
    run = config.run_name()
    return [f(run, o) for o in config.optimizers for f in (tune_study_name, final_study_name)]


def _stored_names(url: str) -> list[str]:
    import optuna

    from optimlab.storage import open_storage

    return optuna.get_all_study_names(open_storage(url))


def _read_config(path: Path, hint: str = "") -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())["config"]
    except (ValueError, KeyError, TypeError, OSError):
        config = None
    if not isinstance(config, dict):
        raise UsageError(f"{path} is not a study config (damaged or another file){hint}")
    return config
