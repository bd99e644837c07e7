"""``mimicry registry …`` via typer's CliRunner (the app in mimicry_cli.commands.registry)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mimicry.registry import ModelCard, Registry
from mimicry_cli.commands.registry import app, make_app
from tests.registry import publish_toy


@pytest.fixture
def root(tmp_path: Path) -> Path:
    reg = Registry(tmp_path / "reg")
    publish_toy(reg, name="cxr-ee")
    publish_toy(reg, name="cxr-ee")
    publish_toy(reg, name="baseline")
    reg.set_alias("cxr-ee", "production", 1)
    return tmp_path / "reg"


def _invoke(*args: str, env: dict[str, str] | None = None, application: object = app) -> object:
    return CliRunner().invoke(application, list(args), env=env)  # type: ignore[arg-type]


def test_list_table(root: Path) -> None:
    result = _invoke("list", "--registry", str(root))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VERSIONS", "ALIASES", "CREATED", "ARCHITECTURE"]
    assert lines[1].split()[:3] == ["baseline", "1", "-"]
    assert lines[1].split()[-1] == "toy"
    assert lines[2].split()[:3] == ["cxr-ee", "1,2", "production=1"]
    assert len(lines) == 3


def test_list_json_and_env_var(root: Path) -> None:
    result = _invoke("list", "--json", env={"MIMICRY_REGISTRY": str(root)})
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["name"], r["versions"], r["aliases"], r["latest"], r["architecture"]) for r in rows] == [
        ("baseline", [1], {}, 1, "toy"),
        ("cxr-ee", [1, 2], {"production": 1}, 2, "toy"),
    ]


def test_list_empty(tmp_path: Path) -> None:
    result = _invoke("list", "--registry", str(tmp_path / "none"))
    assert result.exit_code == 0
    assert result.stdout.strip() == f"no models in {tmp_path / 'none'}"


def test_show_prints_the_card(root: Path) -> None:
    result = _invoke("show", "cxr-ee@production", "--registry", str(root))
    assert result.exit_code == 0, result.output
    card = ModelCard.model_validate_json(result.stdout)
    assert card.ref == "cxr-ee:1"
    assert result.stdout == (root / "cxr-ee" / "1" / "card.json").read_text()


@pytest.mark.parametrize(
    ("ref", "code", "message"),
    [
        ("cxr-ee:9", 1, "has no version 9"),
        ("nope", 1, "no model 'nope'"),
        ("cxr-ee:0", 2, "invalid model reference"),
        ("cxr-ee@candidate", 1, "has no alias 'candidate'"),
    ],
)
def test_show_errors(root: Path, ref: str, code: int, message: str) -> None:
    result = _invoke("show", ref, "--registry", str(root))
    assert result.exit_code == code
    assert message in result.stderr


def test_verify_ok_then_tampered(root: Path) -> None:
    result = _invoke("verify", "--all", "--registry", str(root))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "baseline:1  ok",
        "cxr-ee:1  ok",
        "cxr-ee:2  ok",
        "all artifacts verified",
    ]
    twin = root / "cxr-ee" / "2" / "weights.safetensors"
    twin.chmod(0o644)
    data = bytearray(twin.read_bytes())
    data[-1] ^= 0xFF
    twin.write_bytes(bytes(data))
    result = _invoke("verify", "--all", "--registry", str(root))
    assert result.exit_code == 1
    assert "cxr-ee:2  FAILED" in result.stdout
    assert "artifact weights.safetensors does not match" in result.stdout
    assert result.stdout.splitlines()[-1] == "verification FAILED"
    assert _invoke("verify", "cxr-ee:1", "--registry", str(root)).exit_code == 0
    assert _invoke("verify", "cxr-ee", "--registry", str(root)).exit_code == 1
    result = _invoke("verify", "cxr-ee", "--json", "--registry", str(root))
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(c["version"], c["ok"]) for c in report["checks"]] == [(1, True), (2, False)]


def test_verify_needs_ref_or_all(root: Path) -> None:
    assert _invoke("verify", "--registry", str(root)).exit_code == 2
    assert _invoke("verify", "cxr-ee", "--all", "--registry", str(root)).exit_code == 2


def test_promote_and_alias_commands(root: Path) -> None:
    result = _invoke("promote", "cxr-ee:2", "--alias", "production", "--registry", str(root))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "cxr-ee@production -> 2 (was 1)"
    result = _invoke("alias", "set", "cxr-ee", "candidate", "1", "--registry", str(root))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "cxr-ee@candidate -> 1"
    result = _invoke("alias", "list", "--registry", str(root))
    assert json.loads(result.stdout) == {"cxr-ee": {"candidate": 1, "production": 2}}
    result = _invoke("alias", "unset", "cxr-ee", "candidate", "--registry", str(root))
    assert result.stdout.strip() == "cxr-ee@candidate removed (was 1)"
    result = _invoke("alias", "set", "cxr-ee", "candidate", "5", "--registry", str(root))
    assert result.exit_code == 1
    assert "no version 5" in result.stderr
    assert Registry(root).aliases() == {"cxr-ee": {"production": 2}}


def test_promote_gate_from_factory_and_force(root: Path) -> None:
    def factory(_reg: Registry) -> object:
        return lambda card: (False, f"audit of {card.ref} failed")

    gated = make_app(gate_factory=factory)  # type: ignore[arg-type]
    result = _invoke("promote", "cxr-ee:2", "--registry", str(root), application=gated)
    assert result.exit_code == 1
    assert "refused: audit of cxr-ee:2 failed" in result.stderr
    assert Registry(root).resolve("cxr-ee@production") == ("cxr-ee", 1)
    result = _invoke("promote", "cxr-ee:2", "--force", "--registry", str(root), application=gated)
    assert result.exit_code == 0, result.output
    assert (
        result.stdout.strip() == "cxr-ee@production -> 2 (was 1) — FORCED over gate: audit of cxr-ee:2 failed"
    )
    assert Registry(root).resolve("cxr-ee@production") == ("cxr-ee", 2)


def test_help_lists_commands() -> None:
    result = _invoke("--help")
    assert result.exit_code == 0
    for command in ("list", "show", "verify", "promote", "alias"):
        assert command in result.stdout
