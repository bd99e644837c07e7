"""The promotion gate: ``mimicry registry promote`` refuses a version whose latest audit failed.

:func:`make_gate_factory` returns the ``gate_factory(registry) -> gate`` that
:func:`mimicry_cli.commands.registry.make_app` takes; the gate reads the audit history (:class:`AuditSettings`
``history_db``) and looks up the latest *finished* run of exactly that version's artifacts (sha256). A failed
(or errored) latest audit refuses; so does a missing audit when ``require_audit_for_promotion`` is set.
``--force`` overrides the refusal and the registry records it in ``alias_history.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from audit.history import History
from audit.runner import model_sha256
from audit.settings import AuditSettings
from mimicry.registry import ModelCard, Registry

__all__ = ["audit_gate", "make_gate_factory"]

Gate = Callable[[ModelCard], tuple[bool, str]]


def audit_gate(history_db: Path | str, *, require_audit: bool = False) -> Gate:
    """A ``gate(card) -> (ok, reason)`` backed by the history at ``history_db``."""

    def gate(card: ModelCard) -> tuple[bool, str]:
        path = Path(history_db)
        if not path.is_file():
            return (not require_audit, "no audit history")
        with History(path) as h:
            run = h.latest_finished(card.name, card.version, model_sha256(card))
        if run is None:
            return (not require_audit, "no finished audit of this version")
        if run.passed:
            return True, f"latest audit (run {run.id}) passed"
        return False, f"latest audit (run {run.id}) {run.status}"

    return gate


def make_gate_factory(settings: AuditSettings | None = None) -> Callable[[Registry], Gate]:
    """``gate_factory`` for :func:`mimicry_cli.commands.registry.make_app` (settings read once, at the
    edge)."""
    s = settings or AuditSettings()

    def factory(_registry: Registry) -> Gate:
        return audit_gate(s.history_db, require_audit=s.require_audit_for_promotion)

    return factory
