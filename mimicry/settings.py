"""Typed settings, built once at the edge (CLI / service start-up) and passed down.

Every setting can come from the environment (prefix ``MIMICRY_``, nested with ``__``), e.g.
``MIMICRY_INGEST__MAX_PIXELS=20000000`` or ``MIMICRY_INGEST__ALLOWED_MODALITIES='["CR","DX","DR"]'``.
"""

from __future__ import annotations

import secrets

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseModel):
    """What :func:`mimicry.dicom.read_dicom` accepts."""

    allowed_modalities: list[str] = Field(
        default_factory=lambda: ["CR", "DX"],
        description="DICOM Modality (0008,0060) values accepted; chest radiographs are CR or DX.",
    )
    allow_any_modality: bool = Field(
        default=False, description="Accept any modality (tests, research). Never in production."
    )
    max_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Refuse images with more than Rows*Columns pixels (a 6000x6000 film is 36 MP).",
    )
    uid_salt: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_hex(16)),
        description=(
            "Salt for the SOP Instance UID hash reported as safe metadata. Set it to a fixed secret to make "
            "hashes linkable across restarts; the default is random per process, so hashes link requests "
            "within one process only."
        ),
    )

    @field_validator("allowed_modalities")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [m.strip().upper() for m in v]


class Settings(BaseSettings):
    """Root settings object."""

    model_config = SettingsConfigDict(env_prefix="MIMICRY_", env_nested_delimiter="__", extra="ignore")

    ingest: IngestSettings = Field(default_factory=IngestSettings)


def get_settings() -> Settings:
    """Read settings from the environment (call at the edge, once)."""
    return Settings()
