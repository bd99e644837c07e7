"""One scoring loop over the reference cases, whatever the source of the maps (:mod:`audit.sources`).

Reference cases are read one chunk at a time (bounded memory) and preprocessed with the source's spec; the
source explains the cases not yet in the cache (:mod:`audit.cache`) plus the first few (report examples, and
the pairwise cases the model-level checks reuse); each map is scored on the native grid by the per-case
checks the source can run (gaze, localisation, shortcut; faithfulness where it has forwards on perturbed
inputs) and the chunk is recorded in the history in one transaction. The counterfactual rows of a chunk come
from the source too (twin forwards, or ``/v1/predict`` of edited DICOMs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from audit.cache import CaseCache, config_sha
from audit.checks import BootstrapSettings, CheckResult
from audit.checks.counterfactual import occlusion_result
from audit.checks.faithfulness import faithfulness_scores
from audit.checks.gaze import ShuffledFixations, gaze_scores
from audit.checks.localisation import baseline_map, localisation_scores
from audit.checks.shortcut import shortcut_scores
from audit.history import History
from audit.iba_stats import IbaStatsProvider
from audit.reference import ReferenceCase, ReferenceSet
from audit.scores import CaseScores, Score
from audit.sources import CaseMap, MapSource, OcclusionRow, missing_capability

if TYPE_CHECKING:
    from audit.runner import AuditConfig, ModelAudit

__all__ = ["N_EXAMPLES", "PER_CASE_CHECKS", "AuditContext", "Pairs", "score_cases"]

#: Checks scored per (model, method, case) and cached in the history.
PER_CASE_CHECKS: tuple[str, ...] = ("gaze", "localisation", "shortcut", "faithfulness")
#: Number of example cases kept for the report's overlays.
N_EXAMPLES = 2


class AuditContext:
    """State of one ``run_audit`` call shared by every audited model (reference, history, baselines)."""

    def __init__(self, config: AuditConfig, reference: ReferenceSet) -> None:
        self.config = config
        self.policy = config.policy
        self.reference = reference
        self.checks = config.check_list
        self.methods = config.method_list
        self.bootstrap: BootstrapSettings = self.policy.bootstrap_settings
        self.history = History(config.history_path) if config.history_path else None
        self.average_mask = reference.average_mask() if "localisation" in self.checks else None
        # sAUC's negatives: the other reference cases' fixations (read once, without decoding the images)
        self.shuffled = ShuffledFixations.from_reference(reference) if "gaze" in self.checks else None
        self.groups: dict[str, dict[str, str | None]] = {}
        self.pool = ThreadPoolExecutor(max_workers=max(1, config.jobs))
        hp = config.history_path
        self.iba = IbaStatsProvider(reference, hp.parent / f"{hp.name}.iba-stats" if hp else None)

    def close(self) -> None:
        self.pool.shutdown()
        if self.history is not None:
            self.history.close()

    @property
    def pairwise_cases(self) -> int:
        return min(self.policy.pairwise_cases, len(self.reference))

    def scored_checks(self, source: MapSource) -> list[str]:
        """The per-case checks that run on ``source`` (in the policy's order)."""
        return [c for c in self.checks if c in PER_CASE_CHECKS and missing_capability(source, c) is None]

    def config_sha(self, method: str, source: MapSource) -> str:
        return config_sha(
            self.policy, method, self.scored_checks(source), mode=source.mode, shuffled=self.shuffled
        )


@dataclass
class Pairs:
    """The first ``policy.pairwise_cases`` cases' inputs, targets and maps, for the model-level checks."""

    x: list[np.ndarray] = field(default_factory=list)
    t: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    maps: dict[str, list[np.ndarray]] = field(default_factory=dict)


def score_case(
    ctx: AuditContext, checks: Sequence[str], case: ReferenceCase, m: CaseMap, source: MapSource
) -> list[Score]:
    """The per-case ``checks`` of one map (native grid; faithfulness at model resolution)."""
    parts = {
        "gaze": lambda: gaze_scores(m.native, case, ctx.shuffled),
        "localisation": lambda: localisation_scores(m.native, case),
        "shortcut": lambda: shortcut_scores(m.native, case),
        "faithfulness": lambda: faithfulness_scores(
            m.model, case.x, source.forward, m.target, steps=ctx.policy.faithfulness.steps
        ),
    }
    rows: list[Score] = []
    for check in PER_CASE_CHECKS:
        if check in checks:
            rows.extend(Score(check, metric, v) for metric, v in parts[check]().items())
    return rows


def baseline_rows(ctx: AuditContext, case: ReferenceCase) -> dict[str, dict[str, float]]:
    """Map-free baselines of one case: the average finding mask (localisation), a uniform map (shortcut)."""
    out: dict[str, dict[str, float]] = {}
    if "localisation" in ctx.checks and ctx.average_mask is not None:
        out["localisation"] = localisation_scores(baseline_map(ctx.average_mask, case.shape), case)
    if "shortcut" in ctx.checks:
        out["shortcut"] = shortcut_scores(np.ones(case.shape, np.float32), case)
    return out


def score_cases(ctx: AuditContext, source: MapSource, audit: ModelAudit, failed: set[str]) -> Pairs:
    """Score every reference case with every method ``source`` explains; fills ``audit``'s per-case and
    counterfactual results, examples, case counts and errors. Returns the pairwise cases (when the source
    has weights for the model-level checks to use)."""
    ident = source.identity
    methods = ctx.methods
    scored = ctx.scored_checks(source)
    cache = CaseCache(
        ctx.history,
        audit.run_id,
        ident.sha256,
        {m: ctx.config_sha(m, source) for m in methods},
        record=bool(scored),
    )
    cached = {m: cache.cached(m) for m in methods}
    n = len(ctx.reference)
    k = ctx.pairwise_cases
    keep_pairs = source.capabilities.weights
    first = max(k, N_EXAMPLES) if keep_pairs else N_EXAMPLES
    scores: dict[str, dict[str, CaseScores]] = {m: {} for m in methods}
    baselines: dict[str, CheckResult] = {}
    pairs = Pairs(maps={m: [] for m in methods})
    occlusion: list[OcclusionRow] | None = (
        [] if "counterfactual" in ctx.checks and source.capabilities.occlusion else None
    )
    bar = None
    if ctx.config.progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"audit {ident.ref}", unit="case", leave=False)
    for start in range(0, n, ctx.config.batch_size):
        chunk = list(range(start, min(n, start + ctx.config.batch_size)))
        cases = [ctx.reference.case(i, ident.spec) for i in chunk]
        targets = source.targets(cases)
        for c in cases:
            ctx.groups[c.key] = dict(c.groups)
            for check, vals in baseline_rows(ctx, c).items():
                baselines.setdefault(check, CheckResult(check, "baseline")).add_case(c.key, vals)
        if keep_pairs and targets is not None:
            for j, c in enumerate(cases):
                if chunk[j] < k:
                    pairs.x.append(c.x)
                    pairs.t.append(targets[j])
                    pairs.keys.append(c.key)
        need = {
            m: [j for j, c in enumerate(cases) if c.key not in cached[m] or chunk[j] < first]
            for m in methods
            if m not in failed
        }
        answers = source.explain(need, cases, chunk, targets)
        for m in need:
            maps = answers[m]
            if isinstance(maps, str):
                failed.add(m)
                audit.errors.append(maps)
                continue
            futures = {
                j: ctx.pool.submit(score_case, ctx, scored, cases[j], maps[j], source)
                for j, c in enumerate(cases)
                if c.key not in cached[m]
            }
            new = {cases[j].key: CaseScores(maps[j].target_class, f.result()) for j, f in futures.items()}
            audit.n_cached += len(cases) - len(futures)
            for j, c in enumerate(cases):
                if keep_pairs and chunk[j] < k:
                    pairs.maps[m].append(maps[j].model)  # type: ignore[arg-type]
                if chunk[j] < N_EXAMPLES:
                    add_example(audit, c, m, maps[j].native)
            cache.merge(m, cases, cached[m], new, scores[m])
        if occlusion is not None:
            rows = source.occlusion_rows(chunk, cases, audit.errors)
            occlusion = None if rows is None else occlusion + rows
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    audit.n_cases = n
    audit.results.extend(per_case_results(ctx, scores, baselines, failed))
    if occlusion:
        occluded = occlusion_result(occlusion, bootstrap=ctx.bootstrap)
        for m in methods:  # the same result in every method's row of the verdict table
            if m not in failed:
                audit.results.append(dataclasses.replace(occluded, method=m))
    return pairs


