"""Typed errors of the audit (docs/audit.md). Messages never quote case identifiers or patient data."""

from __future__ import annotations

__all__ = [
    "AuditError",
    "CheckInputError",
    "HistoryError",
    "PolicyError",
    "ReferenceDataError",
]


class AuditError(Exception):
    """Base class of every audit error."""


class PolicyError(AuditError, ValueError):
    """The policy file is missing, not YAML, or does not match the policy schema."""


class ReferenceDataError(AuditError):
    """The reference store cannot be read or holds no usable case for a check."""


class CheckInputError(AuditError, ValueError):
    """A check was called with inconsistent inputs (shapes, too few cases or models)."""


class HistoryError(AuditError):
    """The history database is unreadable or has an unexpected schema."""
