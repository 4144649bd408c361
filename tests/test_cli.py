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
