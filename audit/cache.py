"""The per-case score cache: scores of (model sha256, method, case) already in the history are reused.

The key is (the source's model sha256, method, case key, :func:`config_sha`), where :func:`config_sha` hashes
everything the per-case scores depend on: :data:`SCORING_VERSION`, the method and its parameters, the policy's
target, faithfulness steps and split, the per-case checks that run, the source's mode (when it is not white-
box), the sAUC negatives' pool and, for the IBA methods, the IBA map version. A run killed part-way resumes
from the cases it finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from audit.checks.gaze import ShuffledFixations
from audit.history import History
from audit.iba_stats import IBA_MAP_VERSION, IBA_METHODS
from audit.policy import Policy
from audit.reference import ReferenceCase
from audit.scores import CaseScores

__all__ = ["SCORING_VERSION", "CaseCache", "config_sha"]

#: Version of the per-case scoring code; part of the cache key.
SCORING_VERSION = 2


def config_sha(
    policy: Policy,
    method: str,
    scored: Sequence[str],
    *,
    mode: str = "whitebox",
    shuffled: ShuffledFixations | None = None,
) -> str:
    """The configuration part of the cache key of ``method``'s per-case ``scored`` checks."""
    key: dict[str, Any] = {
        "scoring": SCORING_VERSION,
        "method": method,
        "params": policy.method_params.get(method, {}),
        "target": policy.target,
        "faithfulness_steps": policy.faithfulness.steps,
        "checks": sorted(scored),
        "split": policy.split,
    }
    if mode != "whitebox":
        key["mode"] = mode
    if shuffled is not None:  # sAUC depends on which other cases are in the pool
        key["gaze_pool"] = shuffled.fingerprint
    if method in IBA_METHODS:  # maps cached before the IBA readout matched the reference are stale
        key["iba_map"] = IBA_MAP_VERSION
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class CaseCache:
    """The cached per-case scores of one audited model, and the recording of new ones (one run).

    ``record``: whether any per-case check runs (nothing is cached or recorded otherwise).
    """

    def __init__(
        self,
        history: History | None,
        run_id: int | None,
        model_sha256: str,
        config_shas: dict[str, str],
        *,
        record: bool,
    ) -> None:
        self.history = history
        self.run_id = run_id
        self.model_sha256 = model_sha256
        self.config_shas = config_shas
        self.record = record

    def cached(self, method: str) -> dict[str, CaseScores]:
        if self.history is None or not self.record:
            return {}
        return self.history.cached_cases(
            model_sha256=self.model_sha256, config_sha256=self.config_shas[method], method=method
        )

    def merge(
        self,
        method: str,
        cases: Sequence[ReferenceCase],
        cached: dict[str, CaseScores],
        new: dict[str, CaseScores],
        scores: dict[str, CaseScores],
    ) -> None:
        """Add a chunk's cached and newly computed case scores to ``scores``; record them in the history."""
        reused = {c.key: cached[c.key] for c in cases if c.key in cached}
        scores.update(reused)
        scores.update(new)
        if self.history is not None and self.run_id is not None and self.record:
            self.history.record_cases(
                self.run_id, model_sha256=self.model_sha256, config_sha256=self.config_shas[method],
                method=method, cases={**reused, **new},
            )  # fmt: skip
