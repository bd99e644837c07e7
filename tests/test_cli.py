"""The console script (``mimicry_cli.main:app``) and ``python -m mimicry_cli`` are the same entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mimicry import __version__
from mimicry_cli.main import app

ROOT = Path(__file__).resolve().parents[1]

#: Modules whose import costs seconds of CPU: a help screen must not load them.
HEAVY_MODULES = ("torch", "bentoml", "captum", "onnxruntime")

_HELP_PROBE = """
import json, sys
from mimicry_cli.main import app
try:
    app(args=sys.argv[1:], prog_name="mimicry")
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.stdin.read())))
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def test_version_flag() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_python_dash_m_lists_subcommands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mimicry_cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("data", "registry", "audit", "serve", "train", "export", "stack", "bench"):
        assert command in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["registry", "--help"], ["stack", "--help"], ["serve", "--help"], ["data", "--help"]],
    ids=lambda a: " ".join(a),
)
def test_help_imports_no_heavy_module(argv: list[str]) -> None:
    """Help screens load Typer and the command modules only: torch, BentoML, captum and ONNX Runtime are
    imported by the commands that use them, when they run."""
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE, *argv],
        input=json.dumps(HEAVY_MODULES),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["code"] == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert result["heavy"] == []


def test_audit_is_the_audit_apps_own_command_group() -> None:
    """``mimicry audit …`` hands its arguments to ``audit.cli``'s app (loaded when the command runs)."""
    result = CliRunner().invoke(app, ["audit", "--help"])
    assert result.exit_code == 0, result.output
    for command in ("run", "history", "watch"):
        assert command in result.stdout
    bad = CliRunner().invoke(app, ["audit", "no-such-command"])
    assert bad.exit_code == 2


def test_unknown_command_fails() -> None:
    result = CliRunner().invoke(app, ["no-such-command"])
    assert result.exit_code != 0


def test_registry_promote_goes_through_the_audit_gate(tmp_path: Path) -> None:
    """The composition root builds ``registry`` with the audit's promotion gate (loaded when promote runs):
    with an audit required and none recorded, promotion is refused; ``--force`` overrides it."""
    from mimicry.registry import Registry
    from tests.registry import publish_toy

    root = tmp_path / "registry"
    publish_toy(Registry(root), "cxr-toy")
    env = {
        "MIMICRY_AUDIT_HISTORY_DB": str(tmp_path / "history.sqlite"),
        "MIMICRY_AUDIT_REQUIRE_AUDIT_FOR_PROMOTION": "true",
    }
    args = ["registry", "promote", "cxr-toy:1", "--registry", str(root)]
    refused = CliRunner().invoke(app, args, env=env)
    assert refused.exit_code == 1, refused.output
    assert "no audit history" in refused.output
    forced = CliRunner().invoke(app, [*args, "--force"], env=env)
    assert forced.exit_code == 0, forced.output
    assert Registry(root).aliases("cxr-toy") == {"production": 1}
