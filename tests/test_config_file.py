"""`--config FILE.toml` on mnist1d, surfaces and run: precedence, one-line errors naming the
key, and the resolved config.toml that reproduces a run."""

import json
import subprocess
import sys
import tomllib

import pytest

from optimlab import config_file
from optimlab.cli import build_parser, main
from optimlab.commands.mnist1d import study_config
from optimlab.commands.run import run_configs
from optimlab.commands.surfaces import surfaces_config
from optimlab.study import StudyConfig

TINY_SURFACES = ["--functions", "sphere,booth", "--optimizers", "adam,sgd", "--steps", "30",
                 "--starts", "3", "--tune-trials", "4", "--tune-starts", "2"]  # fmt: skip


def toml(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def parse(*argv):
    return build_parser().parse_args(list(argv))


# --- precedence: defaults < --quick < file < command line ------------------------------------


def test_surfaces_precedence(tmp_path):
    path = toml(tmp_path, 'steps = 77\nnoise = 1\nfunctions = ["rosenbrock"]\n')
    config = surfaces_config(parse("surfaces", "--config", path, "--quick", "--noise", "0.5"))
    assert config.steps == 77  # the file beats --quick
    assert config.starts == 8 and config.tune_trials == 8  # --quick beats the defaults
    assert config.noise == 0.5  # the command line beats the file
    assert config.functions == ["rosenbrock"] and config.tol == 0.01 and config.seed == 0
    assert isinstance(surfaces_config(parse("surfaces", "--config", path)).noise, float)


def test_quick_in_a_file_is_the_quick_preset(tmp_path):
    path = toml(tmp_path, "quick = true\nstarts = 5\n")
    config = surfaces_config(parse("surfaces", "--config", path))
    assert (config.steps, config.starts, config.tune_trials) == (200, 5, 8)
    study = study_config(parse("mnist1d", "--config", toml(tmp_path, "quick = true\nseeds = 3")))
    assert (study.trials, study.epochs, study.seeds) == (4, 3, 3)


def test_no_tune_in_a_file_is_zero_trials_and_allows_lr(tmp_path):
    path = toml(tmp_path, "tune_trials = 0\nlr = 0.01\nmomentum = 0.5\n")
    config = surfaces_config(parse("surfaces", "--config", path, "--optimizers", "sgd,adam"))
    assert config.hyperparameters() == {"sgd": {"lr": 0.01, "momentum": 0.5}, "adam": {"lr": 0.01}}
    tuned = toml(tmp_path, "lr = 0.01\n", "tuned.toml")  # the command line turns tuning off
    assert surfaces_config(parse("surfaces", "--config", tuned, "--no-tune")).lr == 0.01


def test_mnist1d_precedence_and_storage(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMLAB_STORAGE", "sqlite:///env.db")
    path = toml(tmp_path, 'trials = 9\nepochs = 7\nmodel = "cnn"\nstorage = "sqlite:///f.db"\n')
    config = study_config(parse("mnist1d", "--config", path, "--quick", "--epochs", "2"))
    assert (config.trials, config.epochs, config.seeds, config.model) == (9, 2, 2, "cnn")
    assert config.storage == "sqlite:///f.db"  # the file beats $OPTIMLAB_STORAGE
    other = study_config(parse("mnist1d", "--config", path, "--storage", "sqlite:///o.db"))
    assert other.storage == "sqlite:///o.db"
    assert study_config(parse("mnist1d")).storage == "sqlite:///env.db"


def test_run_file_layout_and_precedence(tmp_path):
    path = toml(
        tmp_path,
        "seed = 5\nquick = true\n[surfaces]\nsteps = 40\n[mnist1d]\ntrials = 3\n"
        'optimizers = ["adam", "sgd"]\n',
    )
    surfaces, study = run_configs(parse("run", "--config", path))
    assert surfaces.seed == study.seed == 5
    assert (surfaces.steps, surfaces.starts) == (40, 8)  # file, then quick
    assert (study.trials, study.epochs, study.optimizers) == (3, 3, ["adam", "sgd"])
    surfaces, study = run_configs(parse("run", "--config", path, "--seed", "7", "--workers", "2"))
    assert surfaces.seed == study.seed == 7 and study.workers == 2
    defaults = run_configs(parse("run"))
    assert defaults[0] == config_file.SurfacesConfig() and defaults[1] == StudyConfig()


# --- errors: one line, exit 2, the key named, nothing written --------------------------------

BAD = [
    # (command, file text, expected in the message)
    ("surfaces", 'steps = "20"', "config key 'steps': expected an integer >= 1, got '20'"),
    ("surfaces", "steps = true", "config key 'steps': expected an integer >= 1, got True"),
    ("surfaces", "steps = 2.5", "config key 'steps': expected an integer >= 1, got 2.5"),
    ("surfaces", "starts = 0", "config key 'starts': expected an integer >= 1, got 0"),
    ("surfaces", "stepz = 3", "unknown config key 'stepz'; valid: functions, lr, momentum"),
    ("surfaces", "[steps]\na = 1", "config key 'steps': expected an integer >= 1, got a table"),
    ("surfaces", "noise = -1.0", "config key 'noise': expected a number >= 0, got -1.0"),
    ("surfaces", "noise = nan", "config key 'noise': expected a number >= 0, got nan"),
    ("surfaces", "seed = 4294967296", "config key 'seed': expected an integer in [0, 4294967295]"),
    ("surfaces", 'functions = ["sphere", "nope"]', "unknown function 'nope'; valid: sphere"),
    ("surfaces", 'optimizers = "adam"', "config key 'optimizers': expected a non-empty list"),
    ("surfaces", "lr = 0.1", "config key 'lr': only without tuning (tune_trials = 0)"),
    ("surfaces", "tune_trials = 0\nmomentum = 1.0", "config key 'momentum': expected a number in"),
    ("surfaces", "quick = 1", "config key 'quick': expected true or false, got 1"),
    ("surfaces", "steps = 3\nsteps = 4", "TOML syntax error: Cannot overwrite a value (at line 2"),
    ("surfaces", "steps = ", "TOML syntax error: Invalid value (at line 1, column 9)"),
    ("mnist1d", "trials = true", "config key 'trials': expected an integer >= 1, got True"),
    ("mnist1d", "trials = 0", "config key 'trials': expected an integer >= 1, got 0"),
    ("mnist1d", "trails = 3", "unknown config key 'trails'; valid: batch_size, device"),
    ("mnist1d", 'model = "rnn"', "config key 'model': expected one of mlp, cnn, got 'rnn'"),
    ("mnist1d", "val_fraction = 0", "config key 'val_fraction': expected a number in (0, 1)"),
    ("mnist1d", 'storage = "mysql://u:secret@h/db"', "unsupported storage URL"),
    ("mnist1d", 'optimizers = ["adam", "lion"]', "unknown optimizer 'lion'"),
    ("run", "sed = 1", "unknown config key 'sed'; valid: mnist1d, quick, seed, surfaces"),
    ("run", "seed = -1", "config key 'seed': expected an integer in [0, 4294967295], got -1"),
    ("run", "surfaces = 3", "config key 'surfaces': expected a table [surfaces], got 3"),
    ("run", "[surfaces]\nseed = 1", "config key 'surfaces.seed': give seed at the top level"),
    ("run", "[surfaces]\nsteps = 0", "[surfaces]: config key 'steps': expected an integer >= 1"),
    ("run", "[mnist1d]\nepochs = 1.5", "[mnist1d]: config key 'epochs': expected an integer"),
    ("run", "[mnist1d]\nmodl = 1", "[mnist1d]: unknown config key 'modl'"),
]


@pytest.mark.parametrize(("command", "text", "expected"), BAD)
def test_bad_config_files_are_one_line_errors(command, text, expected, tmp_path, capsys):
    path = toml(tmp_path, text + "\n")
    out = tmp_path / "out"
    assert main([command, "--config", path, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert "secret" not in err
    assert not out.exists()


def test_a_file_error_names_the_file(tmp_path, capsys):
    path = toml(tmp_path, "steps = 0\n")
    assert main(["surfaces", "--config", path, "--out", str(tmp_path / "out")]) == 2
    assert f"error: {path}: config key 'steps'" in capsys.readouterr().err


def test_the_command_line_can_repair_a_file_value(tmp_path):
    path = toml(tmp_path, "heartbeat_interval = 20\n")  # not below the default grace period
    with pytest.raises(Exception, match="grace_period"):
        study_config(parse("mnist1d", "--config", path))
    assert study_config(parse("mnist1d", "--config", path, "--grace-period", "30")).grace_period


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("missing.toml", "config file '{dir}/missing.toml' does not exist"),
        ("", "config file '{dir}' is not readable: Is a directory"),
    ],
)
def test_missing_and_unreadable_files(path, expected, tmp_path, capsys):
    assert main(["mnist1d", "--config", str(tmp_path / path).rstrip("/")]) == 2
    assert expected.format(dir=tmp_path) in capsys.readouterr().err


def test_no_traceback_from_the_real_command(tmp_path):
    path = toml(tmp_path, "[mnist1d]\ntrials = true\n")
    proc = subprocess.run(
        [sys.executable, "-m", "optimlab", "run", "--config", path, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("config key 'trials': expected an integer >= 1, got True")
    assert not (tmp_path / "o").exists()


# --- the resolved config ---------------------------------------------------------------------


def test_surfaces_resolved_config_reproduces_the_run(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["surfaces", *TINY_SURFACES, "--noise", "0.1", "--out", str(first)]) == 0
    resolved = tomllib.loads((first / "config.toml").read_text())
    assert resolved == {
        "functions": ["sphere", "booth"], "optimizers": ["adam", "sgd"], "steps": 30,
        "starts": 3, "tune_trials": 4, "tune_starts": 2, "noise": 0.1, "tol": 0.01, "seed": 0,
    }  # fmt: skip
    assert main(["surfaces", "--config", str(first / "config.toml"), "--out", str(second)]) == 0
    for name in ["summary.json", "tuning.json", "summary.md", "config.toml"]:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_mnist1d_resolved_config_reproduces_the_run(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    tiny = ["--optimizers", "adam,sgd", "--trials", "2", "--epochs", "1", "--seeds", "1"]
    assert main(["mnist1d", *tiny, "--out", str(first)]) == 0
    resolved = tomllib.loads((first / "config.toml").read_text())
    expected = {k: v for k, v in StudyConfig(**resolved).to_dict().items() if v is not None}
    assert resolved == expected and resolved["trials"] == 2 and "storage" not in resolved
    assert set(resolved) == {k for k, v in StudyConfig().to_dict().items() if v is not None}
    assert main(["mnist1d", "--config", str(first / "config.toml"), "--out", str(second)]) == 0
    summaries = [json.loads((d / "summary.json").read_text()) for d in (first, second)]
    assert summaries[0] == summaries[1]  # no timing fields in summary.json


def test_a_storage_password_never_reaches_the_resolved_config(tmp_path):
    config = StudyConfig(storage="postgresql://alice:s3cret@db.example/optuna", trials=3)
    config_file.write_study(tmp_path / "config.toml", config)
    text = (tmp_path / "config.toml").read_text()
    assert "s3cret" not in text and "alice:***@db.example" in text
    assert "pass it again with --storage or $OPTIMLAB_STORAGE" in text
    data = tomllib.loads(text)
    assert "storage" not in data and data["trials"] == 3
    config_file.write_run(tmp_path / "run.toml", config_file.SurfacesConfig(), config)
    text = (tmp_path / "run.toml").read_text()
    assert "s3cret" not in text and "storage" not in tomllib.loads(text)["mnist1d"]
    plain = StudyConfig(storage="sqlite:///runs/x.db")
    config_file.write_study(tmp_path / "plain.toml", plain)
    assert tomllib.loads((tmp_path / "plain.toml").read_text())["storage"] == plain.storage


def test_run_writes_a_resolved_config_that_gives_the_same_configs(tmp_path, monkeypatch):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("optimlab.commands.run.run_surfaces", stop)
    path = toml(tmp_path, "seed = 4\n[surfaces]\nsteps = 40\n[mnist1d]\nepochs = 2\n")
    out = tmp_path / "run"
    assert main(["run", "--config", path, "--workers", "2", "--out", str(out)]) == 130
    resolved = out / "config.toml"
    data = tomllib.loads(resolved.read_text())
    assert data["seed"] == 4 and "seed" not in data["surfaces"] and "seed" not in data["mnist1d"]
    assert data["surfaces"]["steps"] == 40 and data["mnist1d"]["workers"] == 2
    original = run_configs(parse("run", "--config", path, "--workers", "2"))
    assert run_configs(parse("run", "--config", str(resolved))) == original
