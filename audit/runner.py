"""The audit runner: registry model(s) × reference store × methods × checks → scores, verdicts, history.

:func:`run_audit` is what ``mimicry audit run`` calls (DESIGN.md, "Model lifecycle": registry version →
audit → SQLite history → report → Prometheus → promotion gate). Per model version:

1. the torch twin and the ONNX model are loaded from the registry (sha256-verified);
2. reference cases are read one chunk at a time (bounded memory), preprocessed with the card's spec, and each
   method's maps are computed on the twin (:func:`mimicry.saliency.explain`, maps in [0, 1] at model
   resolution) and mapped back to the native grid (:func:`mimicry.preprocess.unletterbox`);
3. per-case checks (gaze, localisation, shortcut, faithfulness) are scored and stored in the history in one
   transaction per chunk — cases already scored for the same (model sha256, method, config) are taken from
   the history instead (cache / resume after a kill);
4. model-level checks run on the first ``policy.pairwise_cases`` cases: cascading and independent
   randomisation (stages on the classification path) with the degradation threshold, the random-logit check
   (predicted class vs a random other class, same threshold), repeatability (versions sharing the replicate
   group), reproducibility (other architectures, same dataset fingerprint), explanation consistency across
   replicates, runtime reproducibility (torch twin vs ONNX Runtime);
5. subgroup gaps, the policy's verdicts, and the run's end row.

**Black-box mode** (``config.endpoint``; :mod:`audit.blackbox`): the models are those the endpoint serves
(``GET /v1/models``); every reference DICOM is sent to ``POST /v1/explain`` (``space=source``, PNG-16) and the
returned native-grid maps are scored by the same gaze, localisation and shortcut code (no model weights).
Checks that need the weights (faithfulness's perturbation forwards, randomisation, repeatability,
reproducibility, consistency) are N/A with the reason recorded. When the registry given alongside holds the
served version with the same ``model.onnx`` sha256, ``runtime_reproducibility`` compares the registry's torch
twin with the service (probabilities and Grad-CAM, ``details["runtime"] = "service"``). The history records
the endpoint's model name, version and ``model.onnx`` sha256; the cache key is (that sha256, method, case,
black-box scoring config).

IBA methods (``iba``, ``inverse_iba``, ``multilayer_iba``) get their ``stats=``: the card's ``iba_stats``
when they match the layer, else :func:`mimicry.saliency.iba.estimate_layer_stats` on the reference's
training split, cached per model sha256 in a sidecar file next to the history (:func:`iba_stats_for`).

Several audited models are then compared pairwise (paired t-test and Wilcoxon per shared metric).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.blackbox import (
    EndpointClient,
    EndpointError,
    EndpointExplanation,
    EndpointRequestError,
    ExplainRequest,
    ServedModelInfo,
    public_url,
    select_served,
)
from audit.checks import (
    BootstrapSettings,
    CheckResult,
    Comparison,
    Explainer,
    cascading_randomisation,
    compare_models,
    degradation_threshold,
    explanation_robustness,
    independent_randomisation,
    map_agreement,
    onnx_forward,
    random_logit,
    replicate_consistency,
    runtime_reproducibility,
    subgroup_gaps,
    torch_forward,
)
from audit.checks.counterfactual import (
    COUNTERFACTUAL_METRICS,
    occlusion_boxes,
    occlusion_result,
    occlusion_row,
    occlusion_scores,
    paint_out_dicom,
)
from audit.checks.faithfulness import faithfulness_scores
from audit.checks.gaze import ShuffledFixations, gaze_scores
from audit.checks.localisation import baseline_map, localisation_scores
from audit.checks.shortcut import shortcut_scores
from audit.errors import AuditError, CheckInputError
from audit.history import History
from audit.iba_stats import AUDIT_ONLY_PARAMS, IBA_MAP_VERSION, IBA_METHODS, IbaStatsProvider, method_kwargs
from audit.policy import Policy, Verdict, evaluate, gate_passed
from audit.reference import ReferenceCase, ReferenceSet
from mimicry.preprocess import PreprocessSpec, unletterbox
from mimicry.registry import ModelCard, Registry, RegistryError
from mimicry.saliency import SaliencyError, explain

__all__ = [
    "PER_CASE_CHECKS",
    "AuditConfig",
    "AuditReport",
    "ModelAudit",
    "make_explainer",
    "model_sha256",
    "resolve_models",
    "run_audit",
]

log = logging.getLogger(__name__)

#: Checks scored per (model, method, case) and cached in the history.
PER_CASE_CHECKS: tuple[str, ...] = ("gaze", "localisation", "shortcut", "faithfulness")
#: Per-case checks a black-box audit can score from the returned maps alone.
BLACKBOX_PER_CASE: tuple[str, ...] = ("gaze", "localisation", "shortcut")
#: Checks that need the model's weights, hence N/A in black-box mode (with the reason).
NEEDS_WEIGHTS: dict[str, str] = {
    "faithfulness": "needs model forwards on perturbed inputs (black-box mode)",
    "cascading_randomisation": "needs the model weights (black-box mode)",
    "independent_randomisation": "needs the model weights (black-box mode)",
    "random_logit": "runs on the torch twin (white-box mode)",
    "repeatability": "needs the model weights (black-box mode)",
    "reproducibility": "needs the model weights (black-box mode)",
    "consistency": "needs the model weights (black-box mode)",
    "robustness": "needs explanations of noise-perturbed inputs (black-box mode)",
}
#: Number of example cases kept for the report's overlays.
N_EXAMPLES = 2
#: Version of the per-case scoring code; part of the cache key.
SCORING_VERSION = 2


@dataclass
class AuditConfig:
    """What to audit and how (the command line, resolved).

    Attributes:
        registry: registry directory. models: references (``NAME``, ``NAME:V``, ``NAME@ALIAS``,
            ``NAME:all``, ``all``). reference: EGD-layout reference store. policy: the parsed policy.
        methods / checks: override the policy's lists (``None``: the policy's).
        history_path: SQLite history (``None``: no history, no cache).
        jobs: threads scoring cases in parallel. batch_size: cases per chunk (memory bound).
        progress: show a progress bar (stderr).
        endpoint: black-box mode: the base URL of a running mimicry service (``None``: white-box).
        endpoint_token: its bearer token (``None``: ``$MIMICRY_AUDIT_ENDPOINT_TOKEN``).
        endpoint_timeout_s / endpoint_retries: per-request timeout and retries (503 / 429 / transport).
    """

    registry: Path
    models: Sequence[str]
    reference: Path
    policy: Policy
    methods: Sequence[str] | None = None
    checks: Sequence[str] | None = None
    history_path: Path | None = None
    jobs: int = 1
    batch_size: int = 8
    progress: bool = False
    endpoint: str | None = None
    endpoint_token: str | None = field(default=None, repr=False)
    endpoint_timeout_s: float = 120.0
    endpoint_retries: int = 4

    @property
    def mode(self) -> str:
        return "blackbox" if self.endpoint else "whitebox"

    @property
    def method_list(self) -> list[str]:
        return list(self.methods) if self.methods else list(self.policy.methods)

    @property
    def check_list(self) -> list[str]:
        if self.checks and list(self.checks) != ["all"]:
            return list(self.checks)
        return self.policy.check_list

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": str(self.registry),
            "models": list(self.models),
            "reference": str(self.reference),
            "methods": self.method_list,
            "checks": self.check_list,
            "jobs": self.jobs,
            "batch_size": self.batch_size,
            "mode": self.mode,
            "endpoint": public_url(self.endpoint) if self.endpoint else None,
        }


@dataclass
class ModelAudit:
    """The audit of one model version."""

    name: str
    version: int
    sha256: str
    architecture: str
    methods: list[str]
    results: list[CheckResult] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    passed: bool = False
    run_id: int | None = None
    duration_s: float = 0.0
    n_cases: int = 0
    n_cached: int = 0
    errors: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "whitebox"
    endpoint: str | None = None
    not_applicable: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def status(self) -> str:
        """``"error"`` (the audit, or a method of it, could not run), else ``"passed"`` / ``"failed"``."""
        return "error" if self.errors else ("passed" if self.passed else "failed")

    def result(self, check: str, method: str) -> CheckResult | None:
        for r in self.results:
            if r.check == check and r.method == method:
                return r
        return None


@dataclass
class AuditReport:
    """Everything one ``audit run`` produced."""

    config: dict[str, Any]
    policy: Policy
    models: list[ModelAudit]
    comparisons: list[Comparison]
    started: float
    finished: float

    @property
    def passed(self) -> bool:
        return bool(self.models) and all(m.passed and not m.errors for m in self.models)

    @property
    def status(self) -> str:
        """``"error"`` when any model's audit could not run (its verdicts are incomplete), else
        ``"passed"`` / ``"failed"`` (the gate)."""
        if any(m.errors for m in self.models):
            return "error"
        return "passed" if self.passed else "failed"


def model_sha256(card: ModelCard) -> str:
    """Identity of a version's artifacts: sha256 over its sorted ``artifact=sha256`` lines."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(card.artifacts.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_models(registry: Registry, specs: Sequence[str]) -> list[tuple[str, int]]:
    """Expand model references: ``all`` (every version of every model), ``NAME:all``, or one reference."""
    out: list[tuple[str, int]] = []
    for spec in specs:
        if spec == "all":
            out.extend((n, v) for n in registry.models() for v in registry.versions(n))
        elif spec.endswith(":all"):
            name = spec[: -len(":all")]
            out.extend((name, v) for v in registry.versions(name))
        else:
            out.append(registry.resolve(spec))
    return list(dict.fromkeys(out))


