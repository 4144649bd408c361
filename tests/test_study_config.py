"""StudyConfig: validation naming the bad key, stable study names, run directory rules."""

import json
from dataclasses import replace

import pytest
import torch

from optimlab.errors import UsageError
from optimlab.study import StudyConfig, final_study_name, prepare_run_dir, tune_study_name


def test_defaults_are_the_issue_protocol():
    config = StudyConfig().validate()
    assert config.optimizers == [
        "adam",
        "dynamic_adam",
        "dynamic_adam_train",
        "dynamic_adam_online",
        "sgd",
        "rmsprop",
        "adagrad",
        "dynamic_adam_published",
    ]
    assert (config.trials, config.epochs, config.seeds) == (20, 25, 5)
    assert len(set(config.final_seeds())) == 5 and config.seed not in config.final_seeds()


@pytest.mark.parametrize(
    "data, key",
    [
        ({"trails": 3}, "trails"),
        ({"trials": 0}, "trials"),
        ({"epochs": 2.5}, "epochs"),
        ({"seeds": True}, "seeds"),
        ({"val_fraction": 0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"model": "resnet"}, "model"),
        ({"meta_source": "test"}, "meta_source"),
        ({"optimizers": []}, "optimizers"),
        ({"optimizers": ["adam", "adam"]}, "optimizers"),
        ({"optimizers": ["adam", "lion"]}, "lion"),
        ({"seed": -1}, "seed"),
        ({"device": "tpu"}, "device"),
        ({"study_name": "a b"}, "study_name"),
        ({"storage": "mysql://u:pw@h/db"}, "mysql"),
    ],
)
def test_from_dict_rejects_bad_values_naming_the_key(data, key):
    with pytest.raises(UsageError, match=key) as exc:
        StudyConfig.from_dict(data)
    assert "\n" not in str(exc.value)
    assert "pw" not in str(exc.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_says_so():
    with pytest.raises(UsageError, match="^device cuda:1 requested but CUDA is not available"):
        StudyConfig(optimizers=["adam"], device="cuda:1").validate()


def test_round_trip_through_dict():
    config = StudyConfig.from_dict({"optimizers": ["sgd"], "trials": 3, "meta_source": "train"})
    assert StudyConfig.from_dict(config.to_dict()) == config


def test_run_name_depends_only_on_what_defines_the_experiment(tmp_path):
    base = StudyConfig(optimizers=["adam"], workers=1)
    same = [
        StudyConfig(optimizers=["sgd", "adam"], workers=2),
        StudyConfig(optimizers=["adam"], seeds=9, workers=1, storage=f"sqlite:///{tmp_path}/x.db"),
        StudyConfig(optimizers=["adam"], device="cuda", threads=2),
    ]
    different = [
        StudyConfig(optimizers=["adam"], epochs=24),
        StudyConfig(optimizers=["adam"], trials=21),
        StudyConfig(optimizers=["adam"], seed=1),
        StudyConfig(optimizers=["adam"], meta_source="train"),
        StudyConfig(optimizers=["adam"], val_fraction=0.3),
        StudyConfig(optimizers=["adam"], model="cnn"),
    ]
    assert base.run_name().startswith("mnist1d-")
    assert all(c.run_name() == base.run_name() for c in same)
    assert len({c.run_name() for c in different} | {base.run_name()}) == len(different) + 1
    assert StudyConfig(study_name="mine").run_name() == "mine"
    assert tune_study_name("r", "adam") == "r-adam-tune"
    assert final_study_name("r", "adam") == "r-adam-final"


def test_password_never_written(tmp_path, monkeypatch):
    # prepare_run_dir opens the storage first: stand in for the (unreachable) server
    monkeypatch.setattr("optimlab.storage.open_storage", lambda url, **kwargs: None)
    config = StudyConfig(optimizers=["adam"], storage="postgresql://me:hunter2@db.example/optuna")
    prepare_run_dir(config, tmp_path / "run")
    text = (tmp_path / "run" / "config.json").read_text()
    assert "hunter2" not in text and "me:***@db.example" in text


def test_run_dir_rules(tmp_path):
    config = StudyConfig(optimizers=["adam"], trials=2, workers=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_run_dir(config, empty)  # an existing empty directory is used as is
    saved = json.loads((empty / "config.json").read_text())
    assert saved["config"] == config.to_dict()
    assert saved["resolved"]["run_name"] == config.run_name()
    assert saved["resolved"]["storage"].endswith("study.db")
    prepare_run_dir(config, empty)  # same config: resume
    prepare_run_dir(replace(config, heartbeat_interval=3, grace_period=30), empty)
    with pytest.raises(UsageError, match=r"different config \(workers: 1 there, 2 now\)"):
        prepare_run_dir(replace(config, workers=2), empty)  # another default store
    with pytest.raises(UsageError, match=r"different config \(trials: 2 there, 3 now\)"):
        prepare_run_dir(StudyConfig(optimizers=["adam"], trials=3, workers=1), empty)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an empty directory"):
        prepare_run_dir(config, busy)


def test_parallel_default_store_is_a_journal_and_sqlite_takes_one_worker(tmp_path):
    assert StudyConfig(optimizers=["adam"], workers=2).storage_url(tmp_path).startswith("journal")
    assert StudyConfig(optimizers=["adam"], workers=1).storage_url(tmp_path).startswith("sqlite")
    with pytest.raises(UsageError, match="SQLite is not safe for several writers"):
        StudyConfig(workers=2, storage="sqlite:///s.db").validate()
    StudyConfig(workers=2, storage="journal:///s.journal").validate()


def test_heartbeat_settings_are_checked():
    defaults = StudyConfig()
    assert (defaults.workers, defaults.heartbeat_interval, defaults.grace_period) == (1, 2, 10)
    with pytest.raises(UsageError, match="grace_period"):
        StudyConfig(heartbeat_interval=5, grace_period=5).validate()
    with pytest.raises(UsageError, match="heartbeat_interval"):
        StudyConfig(heartbeat_interval=0).validate()


def test_resuming_removes_what_killed_writes_left(tmp_path):
    config = StudyConfig(optimizers=["adam"], trials=2)
    run = tmp_path / "run"
    prepare_run_dir(config, run)
    (run / "checkpoints").mkdir()
    stray = [run / ".summary.json.abc.tmp", run / "checkpoints" / ".x.pt.def.tmp"]
    for path in stray:
        path.write_text("partial")
    prepare_run_dir(config, run)
    assert not any(p.exists() for p in stray) and (run / "config.json").exists()
