"""`optimlab train`: JSON and table output, one-line usage errors, the reference accuracy."""

import json
import subprocess
import sys

import pytest
import torch

from optimlab.cli import main


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from optimlab.mnist1d.data import load_mnist1d

    path = tmp_path_factory.getbasetemp() / "mnist1d-cache"
    load_mnist1d(path)
    return str(path)


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_json_is_one_line_on_stdout_with_progress_on_stderr(cache, capsys):
    code = main(["train", "--optimizer", "dynamic_adam", "--lr", "3e-3", "--epochs", "2",
                 "--cache-dir", cache, "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    assert len(out.splitlines()) == 1
    result = json.loads(out)
    assert 0 <= result["test_accuracy"] <= 1 and result["test_loss"] > 0
    assert result["optimizer"] == "dynamic_adam" and result["meta_source"] == "val"
    assert result["epochs_run"] == 2 and len(result["history"]) == 2
    assert result["test_loss"] == result["history"][-1]["test_loss"]
    assert result["diverged"] is False and result["reference_only"] is False
    assert "epoch 1/2" in err and "epoch 2/2" in err


def test_table_output(cache, capsys):
    code = main(["train", "--optimizer", "adam", "--lr", "1e-3", "--epochs", "1",
                 "--cache-dir", cache])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    assert "mnist1d: adam" in out and "final epoch 1/1" in out


def test_reference_variant_is_labelled(cache, capsys):
    code = main(["train", "--optimizer", "dynamic_adam_published", "--lr", "3e-3", "--epochs",
                 "1", "--cache-dir", cache, "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["reference_only"] is True
    assert "not an optimizer to use" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--optimizer", "dynamic_adam", "--lr", "1e-3", "--val-fraction", "0"],
            "val_fraction > 0",
        ),
        (["--optimizer", "adam", "--lr", "1e-3", "--meta-source", "train"], "does not apply"),
        (["--optimizer", "dynamic_adam_online", "--lr", "1e-3", "--meta-source", "val"], "apply"),
        (["--optimizer", "adam", "--lr", "1e-3", "--gate-lr", "1e-3"], "gate_lr applies only"),
        (["--optimizer", "adam", "--lr", "1e-3", "--momentum", "0.5"], "momentum applies only"),
        (["--optimizer", "adam", "--lr", "1e-3", "--device", "tpu"], "device must be"),
        (
            ["--optimizer", "adam", "--lr", "1e-2", "--val-fraction", "0.9999"],
            "--val-fraction",
        ),
        (["--optimizer", "adam", "--lr", "1e-3", "--checkpoint", "/"], "is a directory"),
    ],
)
def test_conflicting_options_are_usage_errors(cache, capsys, extra, message):
    code = main(["train", *extra, "--epochs", "1", "--cache-dir", cache])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err


@pytest.mark.parametrize(
    "extra",
    [
        ["--optimizer", "adamax", "--lr", "1e-3"],
        ["--optimizer", "adam", "--lr", "-1"],
        ["--optimizer", "adam", "--lr", "fast"],
        ["--optimizer", "adam"],
        ["--optimizer", "adam", "--lr", "1e-3", "--val-fraction", "1"],
        ["--optimizer", "adam", "--lr", "1e-3", "--epochs", "0"],
        ["--optimizer", "adam", "--lr", "1e-3", "--model", "rnn"],
        ["--optimizer", "sgd", "--lr", "1e-3", "--momentum", "1"],
        ["--optimizer", "adam", "--lr", "1e-3", "--seed", "18446744073709551616"],
        ["--optimizer", "adam", "--lr", "1e-3", "--seed", str(2**32)],
        ["--optimizer", "adam", "--lr", "1e-3", "--split-seed", "-1"],
    ],
)
def test_bad_values_are_one_line_errors(capsys, extra):
    with pytest.raises(SystemExit) as exc:
        main(["train", *extra])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_usage_error(cache, capsys):
    code = main(["train", "--optimizer", "adam", "--lr", "1e-3", "--device", "cuda",
                 "--cache-dir", cache])  # fmt: skip
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, path, message",
    [
        ("--cache-dir", "/proc/optimlab-test", "cache directory '/proc/optimlab-test' is not"),
        ("--cache-dir", "/etc/passwd", "exists and is not a directory"),
        ("--checkpoint", "/proc/optimlab-test/run.pt", "checkpoint directory '/proc/optimlab"),
        ("--checkpoint", "/etc/passwd/run.pt", "exists and is not a directory"),
    ],
)
def test_unusable_paths_fail_before_any_work(cache, monkeypatch, capsys, option, path, message):
    import optimlab.mnist1d.data
    import optimlab.mnist1d.train

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(optimlab.mnist1d.data, "load_mnist1d", no_work)
    monkeypatch.setattr(optimlab.mnist1d.train, "train", no_work)
    cache_dir = [] if option == "--cache-dir" else ["--cache-dir", cache]
    code = main(["train", "--optimizer", "adam", "--lr", "1e-3", option, path, *cache_dir])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err


def test_the_largest_seed_trains(cache):
    assert main(["train", "--optimizer", "adam", "--lr", "1e-3", "--epochs", "1",
                 "--seed", str(2**32 - 1), "--split-seed", str(2**32 - 1),
                 "--cache-dir", cache, "--json"]) == 0  # fmt: skip


def test_usage_error_from_the_shell_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "optimlab", "train", "--optimizer", "adam", "--lr", "1e-3",
         "--meta-source", "val"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_reference_accuracy_of_the_mnist1d_recipe(cache):
    """Adam, lr 1e-2, batch 100, 150 epochs on all 4000 training examples (6000 steps): the
    mnist1d paper reports 68% test accuracy for its MLP."""
    proc = subprocess.run(
        [sys.executable, "-m", "optimlab", "train", "--optimizer", "adam", "--lr", "1e-2",
         "--batch-size", "100", "--epochs", "150", "--val-fraction", "0", "--seed", "0",
         "--cache-dir", cache, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    result = json.loads(proc.stdout)
    assert 0.60 <= result["test_accuracy"] <= 0.75