def make_explainer(method: str, params: dict[str, Any] | None = None) -> Explainer:
    """``explainer(model, x, targets) -> maps[N,S,S]`` for :func:`mimicry.saliency.explain`."""
    kwargs = dict(params or {})

    def run(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        return np.asarray(explain(model, x, targets, method, **kwargs), dtype=np.float32)  # type: ignore[arg-type]

    return run


def _numpy_forward(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def fwd(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(np.asarray(x, np.float32))), dim=1).numpy()

    return fwd


def _class(names: Sequence[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else str(i)


class _Audit:
    """State of one ``run_audit`` call (shared reference, history, baselines)."""

    def __init__(self, config: AuditConfig, registry: Registry, reference: ReferenceSet) -> None:
        self.config = config
        self.policy = config.policy
        self.registry = registry
        self.reference = reference
        self.checks = config.check_list
        self.methods = config.method_list
        self.bootstrap: BootstrapSettings = self.policy.bootstrap_settings
        self.history = History(config.history_path) if config.history_path else None
        self.average_mask = reference.average_mask() if "localisation" in self.checks else None
        # sAUC's negatives: the other reference cases' fixations (read once, without decoding the images)
        self.shuffled = ShuffledFixations.from_reference(reference) if "gaze" in self.checks else None
        self.groups: dict[str, dict[str, str | None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.jobs))
        hp = config.history_path
        self.iba = IbaStatsProvider(reference, hp.parent / f"{hp.name}.iba-stats" if hp else None)

    def close(self) -> None:
        self._pool.shutdown()
        if self.history is not None:
            self.history.close()

    # ------------------------------------------------------------------------------------ helpers

    def config_sha(self, method: str, mode: str = "whitebox") -> str:
        p = self.policy
        scored = PER_CASE_CHECKS if mode == "whitebox" else BLACKBOX_PER_CASE
        key: dict[str, Any] = {
            "scoring": SCORING_VERSION,
            "method": method,
            "params": p.method_params.get(method, {}),
            "target": p.target,
            "faithfulness_steps": p.faithfulness.steps,
            "checks": sorted(c for c in self.checks if c in scored),
            "split": p.split,
        }
        if mode != "whitebox":
            key["mode"] = mode
        if self.shuffled is not None:  # sAUC depends on which other cases are in the pool
            key["gaze_pool"] = self.shuffled.fingerprint
        if method in IBA_METHODS:  # maps cached before the IBA readout matched the reference are stale
            key["iba_map"] = IBA_MAP_VERSION
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def method_params(self, method: str, card: ModelCard, twin: torch.nn.Module) -> dict[str, Any]:
        """``explain`` keyword arguments of ``method`` for ``card``'s twin (IBA: with layer statistics)."""
        return method_kwargs(
            method,
            self.policy.method_params.get(method),
            model=twin,
            model_sha256=model_sha256(card),
            spec=card.preprocessing,
            provider=self.iba,
            card_stats=card.iba_stats,
        )

    def targets(self, model: torch.nn.Module, cases: Sequence[ReferenceCase]) -> list[int]:
        if self.policy.target == "label":
            return [c.label_index for c in cases]
        x = torch.from_numpy(np.stack([c.x for c in cases]))
        with torch.no_grad():
            return [int(t) for t in model(x).argmax(dim=1)]

    def score_case(
        self, case: ReferenceCase, map_model: np.ndarray, target: int, forward: Callable
    ) -> list[tuple[str, str, float]]:
        native = unletterbox(map_model, case.letterbox)
        rows: list[tuple[str, str, float]] = []
        parts = {
            "gaze": lambda: gaze_scores(native, case, self.shuffled),
            "localisation": lambda: localisation_scores(native, case),
            "shortcut": lambda: shortcut_scores(native, case),
            "faithfulness": lambda: faithfulness_scores(
                map_model, case.x, forward, target, steps=self.policy.faithfulness.steps
            ),
        }
        for check in PER_CASE_CHECKS:
            if check in self.checks:
                rows.extend((check, m, v) for m, v in parts[check]().items())
        return rows

    def _merge_cases(
        self,
        audit: ModelAudit,
        model_sha: str,
        config_sha: str,
        method: str,
        cases: Sequence[Any],
        cached: dict[str, Any],
        new: dict[str, Any],
        scores: dict[str, Any],
        *,
        record: bool,
    ) -> None:
        """Add a chunk's cached and newly computed case scores to ``scores``; record them in the history."""
        reused = {c.key: cached[c.key] for c in cases if c.key in cached}
        scores.update(reused)
        scores.update(new)
        if self.history is not None and audit.run_id is not None and record:
            self.history.record_cases(
                audit.run_id, model_sha256=model_sha, config_sha256=config_sha, method=method,
                cases={**reused, **new},
            )  # fmt: skip

    def baseline_rows(self, case: ReferenceCase) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        if "localisation" in self.checks and self.average_mask is not None:
            out["localisation"] = localisation_scores(baseline_map(self.average_mask, case.shape), case)
        if "shortcut" in self.checks:
            out["shortcut"] = shortcut_scores(np.ones(case.shape, np.float32), case)
        return out

    def partners(self, card: ModelCard) -> dict[str, list[ModelCard]]:
        """Replicates (same replicate group) and reproducibility partners (other architecture, same data)."""
        reps: list[ModelCard] = []
        archs: list[ModelCard] = []
        for name in self.registry.models():
            for v in self.registry.versions(name):
                if name == card.name and v == card.version:
                    continue
                try:
                    other = self.registry.card(f"{name}:{v}")
                except RegistryError:
                    continue
                if card.replicate_group and other.replicate_group == card.replicate_group:
                    reps.append(other)
                elif (
                    card.dataset_fingerprint
                    and other.dataset_fingerprint == card.dataset_fingerprint
                    and other.architecture != card.architecture
                ):
                    archs.append(other)
        k = self.policy.max_partners
        return {"repeatability": reps[:k], "reproducibility": archs[:k]}

    # ------------------------------------------------------------------------------------ one model

    def audit_model(self, name: str, version: int) -> ModelAudit:
        t0 = time.perf_counter()
        ref = f"{name}:{version}"
        card = self.registry.card(ref)
        audit = ModelAudit(name, version, model_sha256(card), card.architecture, list(self.methods))
        run_id = None
        if self.history is not None:
            run_id = self.history.start_run(
                model=name,
                version=version,
                sha256=audit.sha256,
                policy_json=self.policy.canonical_json(),
                policy_sha256=self.policy.sha256,
                config=self.config.to_dict(),
            )
        audit.run_id = run_id
        try:
            self._audit_model(card, audit)
            audit.verdicts = evaluate(self.policy, audit.results, self.methods)
            audit.passed = gate_passed(audit.verdicts) and not audit.errors
        except (AuditError, RegistryError, SaliencyError, ValueError, RuntimeError) as exc:
            audit.errors.append(f"{type(exc).__name__}: {exc}")
            audit.passed = False
            log.error("audit of %s failed: %s", ref, type(exc).__name__)
        audit.duration_s = time.perf_counter() - t0
        if self.history is not None and run_id is not None:
            self.history.record_results(run_id, audit.results, audit.verdicts)
            status = "error" if audit.errors else ("passed" if audit.passed else "failed")
            self.history.finish_run(run_id, status=status, passed=audit.passed)
        return audit

    def _audit_model(self, card: ModelCard, audit: ModelAudit) -> None:
        spec = card.preprocessing
        names = card.class_names
        twin = self.registry.load_twin(card.ref)
        forward = _numpy_forward(twin)
        failed: set[str] = set()
        explainers: dict[str, Explainer] = {}
        for m in self.methods:
            try:
                explainers[m] = make_explainer(m, self.method_params(m, card, twin))
            except (AuditError, SaliencyError, ValueError, RuntimeError) as exc:
                failed.add(m)
                audit.errors.append(f"method {m}: {type(exc).__name__}: {exc}")
        n = len(self.reference)
        k = min(self.policy.pairwise_cases, n)
        per_case_on = [c for c in self.checks if c in PER_CASE_CHECKS]
        shas = {m: self.config_sha(m) for m in self.methods}
        cached = {
            m: (
                self.history.cached_cases(model_sha256=audit.sha256, config_sha256=shas[m], method=m)
                if self.history is not None and per_case_on
                else {}
            )
            for m in self.methods
        }
        scores: dict[str, dict[str, tuple[str, list[tuple[str, str, float]]]]] = {m: {} for m in self.methods}
        baselines: dict[str, CheckResult] = {}
        pair_x: list[np.ndarray] = []
        pair_t: list[int] = []
        pair_keys: list[str] = []
        pair_maps: dict[str, list[np.ndarray]] = {m: [] for m in self.methods}
        positions = list(range(n))
        chunks = [positions[i : i + self.config.batch_size] for i in range(0, n, self.config.batch_size)]
        occlusion_rows: list[tuple[str, str, dict[str, float]]] = []
        bar = None
        if self.config.progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=f"audit {audit.ref}", unit="case", leave=False)
        for chunk in chunks:
            cases = [self.reference.case(i, spec) for i in chunk]
            targets = self.targets(twin, cases)
            for c in cases:
                self.groups[c.key] = dict(c.groups)
                for check, vals in self.baseline_rows(c).items():
                    baselines.setdefault(check, CheckResult(check, "baseline")).add_case(c.key, vals)
            for j, (c, t) in enumerate(zip(cases, targets, strict=True)):
                if chunk[j] < k:
                    pair_x.append(c.x)
                    pair_t.append(t)
                    pair_keys.append(c.key)
            if "counterfactual" in self.checks:  # method-independent: the model's predictions only
                for c, sc in zip(cases, occlusion_scores(forward, cases, spec), strict=True):
                    occlusion_rows.append((c.key, _class(names, c.label_index), sc))
            for m in self.methods:
                if m in failed:
                    continue
                need = [
                    j for j, c in enumerate(cases) if c.key not in cached[m] or chunk[j] < max(k, N_EXAMPLES)
                ]
                maps: dict[int, np.ndarray] = {}
                if need:
                    x = torch.from_numpy(np.stack([cases[j].x for j in need]))
                    tt = torch.tensor([targets[j] for j in need], dtype=torch.long)
                    try:
                        out = explainers[m](twin, x, tt)
                    except (SaliencyError, ValueError, RuntimeError) as exc:
                        failed.add(m)
                        audit.errors.append(f"method {m}: {type(exc).__name__}: {exc}")
                        continue
                    maps = {j: out[i] for i, j in enumerate(need)}
                new: dict[str, tuple[str, list[tuple[str, str, float]]]] = {}
                todo = [j for j in range(len(cases)) if cases[j].key not in cached[m]]
                futures = {
                    j: self._pool.submit(self.score_case, cases[j], maps[j], targets[j], forward)
                    for j in todo
                }
                for j, c in enumerate(cases):
                    if j in futures:
                        new[c.key] = (_class(names, targets[j]), futures[j].result())
                    else:
                        audit.n_cached += 1
                    if chunk[j] < k:
                        pair_maps[m].append(maps[j])
                    if chunk[j] < N_EXAMPLES:
                        self._example(audit, c, m, maps[j])
                self._merge_cases(
                    audit, audit.sha256, shas[m], m, cases, cached[m], new, scores[m], record=per_case_on
                )
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        audit.n_cases = n
        audit.results.extend(self._per_case_results(scores, baselines, failed))
        if occlusion_rows:
            occluded = occlusion_result(occlusion_rows, bootstrap=self.bootstrap)
            for m in self.methods:  # the same result in every method's row of the verdict table
                if m not in failed:
                    audit.results.append(dataclasses.replace(occluded, method=m))
        if k >= 2 and pair_x:
            self._model_level(card, twin, audit, explainers, pair_x, pair_t, pair_keys, pair_maps, failed)
        self._subgroups(audit)

    def _subgroups(self, audit: ModelAudit) -> None:
        if "subgroups" in self.checks:
            sg = self.policy.subgroups
            audit.results.extend(
                subgroup_gaps(
                    [r for r in audit.results if r.check in PER_CASE_CHECKS],
                    self.groups,
                    columns=sg.columns,
                    min_group_size=sg.min_group_size,
                )
            )

    def _per_case_results(
        self,
        scores: dict[str, dict[str, tuple[str, list[tuple[str, str, float]]]]],
        baselines: dict[str, CheckResult],
        failed: set[str],
    ) -> list[CheckResult]:
        """Per-case scores → summarised check results, with the localisation / shortcut baselines."""
        base_results = {check: r.summarise(self.bootstrap) for check, r in baselines.items()}
        per_case_results: list[CheckResult] = []
        for m in self.methods:
            if m in failed:
                continue
            by_check: dict[str, CheckResult] = {}
            for key, (cls, rows) in scores[m].items():
                for check, metric, value in rows:
                    r = by_check.setdefault(check, CheckResult(check, m))
                    r.values.setdefault(metric, {})[key] = value
                    r.case_class[key] = cls
            for check in PER_CASE_CHECKS:
                if check not in by_check:
                    continue
                r = by_check[check].summarise(self.bootstrap)
                if check == "localisation" and "localisation" in base_results:
                    r.baselines["average_mask"] = {
                        k2: s.mean for k2, s in base_results["localisation"].summaries.items()
                    }
                if check == "shortcut" and "shortcut" in base_results:
                    r.baselines["uniform"] = {
                        k2: s.mean for k2, s in base_results["shortcut"].summaries.items()
                    }
                per_case_results.append(r)
        return per_case_results

    def _example(self, audit: ModelAudit, case: ReferenceCase, method: str, map_model: np.ndarray) -> None:
        self._example_native(audit, case, method, unletterbox(map_model, case.letterbox))

    def _example_native(
        self, audit: ModelAudit, case: ReferenceCase, method: str, native: np.ndarray
    ) -> None:
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

    def _partner_maps(
        self, other: ModelCard, method: str, positions: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Model-resolution and native-grid maps of a partner model on the first ``positions`` cases."""
        twin = self.registry.load_twin(other.ref)
        params = self.method_params(method, other, twin)
        cases = [self.reference.case(i, other.preprocessing) for i in range(positions)]
        t = torch.tensor(self.targets(twin, cases), dtype=torch.long)
        x = torch.from_numpy(np.stack([c.x for c in cases]))
        maps = make_explainer(method, params)(twin, x, t)
        return list(maps), [unletterbox(m, c.letterbox) for m, c in zip(maps, cases, strict=True)]

    def _model_level(
        self,
        card: ModelCard,
        twin: torch.nn.Module,
        audit: ModelAudit,
        explainers: dict[str, Explainer],
        pair_x: list[np.ndarray],
        pair_t: list[int],
        pair_keys: list[str],
        pair_maps: dict[str, list[np.ndarray]],
        failed: set[str],
    ) -> None:
        p = self.policy
        names = card.class_names
        x = torch.from_numpy(np.stack(pair_x))
        t = torch.tensor(pair_t, dtype=torch.long)
        k = len(pair_keys)
        partners = (
            self.partners(card)
            if {"repeatability", "reproducibility", "consistency"} & set(self.checks)
            else {"repeatability": [], "reproducibility": []}
        )
        spec = card.preprocessing
        native_cases = None
        for m in self.methods:
            if m in failed:
                continue
            pm = np.stack(pair_maps[m])
            common = {"method": m, "keys": pair_keys, "class_names": names, "bootstrap": self.bootstrap}
            thr = None
            if {"cascading_randomisation", "independent_randomisation", "random_logit"} & set(self.checks):
                thr = degradation_threshold(
                    pm,
                    n_pairs=p.randomisation.n_pairs,
                    seed=p.randomisation.seed,
                    data_range=p.ssim_data_range,
                )
            for check, fn in (
                ("cascading_randomisation", cascading_randomisation),
                ("independent_randomisation", independent_randomisation),
            ):
                if check in self.checks:
                    audit.results.append(
                        fn(
                            twin,
                            x,
                            t,
                            explainers[m],
                            seed=p.randomisation.seed,
                            data_range=p.ssim_data_range,
                            original=pm,
                            threshold=thr,
                            **common,  # type: ignore[arg-type]
                        )
                    )
            if "random_logit" in self.checks:  # predicted class vs a random other class (Sixt et al.)
                audit.results.append(
                    random_logit(
                        twin,
                        x,
                        explainers[m],
                        seed=p.randomisation.seed,
                        data_range=p.ssim_data_range,
                        original=pm if p.target == "predicted" else None,
                        threshold=thr,
                        **common,  # type: ignore[arg-type]
                    )
                )
            if "robustness" in self.checks:
                audit.results.append(
                    explanation_robustness(
                        twin,
                        x,
                        t,
                        explainers[m],
                        seed=p.randomisation.seed,
                        original=pm,
                        **common,  # type: ignore[arg-type]
                    )
                )
            rep_maps_model: list[np.ndarray] = []
            rep_refs: list[str] = []
            for check in ("repeatability", "reproducibility"):
                others = partners[check]
                wanted = check in self.checks or (check == "repeatability" and "consistency" in self.checks)
                if not others or not wanted:
                    continue
                if native_cases is None:
                    native_cases = [self.reference.case(i, spec) for i in range(k)]
                own_native = [unletterbox(mm, c.letterbox) for mm, c in zip(pm, native_cases, strict=True)]
                agreements = []
                for other in others:
                    model_maps, native = self._partner_maps(other, m, k)
                    if check == "repeatability" and model_maps[0].shape == pm.shape[1:]:
                        rep_maps_model.append(np.stack(model_maps))
                        rep_refs.append(other.ref)
                    if check in self.checks:
                        agreements.append(
                            map_agreement(
                                own_native,
                                native,
                                pair_keys,
                                check=check,
                                method=m,
                                other=other.ref,
                                data_range=p.ssim_data_range,
                                bootstrap=self.bootstrap,
                            )
                        )
                if agreements:
                    audit.results.append(_mean_agreement(agreements, self.bootstrap))
            if "consistency" in self.checks and rep_maps_model:
                try:
                    audit.results.append(
                        replicate_consistency(
                            pm, rep_maps_model, method=m, others=rep_refs, seed=p.randomisation.seed
                        )
                    )
                except CheckInputError as exc:
                    audit.errors.append(f"consistency ({m}): {exc}")
        if "runtime_reproducibility" in self.checks:
            onnx = onnx_forward(self.registry.load_onnx_path(card.ref))
            audit.results.append(
                runtime_reproducibility(
                    torch_forward(twin), onnx, pair_x, pair_t, pair_keys, bootstrap=self.bootstrap
                )
            )

    # ------------------------------------------------------------------------------------ black-box

    def audit_served(
        self, info: ServedModelInfo, client: EndpointClient, registry: Registry | None
    ) -> ModelAudit:
        """Black-box audit of one served model (see the module docstring)."""
        t0 = time.perf_counter()
        audit = ModelAudit(info.name, info.version, info.sha256, info.architecture, list(self.methods))
        audit.mode = "blackbox"
        audit.endpoint = client.url
        for check in self.checks:
            if check in NEEDS_WEIGHTS:
                audit.not_applicable[check] = NEEDS_WEIGHTS[check]
        if self.history is not None:
            audit.run_id = self.history.start_run(
                model=info.name,
                version=info.version,
                sha256=info.sha256,
                policy_json=self.policy.canonical_json(),
                policy_sha256=self.policy.sha256,
                config={**self.config.to_dict(), "served": info.requested},
            )
        try:
            self._audit_served(info, audit, client, registry)
            verdicts = evaluate(self.policy, audit.results, self.methods)
            audit.verdicts = _explain_na(self.policy, verdicts, audit.not_applicable)
            audit.passed = gate_passed(audit.verdicts) and not audit.errors
        except (AuditError, RegistryError, SaliencyError, ValueError, RuntimeError) as exc:
            audit.errors.append(f"{type(exc).__name__}: {exc}")
            audit.passed = False
            log.error("black-box audit of %s failed: %s", info.ref, type(exc).__name__)
        audit.duration_s = time.perf_counter() - t0
        if self.history is not None and audit.run_id is not None:
            self.history.record_results(audit.run_id, audit.results, audit.verdicts)
            status = "error" if audit.errors else ("passed" if audit.passed else "failed")
            self.history.finish_run(audit.run_id, status=status, passed=audit.passed)
        return audit

    def _target_param(self, names: Sequence[str], case: ReferenceCase) -> str:
        if self.policy.target == "label" and 0 <= case.label_index < len(names):
            return names[case.label_index]
        return "predicted"

    def score_native(self, case: ReferenceCase, native: np.ndarray) -> list[tuple[str, str, float]]:
        """Black-box per-case scores of a native-grid map (gaze, localisation, shortcut)."""
        if native.shape != case.shape:
            raise EndpointError(f"the endpoint's map has shape {native.shape}, the DICOM {case.shape}")
        parts = {
            "gaze": lambda: gaze_scores(native, case, self.shuffled),
            "localisation": lambda: localisation_scores(native, case),
            "shortcut": lambda: shortcut_scores(native, case),
        }
        rows: list[tuple[str, str, float]] = []
        for check in BLACKBOX_PER_CASE:
            if check in self.checks:
                rows.extend((check, m, v) for m, v in parts[check]().items())
        return rows

    def _served_twin(self, info: ServedModelInfo, registry: Registry | None) -> tuple[ModelCard, Any] | None:
        """The registry's card and torch twin of the served version, when its ``model.onnx`` is the same."""
        if registry is None:
            return None
        try:
            card = registry.card(info.ref)
        except RegistryError:
            return None
        if card.artifacts.get("model.onnx") != info.sha256:
            return None
        return card, registry.load_twin(card.ref)

    def _audit_served(
        self, info: ServedModelInfo, audit: ModelAudit, client: EndpointClient, registry: Registry | None
    ) -> None:
        spec = info.card.preprocessing if info.card is not None else PreprocessSpec()
        names = list(info.class_names)
        per_case_on = [c for c in self.checks if c in BLACKBOX_PER_CASE]
        shas = {m: self.config_sha(m, mode="blackbox") for m in self.methods}
        cached = {
            m: (
                self.history.cached_cases(model_sha256=info.sha256, config_sha256=shas[m], method=m)
                if self.history is not None and per_case_on
                else {}
            )
            for m in self.methods
        }
        n = len(self.reference)
        k = min(self.policy.pairwise_cases, n)
        scores: dict[str, dict[str, tuple[str, list[tuple[str, str, float]]]]] = {m: {} for m in self.methods}
        baselines: dict[str, CheckResult] = {}
        failed: set[str] = set()
        occlusion_rows: list[tuple[str, str, dict[str, float]]] | None = (
            [] if "counterfactual" in self.checks else None
        )
        positions = list(range(n))
        for start in range(0, n, self.config.batch_size):
            chunk = positions[start : start + self.config.batch_size]
            cases = [self.reference.case(i, spec) for i in chunk]
            for c in cases:
                self.groups[c.key] = dict(c.groups)
                for check, vals in self.baseline_rows(c).items():
                    baselines.setdefault(check, CheckResult(check, "baseline")).add_case(c.key, vals)
            jobs = [
                (m, j)
                for m in self.methods
                if m not in failed
                for j, c in enumerate(cases)
                if c.key not in cached[m] or chunk[j] < N_EXAMPLES
            ]
            dicoms = {j: self.reference.dicom_bytes(chunk[j]) for j in sorted({j for _, j in jobs})}
            answers = client.explain_many(
                [
                    ExplainRequest(
                        dicoms[j],
                        model=info.requested,
                        method=m,
                        target=self._target_param(names, cases[j]),
                        space="source",
                        params={
                            k: v
                            for k, v in self.policy.method_params.get(m, {}).items()
                            if k not in AUDIT_ONLY_PARAMS
                        },
                    )
                    for m, j in jobs
                ]
            )
            got: dict[tuple[str, int], EndpointExplanation] = {}
            for (m, j), ans in zip(jobs, answers, strict=True):
                if isinstance(ans, EndpointRequestError):
                    if m not in failed:
                        failed.add(m)
                        audit.errors.append(f"method {m}: {ans}")
                    continue
                if isinstance(ans, EndpointError):
                    raise ans
                if ans.model.get("sha256") != info.sha256:
                    raise EndpointError("the endpoint's model changed during the audit (sha256 differs)")
                got[(m, j)] = ans
            for m in self.methods:
                if m in failed:
                    continue
                futures = {
                    j: self._pool.submit(self.score_native, cases[j], got[(m, j)].map)
                    for j, c in enumerate(cases)
                    if c.key not in cached[m]
                }
                new = {cases[j].key: (got[(m, j)].target_class, f.result()) for j, f in futures.items()}
                audit.n_cached += len(cases) - len(futures)
                for j, c in enumerate(cases):
                    if chunk[j] < N_EXAMPLES:
                        self._example_native(audit, c, m, got[(m, j)].map)
                self._merge_cases(
                    audit, info.sha256, shas[m], m, cases, cached[m], new, scores[m], record=per_case_on
                )
            if occlusion_rows is not None:
                try:
                    occlusion_rows.extend(self._served_occlusion(info, client, chunk, cases, audit.errors))
                except EndpointRequestError as exc:  # the service refused an edited DICOM: stop the check
                    audit.errors.append(f"counterfactual: {exc}")
                    occlusion_rows = None
        audit.n_cases = n
        audit.results.extend(self._per_case_results(scores, baselines, failed))
        if occlusion_rows:
            occluded = occlusion_result(occlusion_rows, bootstrap=self.bootstrap)
            for m in self.methods:  # the same result in every method's row, as in white-box mode
                if m not in failed:
                    audit.results.append(dataclasses.replace(occluded, method=m))
        if "runtime_reproducibility" in self.checks:
            twin = self._served_twin(info, registry)
            if twin is None:
                audit.not_applicable["runtime_reproducibility"] = (
                    "needs the served version in the registry (black-box mode)"
                )
            else:
                audit.results.append(self._service_reproducibility(info, client, twin[0], twin[1], k))
        self._subgroups(audit)

    def _served_occlusion(
        self,
        info: ServedModelInfo,
        client: EndpointClient,
        positions: Sequence[int],
        cases: Sequence[ReferenceCase],
        errors: list[str],
    ) -> list[tuple[str, str, dict[str, float]]]:
        """Counterfactual rows of one chunk: each stored DICOM, and copies with the marker box / its mirror
        painted out (:func:`audit.checks.counterfactual.paint_out_dicom`), sent to ``/v1/predict``.

        A case whose DICOM cannot be edited keeps NaN scores and adds a message (position, not case id) to
        ``errors``; the other cases are still scored.

        Raises:
            EndpointError: an answer failed, came from another model version (sha256), or named other classes.
        """
        names = tuple(info.class_names)
        empty = dict.fromkeys(COUNTERFACTUAL_METRICS, math.nan)
        rows = [(c.key, _class(names, c.label_index), dict(empty)) for c in cases]
        payloads: list[bytes] = []
        scored: list[int] = []
        for j, (pos, c) in enumerate(zip(positions, cases, strict=True)):
            boxes = occlusion_boxes(c.marker) if c.marker is not None else None
            if boxes is None:
                continue
            original = self.reference.dicom_bytes(pos)
            try:
                edited = [paint_out_dicom(original, box) for box in boxes]
            except CheckInputError as exc:
                errors.append(f"counterfactual: reference case #{pos}: {exc}")
                continue
            payloads += [original, *edited]
            scored.append(j)
        answers = client.predict_many(payloads, model=info.requested)
        for ans in answers:
            if isinstance(ans, EndpointError):
                raise ans
            if ans.model.get("sha256") != info.sha256:
                raise EndpointError("the endpoint's model changed during the audit (sha256 differs)")
            if ans.class_names != names:
                raise EndpointError(f"/v1/predict named classes {list(ans.class_names)}, not {list(names)}")
        for i, j in enumerate(scored):
            orig, painted, control = (a.probabilities for a in answers[3 * i : 3 * i + 3])  # type: ignore[union-attr]
            rows[j] = (rows[j][0], rows[j][1], occlusion_row(orig, painted, control))
        return rows

    def _service_reproducibility(
        self, info: ServedModelInfo, client: EndpointClient, card: ModelCard, twin: torch.nn.Module, k: int
    ) -> CheckResult:
        """``runtime_reproducibility`` of the registry's torch twin vs the service, on the first ``k`` cases:
        ``probs_max_abs_diff`` (softmax vs the service's probabilities) and ``cam_max_abs_diff`` (the twin's
        ``gradcam`` vs the service's, both at model resolution) — ``details["runtime"] = "service"``."""
        cases = [self.reference.case(i, card.preprocessing) for i in range(k)]
        targets = self.targets(twin, cases)
        answers = client.explain_many(
            [
                ExplainRequest(
                    self.reference.dicom_bytes(i),
                    model=info.requested,
                    method="gradcam",
                    target=str(t),
                    space="model",
                )
                for i, t in zip(range(k), targets, strict=True)
            ]
        )
        x = torch.from_numpy(np.stack([c.x for c in cases]))
        with torch.no_grad():
            probs = torch.softmax(twin(x), dim=1).numpy()
        cams = make_explainer("gradcam")(twin, x, torch.tensor(targets, dtype=torch.long))
        result = CheckResult("runtime_reproducibility", "gradcam")
        for i, (c, ans) in enumerate(zip(cases, answers, strict=True)):
            if isinstance(ans, EndpointError):
                raise ans
            if ans.map.shape != cams[i].shape:
                raise EndpointError(
                    f"the model-space map {ans.map.shape} differs from the twin's {cams[i].shape}"
                )
            result.add_case(
                c.key,
                {
                    "probs_max_abs_diff": float(np.abs(probs[i] - ans.probabilities).max()),
                    "cam_max_abs_diff": float(np.abs(cams[i] - ans.map).max()),
                },
                ans.target_class,
            )
        result.details["runtime"] = "service"
        result.details["endpoint"] = client.url
        return result.summarise(self.bootstrap)


def _explain_na(policy: Policy, verdicts: list[Verdict], reasons: dict[str, str]) -> list[Verdict]:
    """N/A verdicts of checks that cannot run (black-box mode) carry the reason instead of "check not run"."""
    check_of = {c.id: c.check for c in policy.criteria}
    out = []
    for v in verdicts:
        why = reasons.get(check_of.get(v.criterion, ""))
        out.append(dataclasses.replace(v, reason=why) if v.status == "N/A" and why else v)
    return out


def _mean_agreement(results: list[CheckResult], bootstrap: BootstrapSettings) -> CheckResult:
    """Average several partners' per-case agreement into one result (``details["others"]`` lists them)."""
    if len(results) == 1:
        r = results[0]
        r.details["others"] = [r.details.get("other")]
        return r
    first = results[0]
    out = CheckResult(first.check, first.method, baselines=dict(first.baselines))
    for metric, per_case in first.values.items():
        for c in per_case:
            vals = np.array([r.values[metric].get(c, np.nan) for r in results], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            out.values.setdefault(metric, {})[c] = float(vals.mean()) if vals.size else float("nan")
    out.details["others"] = [r.details.get("other") for r in results]
    return out.summarise(bootstrap)


def run_audit(config: AuditConfig) -> AuditReport:
    """Audit every model of ``config`` and return the report (nothing is written besides the history).

    Raises:
        ReferenceDataError: the reference store is unusable.
        RegistryError: a model reference does not resolve.
        EndpointError: black-box mode: the endpoint is unreachable or serves no matching model.
    """
    started = time.time()
    if config.endpoint:
        audits = _run_blackbox(config)
        return AuditReport(config.to_dict(), config.policy, audits, _compare(audits), started, time.time())
    registry = Registry(config.registry)
    targets = resolve_models(registry, config.models)
    if not targets:
        raise AuditError("no model version matches the requested references")
    first = registry.card(f"{targets[0][0]}:{targets[0][1]}")
    reference = ReferenceSet(
        config.reference,
        split=config.policy.split,
        limit=config.policy.max_cases,
        class_names=first.class_names,
    )
    state = _Audit(config, registry, reference)
    try:
        audits = [state.audit_model(n, v) for n, v in targets]
    finally:
        state.close()
    return AuditReport(config.to_dict(), config.policy, audits, _compare(audits), started, time.time())


def _run_blackbox(config: AuditConfig) -> list[ModelAudit]:
    """Black-box audits of the endpoint's models matching ``config.models``."""
    assert config.endpoint is not None
    with EndpointClient(
        config.endpoint,
        token=config.endpoint_token,
        timeout_s=config.endpoint_timeout_s,
        retries=config.endpoint_retries,
        jobs=config.jobs,
    ) as client:
        served = select_served(client.models(), config.models)
        registry = None
        if config.registry is not None and Path(config.registry).is_dir():
            registry = Registry(config.registry)
        reference = ReferenceSet(
            config.reference,
            split=config.policy.split,
            limit=config.policy.max_cases,
            class_names=served[0].class_names,
        )
        state = _Audit(config, registry, reference)  # type: ignore[arg-type]
        try:
            return [state.audit_served(info, client, registry) for info in served]
        finally:
            state.close()


def _compare(audits: list[ModelAudit]) -> list[Comparison]:
    comparisons: list[Comparison] = []
    for i in range(len(audits)):
        for j in range(i + 1, len(audits)):
            a, b = audits[i], audits[j]
            comparisons.extend(
                compare_models(
                    a.ref,
                    [r for r in a.results if r.check in PER_CASE_CHECKS],
                    b.ref,
                    [r for r in b.results if r.check in PER_CASE_CHECKS],
                )
            )
    return comparisons
