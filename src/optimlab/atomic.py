"""Atomic result files: a kill at any moment leaves either the old file or the new one.

Every result file is written to a temporary file in the same directory, flushed to disk,
then moved over the target with `os.replace` (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; result files are ordinary files
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def is_temporary(name: str) -> bool:
    """Whether `name` is an `atomic_path` temporary (a killed write leaves one behind)."""
    return name.startswith(".") and name.endswith(".tmp")


def remove_temporary_files(directory: str | os.PathLike) -> int:
    """Delete the temporaries killed writes left in `directory` (a run that resumes owns its
    directory: no write of its own is in flight); return how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    stray = [p for p in directory.iterdir() if p.is_file() and is_temporary(p.name)]
    for path in stray:
        path.unlink(missing_ok=True)
    return len(stray)


def remove(path: str | os.PathLike) -> None:
    """Delete `path` and any temporary that a killed `atomic_path` write of it left."""
    path = Path(path)
    for stray in path.parent.glob(f".{path.name}.*.tmp"):
        stray.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/Infinity: store non-finite floats as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(finite_or_none(obj), indent=2, sort_keys=False, default=_json_default)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps_json(obj) + "\n")


def write_csv(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]
) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fieldnames})
    write_text(path, buf.getvalue())


def savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically (the format comes from the target's suffix)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip("."))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)


def ensure_output_dir(path: str | os.PathLike, *, what: str = "output directory") -> Path:
    """Create `path` if needed and check that files can be written there, before any work.

    Raises UsageError with a one-line message otherwise (a file in the way, no permission, a
    read-only or virtual file system), so a command fails in its first second, not after
    hours of compute.
    """
    from optimlab.errors import UsageError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {str(path)!r} is not writable: {exc.strerror}") from None
    return path
