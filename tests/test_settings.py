"""Settings come from the environment, typed and validated."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mimicry.settings import IngestSettings, Settings


def test_defaults_allow_only_radiographs() -> None:
    s = Settings()
    assert s.ingest.allowed_modalities == ["CR", "DX"]
    assert s.ingest.allow_any_modality is False


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIMICRY_INGEST__MAX_PIXELS", "1234")
    monkeypatch.setenv("MIMICRY_INGEST__ALLOWED_MODALITIES", '["dx", " cr ", "DR"]')
    s = Settings()
    assert s.ingest.max_pixels == 1234
    assert s.ingest.allowed_modalities == ["DX", "CR", "DR"]


def test_invalid_limit_is_refused() -> None:
    with pytest.raises(ValidationError):
        IngestSettings(max_pixels=0)


def test_default_salt_is_random_per_instance_and_secret() -> None:
    a, b = IngestSettings(), IngestSettings()
    assert a.uid_salt.get_secret_value() != b.uid_salt.get_secret_value()
    assert a.uid_salt.get_secret_value() not in repr(a)
