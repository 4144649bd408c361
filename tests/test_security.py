"""Integrity and security: the HTML report escapes foreign text, storage passwords are never
shown or written, loading never unpickles, and test data never reaches tuning or meta batches."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import optimlab
from optimlab import results as results_module
from optimlab import storage as storage_module
from optimlab import study_status
from optimlab.cli import main
from optimlab.mnist1d import data as data_module
from optimlab.mnist1d import train as train_module
from optimlab.report import build_report

SRC = Path(optimlab.__file__).parent
TINY = ["--optimizers", "adam", "--trials", "1", "--epochs", "1", "--seeds", "1"]
PAYLOAD = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_main(["mnist1d", *TINY, "--out", str(out)]) == 0
    return out


# --- the HTML report ------------------------------------------------------------------------


def _inject(run: Path) -> None:
    """Put markup into every string of the result files that comes from outside the code:
    the stored config (storage URL, study name), optimizer names and descriptions from the
    storage, hyperparameter names, the verdict, and the trials table."""
    config = json.loads((run / "config.json").read_text())
    config["config"]["storage"] = f"sqlite:///{PAYLOAD}.db"
    config["config"]["device"] = IMG
    (run / "config.json").write_text(json.dumps(config))
    summary = json.loads((run / "summary.json").read_text())
    summary["run_name"] = PAYLOAD
    summary["verdict"]["headline"] = PAYLOAD
    summary["verdict"]["findings"] = [IMG, PAYLOAD]
    entry = summary["optimizers"].pop("adam")
    entry["description"] = PAYLOAD
    entry["tuning"]["best_params"] = {IMG: 0.1}
    entry["importances"] = {PAYLOAD: 1.0}
    summary["optimizers"][IMG] = entry
    (run / "summary.json").write_text(json.dumps(summary))
    for name in ("trials.csv", "finals.csv", "curves.csv", "importances.csv"):
        path = run / name
        lines = path.read_text().splitlines(keepends=True)
        path.write_text(lines[0] + "".join(f'"{IMG}"' + x[len("adam") :] for x in lines[1:]))


def test_the_html_report_escapes_every_foreign_string(finished_run, tmp_path):
    run = tmp_path / IMG.replace("/", "")  # a run directory whose name is markup
    shutil.copytree(finished_run, run)
    _inject(run)
    build_report(run)
    page = (run / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the payloads reached the page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    lowered = page.lower()
    assert "<script" not in lowered and "<img src=x" not in lowered
    assert "onerror=alert" not in lowered.replace("&lt;img src=x onerror=alert", "")


# --- passwords ------------------------------------------------------------------------------

PASSWORD = "hunter2-Pw9"


def _scan(root: Path) -> list[str]:
    """Files under `root` whose bytes contain the password."""
    return [str(p) for p in root.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://alice:{PASSWORD}@127.0.0.1:1/optimlab",
        f"postgresql://alice@127.0.0.1:1/optimlab?password={PASSWORD}",
    ],
    ids=["userinfo", "query"],
)
def test_an_unreachable_server_never_shows_the_password(url, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (
        ["mnist1d", *TINY, "--storage", url, "--out", "run"],
        ["status", "--storage", url],
        ["report", "new", "--storage", url],
        ["--debug", "status", "--storage", url],
    ):
        assert run_main(argv) == 1
        captured = capsys.readouterr()
        assert PASSWORD not in captured.out + captured.err
        assert "***" in captured.err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("OPTIMLAB_STORAGE", url)
    assert run_main(["status"]) == 1
    assert PASSWORD not in capsys.readouterr().err


def test_a_study_on_a_password_storage_writes_the_password_nowhere(tmp_path, capfd, monkeypatch):
    """The study runs on a PostgreSQL URL served by an SQLite file (no server in the tests):
    every file of the run directory, the store itself and all output are scanned."""
    url = f"postgresql://alice:{PASSWORD}@db.example:5432/optimlab"
    store = f"sqlite:///{tmp_path / 'store.db'}"
    real_open = storage_module.open_storage
    opened = []

    def open_storage(target, **kwargs):
        assert target == url
        opened.append(target)
        return real_open(store, **kwargs)

    monkeypatch.setattr(storage_module, "open_storage", open_storage)
    monkeypatch.setattr(results_module, "open_storage", open_storage)
    monkeypatch.setattr(study_status, "open_storage", open_storage)
    run = tmp_path / "run"
    assert run_main(["mnist1d", *TINY, "--storage", url, "--out", str(run)]) == 0
    assert run_main(["status", "--storage", url]) == 0
    assert run_main(["report", str(tmp_path / "again"), "--storage", url]) == 0
    assert (
        opened and (run / "report.html").is_file() and (tmp_path / "again" / "report.md").exists()
    )
    captured = capfd.readouterr()
    assert PASSWORD not in captured.out + captured.err
    assert _scan(tmp_path) == []  # run dirs, report dirs, the store with the studies' config
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["storage"] == "postgresql://alice:***@db.example:5432/optimlab"


# --- never unpickle -------------------------------------------------------------------------


def _calls(attribute: str, owners: set[str]) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == attribute
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in owners
            ):
                found.append((path, node))
    return found


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else "dynamic"
    return None


def test_every_torch_load_is_weights_only():
    calls = _calls("load", {"torch"})
    assert calls  # the checkpoint loader at least
    for path, call in calls:
        assert _keyword(call, "weights_only") is True, f"{path}:{call.lineno}"


def test_every_numpy_load_refuses_pickles():
    calls = _calls("load", {"np", "numpy"})
    assert calls
    for path, call in calls:
        assert _keyword(call, "allow_pickle") in (False, None), f"{path}:{call.lineno}"


def test_no_pickle_module_in_the_package():
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"pickle", "dill", "cloudpickle", "joblib"}, path


class Exploit:
    """Unpickling this creates the directory `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_malicious_checkpoint_is_not_executed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data_module, "generate_mnist1d", _fake_arrays)
    monkeypatch.setenv("OPTIMLAB_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    for name, save in (("zip.pt", torch.save), ("legacy.pt", pickle.dump)):
        checkpoint = tmp_path / name
        with open(checkpoint, "wb") as f:
            save({"format": 1, "model": Exploit(marker)}, f)
        argv = ["train", "--optimizer", "adam", "--lr", "0.01", "--epochs", "1"]
        assert run_main([*argv, "--checkpoint", str(checkpoint)]) == 1
        assert not marker.exists()
        assert str(checkpoint) in capsys.readouterr().err


def test_a_malicious_cache_is_not_executed(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    arrays = _fake_arrays()
    evil = np.empty(1, dtype=object)
    evil[0] = Exploit(marker)
    np.savez(tmp_path / data_module.CACHE_NAME, **{**arrays, "x": evil}, sha256=np.array("0"))
    monkeypatch.setattr(data_module, "generate_mnist1d", _fake_arrays)
    loaded = data_module.load_mnist1d(tmp_path)
    assert not marker.exists()
    assert loaded["x"].dtype == np.float32 and "regenerating" in capsys.readouterr().err


def _fake_arrays() -> dict[str, np.ndarray]:
    arrays = {n: np.zeros(s, dtype=data_module.DTYPES[n]) for n, s in data_module.SHAPES.items()}
    arrays["y"][:] = np.arange(4000) % 10
    arrays["x"][:] = np.random.default_rng(0).normal(size=(4000, 40))
    arrays["x_test"][:] = np.random.default_rng(1).normal(size=(1000, 40))
    return arrays


# --- no test data in tuning or meta batches -------------------------------------------------


@pytest.mark.parametrize("source", ["val", "train"])
def test_meta_batches_never_come_from_the_test_set(source, monkeypatch):
    """Every meta batch of a lookahead variant, with the test set loaded (final runs), holds
    only examples of the source split, none of the test set."""
    arrays = _fake_arrays()
    splits = data_module.make_splits(arrays, val_fraction=0.2, seed=0)
    seen = []
    real_make_step = train_module.make_step

    def spy(config, model, optimizer):
        step = real_make_step(config, model, optimizer)

        def recorded(x, y, xm, ym):
            seen.append(xm.clone())
            return step(x, y, xm, ym)

        return recorded

    monkeypatch.setattr(train_module, "make_step", spy)
    config = train_module.TrainConfig("dynamic_adam", lr=1e-3, epochs=1, meta_source=source)
    train_module.train(config, splits)
    assert len(seen) == 32  # one meta batch per step
    rows = {tuple(r) for r in torch.cat(seen).tolist()}
    source_x = splits.x_val if source == "val" else splits.x_train
    assert rows <= {tuple(r) for r in source_x.tolist()}
    assert not rows & {tuple(r) for r in splits.x_test.tolist()}
