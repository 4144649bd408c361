"""The surfaces benchmark: tune each optimizer per function, run it from many start points,
measure, and write the result files (figures come from those files, see `plots`).

Protocol (the README states it for users):
- evaluation starts: the function's canonical start, then a scrambled Sobol spread over the
  domain (seeded); tuning starts: another Sobol spread (another seed), never evaluated on;
- tuning: Optuna TPE (seeded, multivariate, constant liar), the same number of trials for every
  (function, optimizer), asked in rounds run as one batch: the first half of the budget is
  TPE's random start-up, then rounds of `ROUND` trials;
- the tuning objective: mean over tuning starts of min(log10(f - f* + 1e-12), 12), a diverged
  run scoring 12; lower is better.
"""

from __future__ import annotations

import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimlab.atomic import ensure_output_dir
from optimlab.errors import UsageError
from optimlab.surfaces import metrics, output
from optimlab.surfaces.batched import VARIANTS, Variant
from optimlab.surfaces.functions import DEFAULT_FUNCTIONS, Surface, get
from optimlab.surfaces.runner import Block, Trajectories, run

# The budgets of the default benchmark, and of --quick (the same functions and optimizers).
DEFAULTS = {"steps": 500, "starts": 16, "tune_trials": 20, "tune_starts": 8}
QUICK = {"steps": 200, "starts": 8, "tune_trials": 8, "tune_starts": 4}
ROUND = 5  # trials per tuning round after TPE's random start-up
SCORE_FLOOR = 1e-12  # gaps below this count as solved
SCORE_CAP = 12.0  # log10 gap of a diverged (or hopeless) run
MAX_RECORDED_BYTES = 2**30  # 150 times the default benchmark's trajectories
MAX_SEED = 2**32 - 1  # the gate's torch.manual_seed and Optuna's samplers take any such seed


