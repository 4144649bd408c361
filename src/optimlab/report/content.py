"""The report's content: verdict, tables and figures, from the result files."""

from __future__ import annotations

from typing import Any

from optimlab.report.document import Block, Bullets, Heading, Image, Paragraph, Table
from optimlab.report.files import Results
from optimlab.report.verdict import rules, verdict


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _estimate(est: dict[str, Any], fmt: str = ".3f") -> str:
    if est["mean"] is None:
        return "-"
    if est["ci_low"] is None:
        return format(est["mean"], fmt)
    return f"{est['mean']:{fmt}} [{est['ci_low']:{fmt}}, {est['ci_high']:{fmt}}]"


def _params(params: dict[str, float] | None) -> str:
    if not params:
        return "-"
    return ", ".join(f"{k}={v:.3g}" for k, v in params.items())


def _space(space: dict[str, dict[str, Any]]) -> str:
    return ", ".join(
        f"{k} {r['low']:g}..{r['high']:g}{' (log)' if r['log'] else ''}" for k, r in space.items()
    )


def build_blocks(results: Results, figures: dict[str, str]) -> list[Block]:
    summary, config = results.summary, results.config["config"]
    found = verdict(summary)
    blocks: list[Block] = [
        Heading(1, "mnist1d study: DynamicAdam against tuned baselines"),
        Paragraph(
            'The claim under test: "DynamicAdam reached a validation loss of 0.238 on mnist1d '
            'against 1.103 for tuned Adam." Every optimizer is tuned with Optuna under the same '
            "budget on a train/validation split of the 4000 mnist1d training examples; its best "
            "configuration is then trained on fresh seeds and evaluated once on the official "
            "1000 test examples, which tuning never sees."
        ),
        Heading(2, "Verdict"),
        Paragraph(found.headline),
        Bullets(found.findings),
        Paragraph(rules()),
        Heading(2, "Final runs"),
        Paragraph(
            f"Each optimizer's best configuration on {summary['budget']['seeds']} seeds "
            f"({', '.join(map(str, summary['final_seeds']))}), {summary['budget']['epochs']} "
            "epochs. Mean and 95% confidence interval (t distribution) over the seeds that did "
            "not diverge; Welch's t-test of the test loss against adam."
        ),
        _final_table(summary),
        Heading(2, "Against the claim and the literature"),
        _claim_table(summary),
        Heading(2, "Tuning"),
        Paragraph(
            f"{summary['budget']['trials']} finished trials per optimizer (complete or pruned; "
            "crashed trials are rerun), TPE sampler seeded, objective = validation loss after "
            f"{summary['budget']['epochs']} epochs, MedianPruner on the per-epoch validation "
            "loss; diverged trials are pruned and marked."
        ),
        _tuning_table(summary),
        Heading(2, "Figures"),
    ]
    blocks += [Image(name, caption) for name, caption in figures.items()]
    blocks += [Heading(2, "Setup"), _setup_table(config, summary)]
    if results.timings:
        blocks += [Heading(2, "Timings"), _timings(results.timings)]
    blocks += [
        Heading(2, "Files"),
        Paragraph(
            "config.json (resolved config), trials.csv (tuning trials), finals.csv (final runs), "
            "curves.csv (per epoch), beta1.csv (per step), importances.csv, summary.json "
            "(statistics and verdict), timings.json. `optimlab report DIR` redraws this report "
            "from those files alone."
        ),
    ]
    return blocks


def _final_table(summary: dict[str, Any]) -> Table:
    rows = []
    for name, entry in summary["optimizers"].items():
        finals = entry["finals"]
        test = (entry.get("vs_adam") or {}).get("test_loss")
        vs_adam = "-" if test is None else f"{test['diff']:+.3f} (p={test['p']:.3g})"
        label = f"{name} (reference)" if entry.get("reference_only") else name
        rows.append(
            [
                label,
                f"{finals['runs']} ({finals['diverged']} diverged)",
                _estimate(finals["val_loss"]),
                _estimate(finals["test_loss"]),
                _estimate(finals["test_accuracy"], ".1%"),
                vs_adam,
            ]
        )
    headers = ["optimizer", "runs", "val loss", "test loss", "test accuracy", "test loss vs adam"]
    return Table(headers, rows)


def _claim_table(summary: dict[str, Any]) -> Table:
    claim, opts = summary["claim"], summary["optimizers"]

    def mean(name: str, metric: str, fmt: str = ".3f") -> str:
        entry = opts.get(name)
        return "not run" if entry is None else _num(entry["finals"][metric]["mean"], fmt)

    best = max(
        (
            (e["finals"]["test_accuracy"]["mean"], n)
            for n, e in opts.items()
            if e["finals"]["test_accuracy"]["mean"] is not None
        ),
        default=None,
    )
    rows = [
        [
            "dynamic_adam validation loss",
            str(claim["dynamic_adam_val_loss"]),
            mean("dynamic_adam", "val_loss"),
        ],
        ["adam validation loss", str(claim["adam_val_loss"]), mean("adam", "val_loss")],
        ["dynamic_adam test loss", "-", mean("dynamic_adam", "test_loss")],
        ["adam test loss", "-", mean("adam", "test_loss")],
        ["dynamic_adam_published validation loss", "-", mean("dynamic_adam_published", "val_loss")],
        ["dynamic_adam_published test loss", "-", mean("dynamic_adam_published", "test_loss")],
        [
            "best test accuracy (MLP, mnist1d paper: 68%)",
            f"{claim['mnist1d_mlp_test_accuracy']:.0%}",
            "-" if best is None else f"{best[0]:.1%} ({best[1]})",
        ],
    ]
    return Table(["quantity", "claimed / published", "measured (mean)"], rows)


def _tuning_table(summary: dict[str, Any]) -> Table:
    rows = []
    for name, entry in summary["optimizers"].items():
        t = entry["tuning"]
        importances = ", ".join(f"{k} {v:.2f}" for k, v in entry["importances"].items()) or "-"
        rows.append(
            [
                name,
                _space(entry["search_space"]),
                f"{t['complete']} / {t['pruned']} / {t['diverged']} / {t['failed']}",
                _num(t["best_value"]),
                _params(t["best_params"]),
                importances,
            ]
        )
    headers = [
        "optimizer",
        "search space",
        "complete / pruned / diverged / failed",
        "best val loss",
        "best configuration",
        "importance",
    ]
    return Table(headers, rows)


def _setup_table(config: dict[str, Any], summary: dict[str, Any]) -> Table:
    keys = [
        "trials",
        "epochs",
        "seeds",
        "batch_size",
        "model",
        "val_fraction",
        "meta_source",
        "seed",
        "storage",
        "device",
        "workers",
        "threads",
    ]
    rows = [[k, "default" if config.get(k) is None else str(config.get(k))] for k in keys]
    rows.append(["Optuna study prefix", summary["run_name"]])
    return Table(["setting", "value"], rows)


def _timings(timings: dict[str, Any]) -> Table:
    rows = [
        [name, f"{t['tuning_trial_seconds']:.1f}", f"{t['final_run_seconds']:.1f}"]
        for name, t in timings.get("per_optimizer", {}).items()
    ]
    wall = timings.get("wall_seconds_this_invocation")
    if wall is not None:
        rows.append(["wall clock of the last invocation (all processes)", f"{wall:.1f}", ""])
    return Table(["optimizer", "tuning trials (s)", "final runs (s)"], rows)