def per_case_results(
    ctx: AuditContext,
    scores: dict[str, dict[str, CaseScores]],
    baselines: dict[str, CheckResult],
    failed: set[str],
) -> list[CheckResult]:
    """Per-case scores → summarised check results, with the localisation / shortcut baselines."""
    base_results = {check: r.summarise(ctx.bootstrap) for check, r in baselines.items()}
    out: list[CheckResult] = []
    for m in ctx.methods:
        if m in failed:
            continue
        by_check: dict[str, CheckResult] = {}
        for key, case in scores[m].items():
            for score in case.rows:
                r = by_check.setdefault(score.check, CheckResult(score.check, m))
                r.values.setdefault(score.metric, {})[key] = score.value
                r.case_class[key] = case.cls
        for check in PER_CASE_CHECKS:
            if check not in by_check:
                continue
            r = by_check[check].summarise(ctx.bootstrap)
            if check == "localisation" and "localisation" in base_results:
                r.baselines["average_mask"] = {
                    k: s.mean for k, s in base_results["localisation"].summaries.items()
                }
            if check == "shortcut" and "shortcut" in base_results:
                r.baselines["uniform"] = {k: s.mean for k, s in base_results["shortcut"].summaries.items()}
            out.append(r)
    return out


def add_example(audit: ModelAudit, case: ReferenceCase, method: str, native: np.ndarray) -> None:
    """Keep ``method``'s native-grid map of ``case`` for the report's overlays."""
    for ex in audit.examples:
        if ex["key"] == case.key:
            ex["maps"][method] = native
            return
    audit.examples.append(
        {
            "key": case.key,
            "image": case.image,
            "heatmap": case.heatmap,
            "finding_mask": case.finding_mask,
            "marker": case.marker,
            "maps": {method: native},
        }
    )