def benchmark(
    surfaces: Iterable[str | Surface] = DEFAULT_FUNCTIONS,
    optimizers: Iterable[str] = tuple(VARIANTS),
    *,
    steps: int = 500,
    starts: int = 16,
    tune_trials: int = 20,
    noise: float = 0.0,
    seed: int = 0,
    out: str | Path | None = None,
    tune_starts: int = 8,
    tol: float = 1e-2,
    hyperparameters: Mapping[str, Mapping[str, float]] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Tune (unless `tune_trials=0`), run and measure every optimizer on every surface.

    Returns one summary row per (function, optimizer), the columns of summary.csv. With
    `out`, also writes the result files and figures there, and resumes: an `out` holding
    this config's unfinished run keeps its finished tuning rounds, a finished one is
    returned as is (see `claim_out`). Without tuning, hyperparameters are
    `hyperparameters[optimizer]` where given, else the variant's documented defaults.
    """
    started = time.perf_counter()
    surfaces, variants, fixed, config = _resolve(
        surfaces, optimizers, steps, starts, tune_trials, tune_starts, noise, seed, tol,
        hyperparameters,
    )  # fmt: skip
    state = None
    if out is not None:
        ensure_output_dir(out)  # fail now, not after the runs
        state = output.claim(Path(out), config)
        if state.finished():
            return state.rows
    with output.Progress(progress) as bar:
        tuned = (
            tune(
                surfaces,
                variants,
                steps,
                tune_trials,
                tune_starts,
                noise,
                seed,
                bar,
                done=state.rounds if state else (),
                on_round=state.add_round if state else None,
            )  # fmt: skip
            if tune_trials
            else {(s.name, v.name): {"params": fixed[v.name]} for s in surfaces for v in variants}
        )
        tuning_s = time.perf_counter() - started
        points = {s.name: start_points(s, starts, seed) for s in surfaces}
        blocks = [
            Block(s, v.name, points[s.name], tuned[s.name, v.name]["params"])
            for s in surfaces
            for v in variants
        ]
        bar.phase("evaluating", steps)
        results = run(
            blocks,
            steps,
            noise=noise_table(noise, steps, starts, seed),
            gate_seed=seed,
            on_step=bar.update,
        )
        evaluation_s = time.perf_counter() - started - tuning_s
        rows = [
            metrics.summary_row(block, result, tuned[block.surface.name, block.variant], tol)
            for block, result in zip(blocks, results, strict=True)
        ]
        if state is not None:
            settings = dict(
                steps=steps, starts=starts, tune_trials=tune_trials, tune_starts=tune_starts,
                noise=noise, seed=seed, tol=tol,
            )  # fmt: skip
            timings = {"tuning_s": tuning_s, "evaluation_s": evaluation_s}
            output.write_all(
                Path(out), surfaces, variants, blocks, results, rows, tuned, settings, timings,
                bar, started,
            )  # fmt: skip
            state.finish(rows)
    return rows


def claim_out(
    out: str | Path,
    surfaces: Iterable[str | Surface] = DEFAULT_FUNCTIONS,
    optimizers: Iterable[str] = tuple(VARIANTS),
    *,
    steps: int = 500,
    starts: int = 16,
    tune_trials: int = 20,
    noise: float = 0.0,
    seed: int = 0,
    tune_starts: int = 8,
    tol: float = 1e-2,
    hyperparameters: Mapping[str, Mapping[str, float]] | None = None,
    create: bool = True,
) -> None:
    """Check `benchmark`'s arguments and that `out` can take this run, before any work.

    `out` may be missing or empty (with `create`, it then becomes this config's run), or hold
    a run of the same config (`benchmark` resumes it); a different config, or files that are
    no surfaces run, are refused (UsageError naming the differing keys).
    """
    config = _resolve(
        surfaces, optimizers, steps, starts, tune_trials, tune_starts, noise, seed, tol,
        hyperparameters,
    )[3]  # fmt: skip
    if create:
        ensure_output_dir(out)
    output.claim(Path(out), config, create=create)


def _resolve(surfaces, optimizers, steps, starts, tune_trials, tune_starts, noise, seed, tol,
             hyperparameters):  # fmt: skip
    """Checked surfaces, variants, fixed hyperparameters, and the config identifying a run."""
    surfaces = [get(s) for s in surfaces]
    variants = [_variant(name) for name in optimizers]
    _check(steps, starts, tune_trials, tune_starts, noise, seed, tol, surfaces, variants)
    if tune_trials and hyperparameters:
        raise UsageError("give hyperparameters only without tuning (tune_trials=0)")
    fixed = _fixed_hyperparameters(variants, hyperparameters or {})
    config = dict(
        functions=[s.name for s in surfaces], optimizers=[v.name for v in variants],
        steps=steps, starts=starts, tune_trials=tune_trials, tune_starts=tune_starts,
        noise=noise, seed=seed, tol=tol, hyperparameters=None if tune_trials else fixed,
    )  # fmt: skip
    return surfaces, variants, fixed, config


def tune(
    surfaces: Sequence[Surface],
    variants: Sequence[Variant],
    steps: int,
    trials: int,
    n_starts: int,
    noise: float,
    seed: int,
    bar: output.Progress,
    *,
    done: Sequence[Mapping[str, list[dict[str, Any]]]] = (),
    on_round: Callable[[int, dict[str, list[dict[str, Any]]]], None] | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Tune every (surface, variant) with its own seeded TPE study, all trials of a round in
    one batched run. Returns, per pair, the best params, its score and every trial.

    Resuming: `done` holds finished rounds (per "function/optimizer", each trial's params and
    score). Such a round is replayed: the seeded samplers are asked again, and where they
    propose the saved params the saved scores are told instead of running, which leaves every
    study (and sampler) as an uninterrupted run would. `on_round(k, trials)` gets each round
    that was run.
    """
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            studies = {
                (s.name, v.name): optuna.create_study(
                    direction="minimize",
                    sampler=optuna.samplers.TPESampler(
                        seed=study_seed(seed, s.name, v.name),
                        n_startup_trials=startup_trials(trials),
                        multivariate=True,
                        constant_liar=True,
                    ),
                )
                for s in surfaces
                for v in variants
            }
            points = {s.name: start_points(s, n_starts, seed, tuning=True) for s in surfaces}
            table = noise_table(noise, steps, n_starts, seed, tuning=True)
            rounds = tuning_rounds(trials)
            replay = list(done)
            for k, size in enumerate(rounds):
                asked = {key: [study.ask() for _ in range(size)] for key, study in studies.items()}
                blocks = [
                    _trial_block(get_surface(surfaces, key[0]), VARIANTS[key[1]], ts, points)
                    for key, ts in asked.items()
                ]
                scores = output.saved_scores(asked, replay[k]) if k < len(replay) else None
                if scores is None:
                    replay = replay[:k]  # proposals differ from here on: run them
                    bar.phase(f"tuning, round {k + 1}/{len(rounds)}", steps)
                    results = run(
                        blocks, steps, noise=table, record=False, gate_seed=seed,
                        on_step=bar.update,
                    )  # fmt: skip
                    scores = {
                        key: tuning_scores(block, result, n_starts)
                        for key, block, result in zip(asked, blocks, results, strict=True)
                    }
                for key, ts in asked.items():
                    for trial, score in zip(ts, scores[key], strict=True):
                        studies[key].tell(trial, score)
                if on_round is not None and k >= len(replay):
                    on_round(k, output.round_record(asked, scores))
    finally:
        optuna.logging.set_verbosity(previous)
    return {
        key: {
            "params": dict(study.best_params),
            "score": study.best_value,
            "trials": [{"params": t.params, "score": t.value} for t in study.trials],
        }
        for key, study in studies.items()
    }


def _trial_block(
    surface: Surface, variant: Variant, trials: list, points: dict[str, torch.Tensor]
) -> Block:
    """One block for a round of trials: rows = trials x tuning starts, trial-major."""
    starts = points[surface.name]
    n = len(starts)
    hyper = {
        name: torch.tensor(
            [t.suggest_float(name, low, high, log=log) for t in trials], dtype=torch.float64
        ).repeat_interleave(n)
        for name, (low, high, log) in variant.search.items()
    }
    noise_rows = torch.arange(n).repeat(len(trials))
    return Block(surface, variant.name, starts.repeat(len(trials), 1), hyper, noise_rows)


def tuning_scores(block: Block, result: Trajectories, n_starts: int) -> list[float]:
    """Each trial's objective: the mean over its starts of the capped log10 final gap."""
    gap = (result.values[-1] - block.surface.value).clamp_min(0).numpy()
    score = np.minimum(np.log10(gap + SCORE_FLOOR), SCORE_CAP)
    score[result.diverged_at.numpy() >= 0] = SCORE_CAP
    return [float(s) for s in score.reshape(-1, n_starts).mean(1)]


def start_points(surface: Surface, n: int, seed: int, *, tuning: bool = False) -> torch.Tensor:
    """(n, 2) start points in the domain. Evaluation: the canonical start, then n - 1 points
    of a scrambled Sobol sequence; tuning: n points of a differently scrambled sequence."""
    purpose = "tuning" if tuning else "evaluation"
    sobol = torch.quasirandom.SobolEngine(2, scramble=True, seed=_derive(seed, "starts", purpose))
    count = n if tuning else n - 1
    unit = (
        sobol.draw(count, dtype=torch.float64) if count else torch.empty(0, 2, dtype=torch.float64)
    )
    (x0, x1), (y0, y1) = surface.domain
    spread = torch.tensor([x0, y0], dtype=torch.float64) + unit * torch.tensor([x1 - x0, y1 - y0])
    if tuning:
        return spread
    return torch.cat([torch.tensor([surface.start], dtype=torch.float64), spread])


def noise_table(
    sigma: float, steps: int, n: int, seed: int, *, tuning: bool = False
) -> torch.Tensor | None:
    """Gradient noise sigma * N(0, 1), (steps, n, 2): start i reads row i at every step, the
    same for every optimizer and function given the seed (None without noise)."""
    if sigma == 0:
        return None
    purpose = "tuning" if tuning else "evaluation"
    generator = torch.Generator().manual_seed(_derive(seed, "noise", purpose))
    return sigma * torch.randn(steps, n, 2, generator=generator, dtype=torch.float64)


def tuning_rounds(trials: int) -> list[int]:
    """Trials per round: TPE's random start-up in one round, then rounds of ROUND."""
    first = startup_trials(trials)
    rest = trials - first
    return [first] + [min(ROUND, rest - i) for i in range(0, rest, ROUND)]


def startup_trials(trials: int) -> int:
    return max(1, trials // 2)


def study_seed(seed: int, function: str, optimizer: str) -> int:
    """A study's sampler seed: independent of which other studies run alongside."""
    return _derive(seed, function, optimizer)


def _derive(seed: int, *parts: object) -> int:
    return zlib.crc32("/".join(map(str, (seed, *parts))).encode()) & 0x7FFFFFFF


def get_surface(surfaces: Sequence[Surface], name: str) -> Surface:
    return next(s for s in surfaces if s.name == name)


def _variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown optimizer {name!r}; valid: {', '.join(VARIANTS)}") from None


def _fixed_hyperparameters(
    variants: Sequence[Variant], given: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """Per variant: its defaults, overridden by `given[variant]` (unknown names rejected)."""
    for name, values in given.items():
        variant = _variant(name)
        unknown = set(values) - set(variant.search)
        if unknown:
            raise UsageError(
                f"{name} has no hyperparameter {sorted(unknown)[0]!r}; "
                f"it takes {', '.join(variant.search)}"
            )
    return {v.name: {**v.defaults, **given.get(v.name, {})} for v in variants}


def recorded_bytes(steps: int, starts: int, pairs: int, noise: float) -> int:
    """Memory the evaluation records: x, y and f (float64) at every step of every run, and
    the noise table."""
    return 8 * (steps + 1) * starts * (3 * pairs + (2 if noise else 0))


def _check(steps, starts, tune_trials, tune_starts, noise, seed, tol, surfaces, variants) -> None:
    for name, value, least in [
        ("steps", steps, 1), ("starts", starts, 1), ("tune_trials", tune_trials, 0),
        ("tune_starts", tune_starts, 1),
    ]:  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError(f"{name} must be an integer >= {least}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    if not (noise >= 0 and np.isfinite(noise)):
        raise UsageError(f"noise must be a finite number >= 0, got {noise!r}")
    if not (tol > 0 and np.isfinite(tol)):
        raise UsageError(f"tol must be a finite number > 0, got {tol!r}")
    if not surfaces or not variants:
        raise UsageError("give at least one function and one optimizer")
    recorded = recorded_bytes(steps, starts, len(surfaces) * len(variants), noise)
    if recorded > MAX_RECORDED_BYTES:
        raise UsageError(
            f"steps x starts too large: the trajectories would take {recorded / 2**30:.1f} GiB "
            f"of memory (at most {MAX_RECORDED_BYTES / 2**30:.0f} GiB); lower steps or starts"
        )
    for kind, names in [
        ("function", [s.name for s in surfaces]),
        ("optimizer", [v.name for v in variants]),
    ]:
        if len(set(names)) != len(names):
            raise UsageError(f"a {kind} is listed twice: {', '.join(names)}")
