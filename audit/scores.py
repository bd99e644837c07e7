"""The per-case score type shared by the audit runner and the history (no dependencies, so both import it).

A case's scores are one :class:`CaseScores`: the class name the map explains and its :class:`Score` rows, one
per (check, metric). They are NamedTuples, so they unpack like the ``(class, [(check, metric, value)])``
tuples the history stores.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CaseScores", "Score"]


class Score(NamedTuple):
    """One metric value of one case: ``check`` (e.g. ``gaze``), ``metric`` (e.g. ``nss``), ``value``."""

    check: str
    metric: str
    value: float


class CaseScores(NamedTuple):
    """All per-case scores of one (model, method, case): ``cls``, the explained class's name, and ``rows``."""

    cls: str
    rows: list[Score]
