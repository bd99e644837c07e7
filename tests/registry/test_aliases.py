"""Aliases: set / resolve / unset, promotion with a gate (refusal, force), history, the aliases file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mimicry.registry import (
    AliasNotFoundError,
    IntegrityError,
    InvalidReferenceError,
    ModelCard,
    ModelNotFoundError,
    PromotionRefusedError,
    Registry,
)
from tests.registry import publish_toy


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path)
    for _ in range(3):
        publish_toy(registry, name="cxr-ee")
    publish_toy(registry, name="other")
    return registry


def _history(reg: Registry) -> list[dict[str, object]]:
    return [json.loads(line) for line in (reg.root / "alias_history.jsonl").read_text().splitlines()]


def test_set_and_resolve_alias(reg: Registry) -> None:
    assert reg.set_alias("cxr-ee", "production", 2) is None
    assert reg.set_alias("cxr-ee", "candidate", 3) is None
    assert reg.resolve("cxr-ee@production") == ("cxr-ee", 2)
    assert reg.resolve("cxr-ee@candidate") == ("cxr-ee", 3)
    assert reg.card("cxr-ee@production").version == 2
    assert reg.set_alias("cxr-ee", "production", 3) == 2  # returns the previous target
    assert json.loads((reg.root / "aliases.json").read_text()) == {
        "cxr-ee": {"candidate": 3, "production": 3}
    }
    assert reg.aliases("cxr-ee") == {"candidate": 3, "production": 3}
    assert reg.aliases("other") == {}
    assert reg.aliases() == {"cxr-ee": {"candidate": 3, "production": 3}}
    assert [(h["action"], h["alias"], h["version"], h["previous"]) for h in _history(reg)] == [
        ("set", "production", 2, None),
        ("set", "candidate", 3, None),
        ("set", "production", 3, 2),
    ]
    # the aliases file is a top-level file: not a model for the registry (nor for Triton)
    assert reg.models() == ["cxr-ee", "other"]


def test_alias_errors(reg: Registry) -> None:
    with pytest.raises(ModelNotFoundError, match="no version 9"):
        reg.set_alias("cxr-ee", "production", 9)
    with pytest.raises(ModelNotFoundError, match="no model 'nope'"):
        reg.set_alias("nope", "production", 1)
    for bad in ("1st", "prod uction", "", "a@b"):
        with pytest.raises(InvalidReferenceError, match="invalid alias"):
            reg.set_alias("cxr-ee", bad, 1)
    with pytest.raises(AliasNotFoundError, match="has no alias 'production'"):
        reg.resolve("cxr-ee@production")
    with pytest.raises(AliasNotFoundError):
        reg.unset_alias("cxr-ee", "production")
    assert not (reg.root / "aliases.json").exists()


def test_unset_alias(reg: Registry) -> None:
    reg.set_alias("cxr-ee", "production", 1)
    assert reg.unset_alias("cxr-ee", "production") == 1
    assert reg.aliases() == {}
    with pytest.raises(AliasNotFoundError):
        reg.resolve("cxr-ee@production")
    assert _history(reg)[-1]["action"] == "unset"


def test_promote_without_gate(reg: Registry) -> None:
    p = reg.promote("cxr-ee:2")
    assert (p.name, p.alias, p.version, p.previous, p.forced, p.gate_ok) == (
        "cxr-ee",
        "production",
        2,
        None,
        False,
        None,
    )
    p = reg.promote("cxr-ee", alias="production")  # bare name = latest
    assert (p.version, p.previous) == (3, 2)
    reg.set_alias("cxr-ee", "candidate", 1)
    p = reg.promote("cxr-ee@candidate")
    assert (p.version, p.previous) == (1, 3)
    assert reg.resolve("cxr-ee@production") == ("cxr-ee", 1)


def test_gate_refuses_and_force_overrides(reg: Registry) -> None:
    reg.promote("cxr-ee:1")
    seen: list[str] = []

    def gate(card: ModelCard) -> tuple[bool, str]:
        seen.append(card.ref)
        return card.version != 3, f"latest audit of {card.ref} failed: gaze NSS below policy"

    with pytest.raises(PromotionRefusedError, match="latest audit of cxr-ee:3 failed") as info:
        reg.promote("cxr-ee:3", gate=gate)
    assert info.value.reason == "latest audit of cxr-ee:3 failed: gaze NSS below policy"
    assert reg.resolve("cxr-ee@production") == ("cxr-ee", 1)  # unchanged

    p = reg.promote("cxr-ee:3", gate=gate, force=True)
    assert (p.version, p.previous, p.forced, p.gate_ok) == (3, 1, True, False)
    assert reg.resolve("cxr-ee@production") == ("cxr-ee", 3)

    p = reg.promote("cxr-ee:2", gate=gate)  # a passing gate
    assert (p.version, p.forced, p.gate_ok) == (2, False, True)
    assert seen == ["cxr-ee:3", "cxr-ee:3", "cxr-ee:2"]

    last_two = _history(reg)[-2:]
    assert [(h["version"], h["forced"], h["gate_ok"]) for h in last_two] == [
        (3, True, False),
        (2, False, True),
    ]
    assert last_two[0]["reason"] == "latest audit of cxr-ee:3 failed: gaze NSS below policy"


def test_damaged_version_cannot_be_promoted_even_with_force(reg: Registry) -> None:
    path = reg.root / "cxr-ee" / "2" / "model.onnx"
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(IntegrityError) as info:
        reg.promote("cxr-ee:2", force=True)
    assert info.value.artifact == "model.onnx"
    assert reg.aliases() == {}


def test_corrupt_aliases_file_is_reported(reg: Registry) -> None:
    (reg.root / "aliases.json").write_text("{not json")
    with pytest.raises(IntegrityError, match=r"aliases\.json is unreadable") as info:
        reg.resolve("cxr-ee@production")
    assert info.value.artifact == "aliases.json"
    (reg.root / "aliases.json").write_text('{"cxr-ee": {"production": "2"}}')
    with pytest.raises(IntegrityError, match="must map name -> alias -> version"):
        reg.aliases()
    report = reg.verify()
    assert not report.ok
    assert report.problems == ["aliases.json must map name -> alias -> version"]


def test_verify_reports_dangling_alias(reg: Registry) -> None:
    (reg.root / "aliases.json").write_text('{"cxr-ee": {"production": 7}}')
    report = reg.verify()
    assert report.problems == ["alias cxr-ee@production points to missing version 7"]
    assert all(c.ok for c in report.checks)
    assert reg.verify("other").ok  # a per-model verify looks at that model's aliases only
    with pytest.raises(ModelNotFoundError, match="points to missing version 7"):
        reg.resolve("cxr-ee@production")
