"""Run every benchmark in turn (`make bench`): each module's main(), in a fresh process.

    python -m benchmarks                    # all of them; results in benchmarks/results/
    python -m benchmarks step_scaling study_scaling   # only these, in this order
    python -m benchmarks --quick            # each one's smoke run (where it has one: --list)
    python -m benchmarks --list             # the benchmarks that would run; runs nothing

A benchmark is a module of this package that defines `main` (found with pkgutil; `common` is
the shared helpers, and `summary`, which builds the report, has none). Each runs as
`python -m benchmarks.NAME` in its own process: benchmarks set torch's thread count and
measure peak memory, which must not carry over from one to the next. A failure is reported
and the others still run; the exit status is 1 if any failed. At the end
results/SUMMARY.md is rebuilt from the JSON files (after a quick run too, which writes no
JSON: the summary then shows the last full results).
"""

from __future__ import annotations

import argparse
import ast
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
FIRST = ["optimizer_step", "training_step", "surfaces_speed", "study_speed"]
SKIP = {"common", "__main__"}


def _parse(name: str) -> ast.Module:
    """Module `name`'s syntax tree: read, not imported (no torch import here)."""
    return ast.parse((PACKAGE / f"{name}.py").read_text())


def defines_main(name: str) -> bool:
    """Whether module `name` defines a top-level `main`."""
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "main"
        for node in _parse(name).body
    )


def takes_quick(name: str) -> bool:
    """Whether the benchmark declares a `--quick` option (else it always runs in full)."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
        and any(isinstance(a, ast.Constant) and a.value == "--quick" for a in node.args)
        for node in ast.walk(_parse(name))
    )


def discover() -> list[str]:
    """The benchmarks in running order: FIRST, then the others alphabetically."""
    names = [
        m.name
        for m in pkgutil.iter_modules([str(PACKAGE)])
        if not m.ispkg and m.name not in SKIP and defines_main(m.name)
    ]
    return [n for n in FIRST if n in names] + sorted(n for n in names if n not in FIRST)


def run(name: str, quick: bool) -> tuple[int, float]:
    """Run one benchmark in a fresh process; its exit status and wall time."""
    command = [sys.executable, "-m", f"benchmarks.{name}"]
    if quick and takes_quick(name):
        command.append("--quick")
    start = time.perf_counter()
    status = subprocess.run(command, cwd=PACKAGE.parent).returncode
    return status, time.perf_counter() - start


def run_all(names: list[str], quick: bool) -> list[str]:
    """Run the benchmarks in turn, a header before and a status line after each; the names
    of those that failed (a failure does not stop the others)."""
    failed = []
    for i, name in enumerate(names, start=1):
        flag = " --quick" if quick and takes_quick(name) else ""
        header = f"=== [{i}/{len(names)}] benchmarks.{name}{flag}"
        print(f"\n{header} ===", flush=True)
        status, seconds = run(name, quick)
        outcome = "ok" if status == 0 else f"FAILED (exit status {status})"
        print(f"=== benchmarks.{name}: {outcome}, {seconds:.0f} s ===", flush=True)
        if status != 0:
            failed.append(name)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="benchmarks to run (default: all; see --list)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="pass --quick to every benchmark that has it"
    )
    parser.add_argument(
        "--list", action="store_true", help="print the benchmarks in running order and exit"
    )
    args = parser.parse_args(argv)
    known = discover()
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.exit(2, f"unknown benchmark {unknown[0]!r}; valid: {', '.join(known)}\n")
    names = list(dict.fromkeys(args.names)) or known
    if args.list:
        for name in names:
            print(name + ("" if takes_quick(name) else "  (no --quick: always full)"))
        return 0
    try:
        failed = run_all(names, args.quick)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    from benchmarks.summary import write

    print(f"\nsummary: {write()}")
    if failed:
        print(f"\n{len(failed)} of {len(names)} benchmarks failed: {', '.join(failed)}")
        return 1
    print(f"\nall {len(names)} benchmarks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
