"""Optuna storage URLs: parse, mask the password, open, and reclaim trials of dead processes.

Three schemes, so a study runs on one laptop or on many machines without code changes:

- `sqlite:///PATH`: an SQLite file, the default for one process;
- `journal:///PATH`: an Optuna journal file, safe for several processes on one machine;
- `postgresql://USER:PASSWORD@HOST/DB`: a shared server for many machines.

A URL's password is never printed or written: every message uses `mask_url`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from optimlab.errors import RunError, UsageError

if TYPE_CHECKING:
    import optuna

SCHEMES = ("sqlite", "journal", "postgresql")
USAGE = "use sqlite:///PATH, journal:///PATH or postgresql://USER@HOST/DB"
WORKER_ATTR = "worker"  # user attribute naming the process that runs a trial: "host:pid"


def mask_url(url: str) -> str:
    """`url` with its password (user info or `?password=` query) replaced by `***`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable storage URL>"
    masked = parts
    if password:
        user, host = parts.netloc.rsplit("@", 1)
        masked = masked._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}")
    query = parse_qsl(parts.query)
    if any(k.lower() == "password" for k, _ in query):
        query = [(k, "***" if k.lower() == "password" else v) for k, v in query]
        masked = masked._replace(query=urlencode(query, safe="*"))
    return url if masked == parts else urlunsplit(masked)


def scheme_of(url: str) -> str:
    """The storage kind of `url` ("sqlite", "journal" or "postgresql"); UsageError otherwise."""
    scheme, sep, rest = url.partition("://")
    kind = scheme.lower()
    if kind.startswith(("postgresql+", "postgres+")) or kind == "postgres":
        kind = "postgresql"  # a driver suffix such as postgresql+psycopg2
    if not sep or kind not in SCHEMES:
        raise UsageError(f"unsupported storage URL {mask_url(url)!r}; {USAGE}")
    if kind != "postgresql" and (not rest.startswith("/") or not rest.strip("/")):
        raise UsageError(f"storage URL {mask_url(url)!r} names no file; {USAGE}")
    return kind


def file_path(url: str) -> Path | None:
    """The file behind a sqlite/journal URL (`sqlite:///rel`, `sqlite:////abs`), else None."""
    if scheme_of(url) == "postgresql":
        return None
    return Path(url.split(":///", 1)[1])


def default_url(run_dir: str | os.PathLike, *, processes: int = 1) -> str:
    """The embedded store of a run directory: SQLite for one process, a journal for several."""
    run_dir = Path(run_dir).resolve()
    if processes > 1:
        return f"journal:///{run_dir / 'study.journal'}"
    return f"sqlite:///{run_dir / 'study.db'}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage behind `url`; RunError (password masked) when it cannot be opened."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    kind = scheme_of(url)
    try:
        if kind == "journal":
            path = file_path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if kind == "sqlite":
            path = file_path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(url, engine_kwargs={"creator": _sqlite(path)})
        # Heartbeats turn the trials of a crashed worker into FAIL so they are run again.
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one masked line
        raise RunError(f"cannot open storage {mask_url(url)}: {_scrub(str(exc), url)}") from None


def _sqlite(path: Path):
    """Connections in WAL mode with synchronous=NORMAL: a commit no longer waits for the disk
    (6 ms each here, thousands per study), yet a killed process loses nothing committed."""

    def connect():
        connection = sqlite3.connect(path, timeout=60)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return connect


def _scrub(message: str, url: str) -> str:
    """First line of a driver message, with the URL's password removed if it appears."""
    line = (message.strip().splitlines() or ["unknown error"])[0]
    secrets = [v for k, v in parse_qsl(urlsplit(url).query) if k.lower() == "password"]
    try:
        secrets.append(urlsplit(url).password or "")
    except ValueError:
        pass
    for secret in filter(None, secrets):
        line = line.replace(secret, "***")
    return line


def worker_id() -> str:
    """This process, as recorded on the trials it runs: host, pid and the process start time."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def reclaim_dead_trials(study: optuna.Study) -> int:
    """Mark FAIL the RUNNING trials whose process on this host is gone; return how many.

    A killed run leaves its trial RUNNING for ever on SQLite and journal files; failing it
    lets the study run it again. The start time in the worker id tells a dead process from a
    new one that reuses its pid. Trials of live processes and of other hosts are left alone;
    on PostgreSQL, stale heartbeats fail those of other hosts.
    """
    from optuna.storages._heartbeat import fail_stale_trials, is_heartbeat_enabled
    from optuna.trial import TrialState

    if is_heartbeat_enabled(study._storage):
        fail_stale_trials(study)
    host = socket.gethostname()
    reclaimed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, process = str(trial.user_attrs.get(WORKER_ATTR, "")).partition(":")
        pid, _, started = process.partition(":")
        if owner_host == host and pid.isdigit() and _start_time(int(pid)) != started:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            reclaimed += 1
    return reclaimed


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> contextlib.AbstractContextManager:
    """While a trial runs, beat its heartbeat (storages with heartbeats: PostgreSQL here), as
    `Study.optimize` does; a no-op elsewhere."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, study._storage)


def _start_time(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc), "" if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if os.path.isdir("/proc"):
            return ""
        try:  # no /proc (macOS): fall back to "is the pid in use"
            os.kill(pid, 0)
        except ProcessLookupError:
            return ""
        except PermissionError:
            pass
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]
