"""Typed settings of the audit, built once at the edge (CLI) and passed down.

See docs/architecture.md, "Configuration".

Environment variables (prefix ``MIMICRY_AUDIT_``):

* ``MIMICRY_AUDIT_HISTORY_DB``: the SQLite history (embedded default ``audit-history.sqlite`` in the
  working directory);
* ``MIMICRY_AUDIT_REQUIRE_AUDIT_FOR_PROMOTION``: refuse promotion of a version that was never audited
  (default false: only a *failed* latest audit refuses);
* ``MIMICRY_AUDIT_METRICS_HOST`` / ``MIMICRY_AUDIT_METRICS_PORT``: where ``audit watch`` serves ``/metrics``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AuditSettings", "get_audit_settings"]


class AuditSettings(BaseSettings):
    """Settings of ``mimicry audit``."""

    model_config = SettingsConfigDict(env_prefix="MIMICRY_AUDIT_", extra="ignore")

    history_db: Path = Field(Path("audit-history.sqlite"), description="SQLite history database.")
    require_audit_for_promotion: bool = Field(
        False, description="Refuse to promote a version with no recorded audit (not only a failed one)."
    )
    metrics_host: str = Field("127.0.0.1", description="Address `audit watch` serves /metrics on.")
    metrics_port: int = Field(9400, ge=0, le=65535)


def get_audit_settings() -> AuditSettings:
    """Read the audit settings from the environment (call once, at the edge)."""
    return AuditSettings()
