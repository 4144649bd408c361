"""The real command on a real PostgreSQL server, as several machines would run it: workers
that meet in the same studies, exact budgets, results equal to a local run, the report
rebuilt from the storage alone, and the password in no output.

Needs a server: `export OPTIMLAB_TEST_POSTGRES_URL=$(.ci/postgres.sh start)` (CI does this).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest

from optimlab.storage import open_storage

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg():
    """(URL, a fresh study prefix); the studies are deleted afterwards."""
    url = os.environ.get("OPTIMLAB_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("OPTIMLAB_REQUIRE_POSTGRES") or os.environ.get("CI"):
            pytest.fail("OPTIMLAB_TEST_POSTGRES_URL is unset: CI must run the PostgreSQL tests")
        pytest.skip(
            "no PostgreSQL server: export OPTIMLAB_TEST_POSTGRES_URL=$(.ci/postgres.sh start)"
        )
    prefix = f"t{uuid.uuid4().hex[:8]}"
    yield url, prefix
    storage = open_storage(url)
    for name in optuna.get_all_study_names(storage):
        if name.startswith(prefix):
            optuna.delete_study(study_name=name, storage=storage)


def optimlab(*args: str, storage: str | None = None, wait: bool = True):
    """Run `optimlab ARGS`; `storage` goes through OPTIMLAB_STORAGE, off the command line."""
    env = {k: v for k, v in os.environ.items() if k != "OPTIMLAB_STORAGE"}
    if storage:
        env["OPTIMLAB_STORAGE"] = storage
    argv = [sys.executable, "-m", "optimlab", *args]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    return proc.communicate(timeout=600) + (proc.returncode,) if wait else proc


def finish(procs) -> list[tuple[str, str, int]]:
    return [(*p.communicate(timeout=600), p.returncode) for p in procs]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def password_of(url: str) -> str:
    secret = urlsplit(url).password
    assert secret, "the test URL must carry a password"
    return secret


def test_three_machines_share_the_studies_with_exact_budgets(pg, tmp_path):
    url, prefix = pg
    options = ["--optimizers", "adam,sgd", "--trials", "12", "--epochs", "2", "--seeds", "2"]
    options += ["--study-name", prefix]
    machines = [tmp_path / name for name in ("a", "b", "c")]
    first = ["--out", str(machines[0]), "--storage", url]  # the URL on the command line
    procs = [optimlab("mnist1d", *options, *first, wait=False)]
    for machine in machines[1:]:  # the URL in OPTIMLAB_STORAGE
        procs.append(optimlab("mnist1d", *options, "--out", str(machine), storage=url, wait=False))
    outputs = finish(procs)
    for _, err, code in outputs:
        assert code == 0, err[-2000:]
    summary = (machines[0] / "summary.json").read_text()
    for machine in machines:  # every machine wrote the same results from the storage
        assert (machine / "summary.json").read_text() == summary
        assert not (machine / "study.db").exists() and not (machine / "study.journal").exists()
    trials = rows(machines[0] / "trials.csv")
    for name in ("adam", "sgd"):
        # Exactly the budget finished; a FAIL row would be a trial whose heartbeat came late
        # under load, failed, and run again by another worker.
        mine = [t for t in trials if t["optimizer"] == name and t["state"] != "FAIL"]
        assert len(mine) == 12 and {t["state"] for t in mine} <= {"COMPLETE", "PRUNED"}
    finals = rows(machines[0] / "finals.csv")
    assert sorted((r["optimizer"], r["seed"]) for r in finals) == [
        ("adam", "1000"),
        ("adam", "1001"),
        ("sgd", "1000"),
        ("sgd", "1001"),
    ]
    storage = open_storage(url)
    ran_by = set()
    for name in optuna.get_all_study_names(storage):
        if name.startswith(prefix):
            for t in optuna.load_study(study_name=name, storage=storage).trials:
                ran_by.add(t.user_attrs["worker"].split(":")[1])
    assert len(ran_by) >= 2, outputs  # the commands really worked on the same studies
    status = optimlab("status", storage=url)
    assert status[2] == 0
    line = next(x for x in status[0].splitlines() if f"{prefix}-adam-tune" in x)
    cells = [c.strip() for c in line.strip("│┃ ").split("│")]
    assert int(cells[1]) + int(cells[2]) == 12 and cells[3:5] == ["0", "0"], status[0]
    secret = password_of(url)
    for out, err, _ in [*outputs, status]:
        assert secret not in out and secret not in err
    for machine in machines:
        for path in machine.iterdir():
            if path.suffix in (".json", ".csv", ".md", ".html"):
                assert secret not in path.read_text(errors="replace"), path


@pytest.mark.slow
def test_a_quick_study_on_two_workers_gives_the_files_and_report_of_a_local_run(pg, tmp_path):
    """Two commands (two machines, one worker each) against PostgreSQL, and one local run.

    With --quick the 4 trials per optimizer are drawn by TPE's random start-up from
    (seed, slot) alone and nothing is pruned, so even the numbers must agree.
    """
    url, prefix = pg
    options = ["--quick", "--study-name", prefix]
    local = tmp_path / "local"
    remote = [tmp_path / "a", tmp_path / "b"]
    procs = [
        optimlab("mnist1d", *options, "--out", str(d), storage=url, wait=False) for d in remote
    ]
    outputs = finish(procs)
    local_run = optimlab("mnist1d", *options, "--out", str(local))
    for _, err, code in [*outputs, local_run]:
        assert code == 0, err[-2000:]
    rebuilt = tmp_path / "rebuilt"  # a machine that ran nothing: results from the storage
    report = optimlab("report", str(rebuilt), "--storage", "--study-name", prefix, storage=url)
    assert report[2] == 0, report[1]
    expected = sorted(p.name for p in local.iterdir() if p.name != "study.db")
    for run in [*remote, rebuilt]:
        assert sorted(p.name for p in run.iterdir()) == expected
        for name in ("summary.json", "trials.csv", "importances.csv", "beta1.csv"):
            assert (run / name).read_text() == (local / name).read_text(), (run, name)
        for name in ("finals.csv", "curves.csv"):
            assert untimed(run / name) == untimed(local / name), (run, name)
        assert report_body(run) == report_body(local)
    secret = password_of(url)
    for out, err, _ in [*outputs, report]:
        assert secret not in out and secret not in err
    assert json.loads((rebuilt / "config.json").read_text())["config"]["storage"].count("***")


def untimed(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows(path)]


def report_body(run: Path) -> str:
    """report.md without the sections that depend on where and how long it ran."""
    text = (run / "report.md").read_text()
    return re.sub(r"## (Setup|Timings)\n.*?(?=\n## )", "", text, flags=re.S)


def test_a_wrong_password_is_one_line_without_it(pg, tmp_path):
    url, prefix = pg
    parts = urlsplit(url)
    wrong = url.replace(f":{parts.password}@", ":not-the-hunter2-pw@")
    out, err, code = optimlab("status", "--storage", wrong)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "not-the-hunter2-pw" not in err and ":***@" in err
    out, err, code = optimlab("mnist1d", "--quick", "--out", str(tmp_path / "x"), storage=wrong)
    assert code == 1 and "not-the-hunter2-pw" not in out + err and "Traceback" not in err
