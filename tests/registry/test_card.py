"""ModelCard schema, its seal, and code_version without git."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from mimicry import __version__
from mimicry.preprocess import PreprocessSpec
from mimicry.registry import INTENDED_USE, ModelCard, ReferenceStats, code_version
from mimicry.registry import card as card_module
from mimicry.registry.card import check_card_seal, seal_card

SHA = "0123456789abcdef" * 4


def _fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "cxr-ee",
        "version": 1,
        "architecture": "toy",
        "cam_layer": "block3",
        "class_names": ["Normal", "CHF", "pneumonia"],
        "preprocessing": PreprocessSpec(size=32),
        "artifacts": {"model.onnx": SHA, "weights.safetensors": SHA},
        "created_at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "code_version": {"mimicry": "0.1.0", "git_commit": None, "torch": "2.13.0", "python": "3.11.7"},
    }
    base.update(overrides)
    return base


def test_minimal_card_defaults() -> None:
    card = ModelCard(**_fields())
    assert card.schema_version == 1
    assert card.intended_use == INTENDED_USE == "research use; not for clinical decisions"
    assert card.arch_kwargs == {}
    assert card.metrics == {}
    assert (card.uncertainty, card.reference_stats, card.onnx, card.parity, card.iba_stats) == (None,) * 5
    assert card.ref == "cxr-ee:1"
    assert card.black_level == -2.0


def test_round_trip_json() -> None:
    card = ModelCard(
        **_fields(
            metrics={"auc": 0.8},
            reference_stats=ReferenceStats(n_samples=10, image_mean=0.1, custom=[1, 2]),
            iba_stats={"layer": "block2"},
            extra={"k": [1, "x"]},
        )
    )
    again = ModelCard.model_validate_json(card.to_json())
    assert again == card
    assert again.reference_stats is not None
    assert again.reference_stats.model_extra == {"custom": [1, 2]}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ".hidden"}, "name"),
        ({"name": "a:b"}, "name"),
        ({"version": 0}, "version"),
        ({"class_names": []}, "class_names"),
        ({"artifacts": {"model.onnx": "XYZ"}}, "artifacts"),
        ({"created_at": datetime(2024, 1, 1)}, "created_at"),  # naive
        ({"schema_version": 2}, "schema_version"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"uncertainty": {"abstain_threshold": -0.1}}, "uncertainty"),
    ],
)
def test_invalid_cards_are_refused(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModelCard(**_fields(**overrides))
    assert field in str(info.value)


def test_non_finite_metrics_become_null() -> None:
    card = ModelCard(**_fields(metrics={"a": float("nan"), "b": float("inf"), "c": 1.5}))
    assert card.metrics == {"a": None, "b": None, "c": 1.5}
    assert json.loads(card.to_json())["metrics"] == {"a": None, "b": None, "c": 1.5}


def test_card_is_frozen() -> None:
    card = ModelCard(**_fields())
    with pytest.raises(ValidationError):
        card.version = 2  # type: ignore[misc]


def test_seal_covers_every_byte() -> None:
    card = ModelCard(
        **_fields(extra={"card_sha256": "0" * 64})
    )  # a nested key of the same name is not the seal
    raw = seal_card(card)
    assert check_card_seal(raw) is None
    sealed = ModelCard.model_validate_json(raw)
    assert sealed.card_sha256 is not None
    assert sealed.card_sha256 != "0" * 64
    assert sealed.model_copy(update={"card_sha256": None}) == card
    for i in range(0, len(raw), 7):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        assert check_card_seal(bytes(tampered)) is not None, f"byte {i} not covered"
    assert check_card_seal(card.to_json().encode()) == "its card_sha256 seal is missing or duplicated"


def test_code_version_reads_git_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIMICRY_GIT_COMMIT", "f" * 40)
    cv = code_version()
    assert cv.mimicry == __version__
    assert cv.git_commit == "f" * 40


def test_code_version_without_git_never_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIMICRY_GIT_COMMIT", raising=False)

    def no_git(*_a: object, **_k: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(card_module.subprocess, "run", no_git)
    assert code_version().git_commit is None

    def not_a_repo(*_a: object, **_k: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(["git"], 128, stdout="", stderr="fatal: not a git repository")

    monkeypatch.setattr(card_module.subprocess, "run", not_a_repo)
    assert code_version().git_commit is None
