import json
import os

import pytest

from optimlab import atomic


def test_write_json_replaces_whole_file_and_stores_nonfinite_as_null(tmp_path):
    path = tmp_path / "sub" / "result.json"
    atomic.write_json(path, {"a": 1.5, "nan": float("nan"), "inf": [float("inf"), 2]})
    assert json.loads(path.read_text()) == {"a": 1.5, "nan": None, "inf": [None, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.txt"
    atomic.write_text(path, "old")
    with pytest.raises(RuntimeError), atomic.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.txt"]


def test_write_csv_blank_for_none(tmp_path):
    path = tmp_path / "rows.csv"
    atomic.write_csv(path, [{"a": 1, "b": None}, {"a": 2, "b": "x", "c": "ignored"}], ["a", "b"])
    assert path.read_text().splitlines() == ["a,b", "1,", "2,x"]


def test_result_files_get_ordinary_permissions(tmp_path):
    path = tmp_path / "r.json"
    atomic.write_json(path, {})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("bad", ["/proc/optimlab-x", "/etc/passwd", "/etc/passwd/sub"])
def test_ensure_output_dir_rejects_unwritable_paths_with_one_line(bad):
    from optimlab.errors import UsageError

    with pytest.raises(UsageError) as exc:
        atomic.ensure_output_dir(bad)
    assert "\n" not in str(exc.value) and bad in str(exc.value)


def test_ensure_output_dir_creates_and_leaves_no_probe(tmp_path):
    out = atomic.ensure_output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


def test_remove_temporary_files_removes_only_interrupted_writes(tmp_path):
    from optimlab.atomic import remove_temporary_files

    keep = [tmp_path / "summary.json", tmp_path / ".hidden", tmp_path / "notes.tmp"]
    stray = [tmp_path / ".summary.json.x1y2.tmp", tmp_path / ".a.png.zz.tmp"]
    for path in keep + stray:
        path.write_text("x")
    assert remove_temporary_files(tmp_path) == 2
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stray)
    assert remove_temporary_files(tmp_path / "missing") == 0


def test_remove_deletes_a_file_and_the_temporaries_of_its_killed_writes(tmp_path):
    from optimlab.atomic import remove

    target, other = tmp_path / "run.pt", tmp_path / "other.pt"
    stray = [tmp_path / ".run.pt.a1b2.tmp", tmp_path / ".run.pt.zz.tmp"]
    for path in [target, other, tmp_path / ".other.pt.q.tmp", *stray]:
        path.write_text("x")
    remove(target)
    assert not target.exists() and not any(p.exists() for p in stray)
    assert other.exists() and (tmp_path / ".other.pt.q.tmp").exists()
    remove(target)  # already gone: nothing to do
