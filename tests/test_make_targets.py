"""What the Makefile and pyproject promise exists: `make bench`'s `python -m benchmarks` (its
discovery and failure handling, without running a real benchmark), and the make targets the
pytest markers name."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def runner(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("benchmarks.__main__")


def test_make_bench_runs_python_m_benchmarks():
    assert "$(PY) -m benchmarks\n" in (ROOT / "Makefile").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines()]
    # the named four first, in order; then every other module with a main(), but not common
    assert listed[:4] == ["optimizer_step", "training_step", "surfaces_speed", "study_speed"]
    modules = {
        p.stem
        for p in (ROOT / "benchmarks").glob("[!_]*.py")
        if re.search(r"^def main\(", p.read_text(), re.MULTILINE)
    }
    assert set(listed) == modules and len(listed) == len(modules)
    assert "common" not in listed


def test_quick_is_passed_only_to_benchmarks_that_declare_it(monkeypatch):
    bench = runner(monkeypatch)
    assert bench.takes_quick("optimizer_step") and bench.takes_quick("study_speed")
    assert not bench.takes_quick("surfaces_speed")  # it times `optimlab surfaces --quick`


def test_a_failure_is_reported_the_others_still_run_and_the_exit_status_is_1(monkeypatch, capsys):
    bench = runner(monkeypatch)
    calls = []

    def fake_run(name, quick):
        calls.append((name, quick))
        return (3 if name == "training_step" else 0), 0.0

    monkeypatch.setattr(bench, "run", fake_run)
    assert bench.main(["--quick"]) == 1
    assert [name for name, _ in calls] == bench.discover()
    assert all(quick for _, quick in calls)
    out = capsys.readouterr().out
    assert out.count("=== [") == len(calls)  # a header per benchmark
    assert "benchmarks.training_step: FAILED (exit status 3)" in out
    assert "1 of" in out and "failed: training_step" in out

    calls.clear()
    monkeypatch.setattr(bench, "run", lambda name, quick: calls.append(name) or (0, 0.0))
    assert bench.main([]) == 0 and len(calls) == len(bench.discover())


def test_make_run_passes_out_and_workers_on():
    def dry_run(*assignments: str) -> str:
        proc = subprocess.run(
            ["make", "--no-print-directory", "-n", "-o", "setup", "run", *assignments],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return next(line for line in proc.stdout.splitlines() if "-m optimlab run" in line)

    assert dry_run().split()[-2:] == ["optimlab", "run"]
    assert dry_run("OUT=runs/x", "WORKERS=2").split()[-5:] == [
        "run",
        "--out",
        "runs/x",
        "--workers",
        "2",
    ]


def test_make_targets_named_in_pyproject_exist():
    named = re.findall(r"`make ([\w-]+)`", (ROOT / "pyproject.toml").read_text())
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    assert named and set(named) <= targets
