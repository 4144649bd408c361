"""Optuna storage URLs: parse, mask the password, open, and reclaim trials of dead workers.

Three schemes, so a study runs on one laptop or on many machines without code changes:

- `sqlite:///PATH`: an SQLite file, the default for one process;
- `journal:///PATH`: an Optuna journal file, safe for several processes on one machine;
- `postgresql://USER:PASSWORD@HOST/DB`: a shared server for many machines.

The URL may come from the environment (`OPTIMLAB_STORAGE`) so a password stays off the
command line. A URL's password is never printed or written: every message uses `mask_url`.
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import os
import socket
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from optimlab.errors import RunError, UsageError

if TYPE_CHECKING:
    import optuna

SCHEMES = ("sqlite", "journal", "postgresql")
USAGE = "use sqlite:///PATH, journal:///PATH or postgresql://USER@HOST/DB"
ENV_VAR = "OPTIMLAB_STORAGE"  # the storage URL when --storage is not given
WORKER_ATTR = "worker"  # user attribute naming the process that runs a trial: "host:pid:start"
SURPLUS_ATTR = "surplus"  # user attribute of a trial asked once the budget was covered (never run)
HEARTBEAT_INTERVAL = 2  # seconds between heartbeats of a running trial (PostgreSQL)
GRACE_PERIOD = 10  # seconds without a heartbeat before a running trial is failed and re-queued

# When this command started (worker processes get their parent's, `set_command_started`): an
# ownerless RUNNING trial in a file store that is older than this was left by a killed run.
_command_started = datetime.datetime.now()


def command_started() -> datetime.datetime:
    return _command_started


def set_command_started(moment: datetime.datetime) -> None:
    global _command_started
    _command_started = moment


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


def url_or_env(url: str | None) -> str | None:
    """`url` if given, else the checked URL in $OPTIMLAB_STORAGE, else None."""
    if url:
        return url
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    try:
        scheme_of(value)
    except UsageError as exc:
        raise UsageError(f"{ENV_VAR}: {exc}") from None
    return value


def file_path(url: str) -> Path | None:
    """The file behind a sqlite/journal URL (`sqlite:///rel`, `sqlite:////abs`), else None."""
    if scheme_of(url) == "postgresql":
        return None
    return Path(url.split(":///", 1)[1])


def default_url(run_dir: str | os.PathLike, *, processes: int = 1) -> str:
    """The embedded store of a run directory: SQLite for one process, a journal for several.

    (A journal would be about 2.5 s faster on the claim's protocol with one worker too, but
    there a Ctrl-C once left the interrupted trial RUNNING, for the next run to reclaim,
    where SQLite's transactions always let Optuna fail it: tried and left for now.)"""
    run_dir = Path(run_dir).resolve()
    if processes > 1:
        return f"journal:///{run_dir / 'study.journal'}"
    return f"sqlite:///{run_dir / 'study.db'}"


class JournalLock:
    """The write lock of a journal file as an flock on `.NAME.lock` beside it (Optuna's
    BaseJournalFileLock interface): the kernel releases it when its holder dies, so a writer
    killed while appending leaves no stale lock behind (Optuna's own file locks make the next
    writer wait out a 30 s grace period). For journals on a local disk, as the file stores
    of one machine are."""

    def __init__(self, journal: Path) -> None:
        self.path = journal.with_name(f".{journal.name}.lock")
        self._handle: int | None = None

    def acquire(self) -> bool:
        import fcntl

        self._handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX)
        except BaseException:  # Ctrl-C while waiting: never leave the descriptor behind
            self.release()
            raise
        return True

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            os.close(handle)  # closing the descriptor releases the flock


