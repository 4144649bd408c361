import argparse
import subprocess
import sys

import pytest

from optimlab import __version__
from optimlab.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ["run", "surfaces", "mnist1d", "train", "report", "status"]:
        assert command in out


def test_unknown_command_is_one_line_usage_error():
    proc = subprocess.run(
        [sys.executable, "-m", "optimlab", "frobnicate"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_an_error_raised_while_handling_ctrl_c_counts_as_the_interruption(capsys, monkeypatch):
    """Ctrl-C inside a library call can surface as another error (Optuna's journal lock
    release raises FileNotFoundError): the user still gets the resume hint and exit 130."""
    from optimlab import cli
    from optimlab.errors import interrupted

    def broken(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise FileNotFoundError(2, "No such file or directory", "study.journal.lock") from None

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands.choices["status"].set_defaults(run=broken)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["status", "x"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; rerun the same command to resume." in err and "Traceback" not in err
    assert not interrupted(FileNotFoundError()) and interrupted(KeyboardInterrupt())
