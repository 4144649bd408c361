"""Build results/SUMMARY.md from the benchmarks' JSON files alone: per benchmark a table of
its key figures, and a table of issue 8's targets with the measured value and whether each
is met. Runs at the end of `python -m benchmarks`; by hand:

    python -m benchmarks.summary                 # reads results/*.json, writes SUMMARY.md
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
Table = list[list[str]]
Check = dict[str, Any]  # name, value, target ("<= 1.1"), met
PLOTS = {
    "step_scaling": ["step_time_vs_params.png"],
    "optimizer_compile": ["step_scaling.png"],
    "study_scaling": [
        "study_time_vs_trials.png",
        "study_time_vs_width.png",
        "trial_time_vs_workers.png",
    ],
}


# Issue 8's end-to-end targets (seconds); older JSON files may record older targets.
STUDY_TARGETS_S = {
    "claim_protocol": 30.0,
    "claim_protocol_2_workers": 30.0,
    "full_run": 180.0,
    "full_run_2_workers": 180.0,
}
SURFACES_TARGET_S = 20.0


def check(name: str, value: float, op: str, target: float) -> Check:
    met = value <= target if op == "<=" else value >= target
    return {"name": name, "value": value, "target": f"{op} {target:g}", "met": met}


def markdown_table(header: list[str], rows: Table) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ms(x: float) -> str:
    return f"{x:.3f}"


def _x(x: float) -> str:
    return f"{x:.2f}x"


def size_rows(sizes: dict, ratio: str) -> Table:
    """A row per timed variant: its time and ratio (the `ratio` key) at each size."""
    names = list(next(iter(sizes.values()))["timings"])
    return [
        [n]
        + [
            f"{_ms(s['timings'][n]['median_ms'])} ms ({_x(s['timings'][n][ratio])})"
            for s in sizes.values()
            if n in s["timings"]
        ]
        for n in names
    ]


def optimizer_step(data: dict) -> tuple[list[str], list[Check]]:
    sizes = data["sizes"]
    rows = size_rows(sizes, "ratio")
    checks = [
        check(
            f"Adam optimlab default / {data['reference']} at {label}",
            s["timings"]["optimlab default"]["ratio"],
            "<=",
            1.0,
        )
        for label, s in sizes.items()
        if "optimlab default" in s["timings"]
    ]
    return markdown_table(["Adam step", *sizes], rows), checks


def optimizer_compile(data: dict) -> tuple[list[str], list[Check]]:
    sizes = data["sizes"]
    rows = size_rows(sizes, "vs_fused")
    head = sizes.get(data.get("headline", "10M"), {}).get("timings", {})
    checks = [
        check(f"{n} / torch fused at {data.get('headline', '10M')}", head[n]["vs_fused"], "<=", 1.1)
        for n in head
        if "compiled" in n and ("Adam" in n and "Dynamic" not in n)
    ]
    header = ["step (ratio to torch fused)", *sizes]
    return markdown_table(header, rows), checks


def cuda_step(data: dict) -> tuple[list[str], list[Check]]:
    """GPU figures: no targets (issue 8's are for the 2-core CPU)."""
    sizes = data["sizes"]
    rows = size_rows(sizes, "vs_fused")
    header = [f"step on {data.get('device', 'a GPU')} (ratio to torch fused)", *sizes]
    return markdown_table(header, rows), []


def training_step(data: dict) -> tuple[list[str], list[Check]]:
    models = data["models"]
    methods = list(next(iter(models.values()))["timings"])
    rows = [
        [m["label"]]
        + [
            f"{_ms(m['timings'][k]['median_ms'])} ms ({_x(m['timings'][k]['ratio'])})"
            for k in methods
        ]
        for m in models.values()
    ]
    checks = []
    mlp = models.get("mnist1d_mlp", {}).get("timings", {})
    for method, target in (("online", 1.15), ("lookahead", 2.0)):
        if method in mlp:
            checks.append(
                check(
                    f"mnist1d MLP step, DynamicAdam {method} / Adam",
                    mlp[method]["ratio"],
                    "<=",
                    target,
                )
            )
    return markdown_table(["model", *methods], rows), checks


def surfaces_speed(data: dict) -> tuple[list[str], list[Check]]:
    rows = [
        [name, f"{data[name]['wall_s']:.1f} s", f"{data['targets_s'].get(name, float('nan')):g} s"]
        for name in ("default", "quick")
        if name in data
    ]
    checks = [
        check("surfaces benchmark, default (s)", data["default"]["wall_s"], "<=", SURFACES_TARGET_S)
    ]
    return markdown_table(["run", "wall", "its own target"], rows), checks


def study_speed(data: dict) -> tuple[list[str], list[Check]]:
    runs = data["runs"]
    rows = [
        [
            f"`{r['command']}`",
            f"{r['seconds']:.1f} s",
            f"{r['study_seconds']:.1f} s",
            f"{r['target_seconds']:g} s",
        ]
        for r in runs.values()
    ]
    checks = [
        check(f"`{r['command']}` (s)", r["seconds"], "<=", STUDY_TARGETS_S[name])
        for name, r in runs.items()
        if name in STUDY_TARGETS_S
    ]
    return markdown_table(["command", "end to end", "study", "target"], rows), checks


def workers_speed(data: dict) -> tuple[list[str], list[Check]]:
    rows = [
        [w, f"{data['best_seconds'][w]:.1f} s", f"{data['median_seconds'][w]:.1f} s"]
        for w in data["best_seconds"]
    ]
    lines = [
        f"`{data['command']}`, speed-up of 2 workers (median): {_x(data['speedup_2_over_1'])}",
        "",
    ]
    return lines + markdown_table(["workers", "fastest", "median"], rows), []


def step_scaling(data: dict) -> tuple[list[str], list[Check]]:
    headline = data.get("headline", "10M")
    lines = [f"Step time at {headline} parameters (ratio to the family's reference):", ""]
    rows = []
    for family, by_size in data["families"].items():
        at = by_size.get(headline)
        if at is None:
            continue
        for label, t in at["timings"].items():
            rows.append(
                [family, label, f"{_ms(t['median_ms'])} ms", _x(t["ratio"]), at["reference"]]
            )
    lines += markdown_table(["family", "path", "step", "ratio", "reference"], rows)
    if data.get("notes"):
        lines += ["", *(f"- {note}" for note in data["notes"])]
    return lines, list(data.get("checks", []))


def study_scaling(data: dict) -> tuple[list[str], list[Check]]:
    lines = []
    for kind in ("trials", "width", "workers"):
        points = data["points"].get(kind, [])
        if not points:
            continue
        columns = [kind] + (["trials"] if kind != "trials" else [])
        rows = [
            [str(p[c]) for c in columns]
            + [
                f"{p['study_seconds']:.2f} s",
                f"{p['seconds_per_trial']:.3f} s",
                f"{p['study_seconds_per_trial']:.3f} s",
            ]
            for p in points
        ]
        header = [*columns, "study wall", "s per trial", "wall s per trial"]
        lines += [f"Against {kind} ({points[0]['epochs']} epochs, adam):", ""]
        lines += [*markdown_table(header, rows), ""]
    return lines[:-1], []


SECTIONS: dict[str, Callable[[dict], tuple[list[str], list[Check]]]] = {
    "optimizer_step": optimizer_step,
    "optimizer_compile": optimizer_compile,
    "cuda_step": cuda_step,
    "step_scaling": step_scaling,
    "training_step": training_step,
    "surfaces_speed": surfaces_speed,
    "study_speed": study_speed,
    "workers_speed": workers_speed,
    "study_scaling": study_scaling,
}


def load(results: Path) -> dict[str, dict]:
    """Every readable results/<name>.json, by name (unreadable ones are reported)."""
    found = {}
    for path in sorted(results.glob("*.json")):
        try:
            found[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"summary: skipping {path.name}: {exc}", file=sys.stderr)
    return found


def build(results: dict[str, dict], plots: set[str] = frozenset()) -> str:
    """The Markdown summary of `results` (benchmark name -> its JSON); `plots` are the image
    files present, linked under their benchmark."""
    order = [n for n in SECTIONS if n in results] + sorted(set(results) - set(SECTIONS))
    checks: list[tuple[str, Check]] = []
    body: list[str] = []
    for name in order:
        data = results[name]
        env = data.get("environment", {})
        body += [f"## {name}", ""]
        if env:
            body += [f"torch {env.get('torch', '?')}, {env.get('threads', '?')} threads", ""]
        section = SECTIONS.get(name)
        if section is None:
            body += ["(no summary for this benchmark: see its JSON file)", ""]
        else:
            try:
                lines, found = section(data)
            except (KeyError, TypeError, ValueError, StopIteration, AttributeError) as exc:
                lines, found = (
                    [f"(could not summarise {name}.json: {type(exc).__name__} {exc})"],
                    [],
                )
            body += [*lines, ""]
            checks += [(name, c) for c in found]
        body += [f"![{p}]({p})" for p in PLOTS.get(name, []) if p in plots]
        body += [""] if any(p in plots for p in PLOTS.get(name, [])) else []
    rows = [
        [name, c["name"], f"{c['value']:.3g}", c["target"], "yes" if c["met"] else "**no**"]
        for name, c in checks
    ]
    met = sum(c["met"] for _, c in checks)
    head = [
        "# Benchmark summary",
        "",
        "Generated by `python -m benchmarks.summary` from `benchmarks/results/*.json`; "
        "do not edit by hand.",
        "",
        f"## Targets (issue 8): {met} of {len(checks)} met",
        "",
    ]
    return (
        "\n".join(
            head
            + markdown_table(["benchmark", "target", "measured", "goal", "met"], rows)
            + ["", *body]
        ).rstrip()
        + "\n"
    )


def write(results_dir: Path = RESULTS) -> Path:
    from optimlab.atomic import write_text

    plots = {p.name for p in results_dir.glob("*.png")}
    path = results_dir / "SUMMARY.md"
    write_text(path, build(load(results_dir), plots))
    return path


def cli(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.summary` (not `main`: this module is no benchmark)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print(f"wrote {write()}")


if __name__ == "__main__":
    cli()