def open_storage(
    url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.storages.BaseStorage:
    """The Optuna storage behind `url`; RunError (password masked) when it cannot be opened.

    With `heartbeat_interval` (workers, not readers), a PostgreSQL storage records a heartbeat
    of every running trial; one silent for `grace_period` seconds is failed, and Optuna's
    `RetryHeartbeatStaleTrialCallback` queues a copy of it (same parameters) to run again.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    kind = scheme_of(url)
    try:
        if kind == "journal":
            path = file_path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = JournalLock(path)
            backend = JournalFileBackend(str(path), lock_obj=lock)
            _repair_journal(path, lock)
            return optuna.storages.JournalStorage(backend)
        if kind == "sqlite":
            path = file_path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(url, engine_kwargs={"creator": _sqlite(path)})
        if heartbeat_interval is None:
            return optuna.storages.RDBStorage(_with_driver(url))
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                _with_driver(url),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=requeue,
            )
    except RunError:
        raise
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one masked line
        raise RunError(
            f"cannot open storage {mask_url(url)}: {_scrub(str(exc), url)}; {_hint(kind, exc)}"
        ) from None


def _hint(kind: str, exc: Exception) -> str:
    """What to do about a storage that does not open."""
    if isinstance(exc, ImportError):
        return "install optimlab[postgres]"
    if kind == "postgresql":
        return "check that the server is up and the URL (host, port, user, password, database)"
    if isinstance(exc, OSError):
        return "check the path and its permissions"
    what = "an SQLite database" if kind == "sqlite" else "an Optuna journal"
    return (
        f"the file is damaged or not {what}: point --storage at the run's storage, or move "
        "the file away and start the study again"
    )


def _repair_journal(path: Path, lock: JournalLock) -> None:
    """Make a journal file safe to append to, or fail with a RunError saying what is wrong.

    A process killed while appending can leave a last record without its newline: Optuna
    skips it while it is last, but the next append would glue onto it and corrupt the
    journal for good. Such a tail never held a complete record, so it is cut off (under the
    journal's lock, so no live writer is cut). A complete last line that is no record is
    damage, not a kill: Optuna would ignore it until the next append, so it is refused here
    (damage further up makes Optuna's replay fail, translated by `open_storage`).
    """
    if not path.exists():
        return
    if _tail(path)[0] < path.stat().st_size:
        lock.acquire()
        try:
            end, size = _tail(path)[0], path.stat().st_size
            if end < size:
                os.truncate(path, end)
                print(
                    f"optimlab: dropped an incomplete last record of {path} "
                    f"({size - end} bytes, left by a killed process)",
                    file=sys.stderr,
                )
        finally:
            lock.release()
    _, line = _tail(path)
    try:
        record = json.loads(line) if line.strip() else {"op_code": None}
    except ValueError:
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise RunError(
            f"journal file {path} is damaged: its last record is not an Optuna journal entry; "
            "restore the file, or move it away and start the study again"
        )


def _tail(path: Path, chunk: int = 1 << 16) -> tuple[int, bytes]:
    """(offset just past the last newline, the last complete line) of a file."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        data, start = b"", end
        while start > 0 and data.count(b"\n") < 2:
            previous, start = start, max(0, start - chunk)
            f.seek(start)
            data = f.read(previous - start) + data
        cut = data.rfind(b"\n")
        if cut < 0:
            return 0, b""
        return start + cut + 1, data[:cut].rsplit(b"\n", 1)[-1]


def _with_driver(url: str) -> str:
    """A plain postgresql:// URL with the driver that is installed: SQLAlchemy 2.1 assumes
    psycopg 3, while the `postgres` extra installs psycopg2."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("postgresql", "postgres"):
        return url  # a driver is named (postgresql+psycopg2://...)
    driver = "psycopg2" if importlib.util.find_spec("psycopg2") else "psycopg"
    return f"postgresql+{driver}://{rest}"


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


def reclaim_dead_trials(study: optuna.Study, *, grace_period: float = GRACE_PERIOD) -> int:
    """Fail the RUNNING trials of dead workers and queue each again; return how many here.

    On PostgreSQL, Optuna fails trials whose heartbeat is stale (any host) and its retry
    callback queues them. Every storage also gets, from here: trials whose process on this
    host is gone (a killed run leaves its trial RUNNING for ever on SQLite and journal files;
    the start time in the worker id tells a dead process from a new one reusing its pid), and
    trials that never got an owner within `grace_period` seconds (killed right after asking),
    or, in a file store (only this host writes it), that got none before this command
    started: a resumed run must not ask past such a trial, or its proposals would differ
    from an uninterrupted run's. Each is failed, then re-queued like the stale ones
    (`requeue`): a WAITING copy with its parameters, which the next `ask` of any worker pops.
    """
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host, now = socket.gethostname(), datetime.datetime.now()
    local = _is_file_store(study)
    reclaimed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(WORKER_ATTR)
        if owner is None:
            started = trial.datetime_start or now
            orphaned = local and started < _command_started
            dead = orphaned or (now - started).total_seconds() > grace_period
        else:
            owner_host, _, process = str(owner).partition(":")
            pid, _, started = process.partition(":")
            dead = owner_host == host and pid.isdigit() and _start_time(int(pid)) != started
        if dead and _fail(study, trial._trial_id):
            requeue(study, study._storage.get_trial(trial._trial_id))
            reclaimed += 1
    return reclaimed


def _is_file_store(study: optuna.Study) -> bool:
    """Whether the study lives in an SQLite or journal file (written from this host only)."""
    import optuna

    if isinstance(study._storage, optuna.storages.JournalStorage):
        return True
    rdb = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    return str(getattr(rdb, "url", "")).startswith("sqlite")


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a failed trial again with Optuna's `RetryHeartbeatStaleTrialCallback`, minus our
    own marks: the dead worker's id (the copy must not look orphaned once a live worker pops
    it) and a surplus mark the dead worker may have set just before it died."""
    import optuna

    trial = copy.deepcopy(trial)
    for name in (WORKER_ATTR, SURPLUS_ATTR):
        trial.user_attrs.pop(name, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)


def _fail(study: optuna.Study, trial_id: int) -> bool:
    """Set a RUNNING trial to FAIL; False when another worker finished or failed it first."""
    import optuna
    from optuna.trial import TrialState

    try:
        return study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


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
