"""The console script and ``python -m mimicry`` are the same entry point."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from mimicry import __version__
from mimicry.cli import app


def test_version_flag() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_python_dash_m_lists_subcommands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mimicry", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "data" in proc.stdout


def test_unknown_command_fails() -> None:
    result = CliRunner().invoke(app, ["no-such-command"])
    assert result.exit_code != 0
