"""Sources of maps and predictions for the audit runner, each with the capabilities it declares.

A source is what the audit asks for saliency maps (and, where it can, predictions and model internals):

* :class:`TwinSource` — a registry version's torch twin (white-box mode): every capability.
* :class:`EndpointSource` — a model a running mimicry service serves, through
  :class:`audit.blackbox.EndpointClient` (black-box mode): maps of the stored DICOMs (``/v1/explain``,
  ``space=source``) and predictions of edited DICOMs (``/v1/predict``), nothing that needs the weights.

Which checks a source can run follows from its :class:`Capabilities` and :data:`REQUIREMENTS`; a check it
cannot run is N/A with the reason :func:`missing_capability` gives (see docs/audit.md, black-box mode).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from audit.blackbox import (
    EndpointClient,
    EndpointError,
    EndpointRequestError,
    ExplainRequest,
    ServedModelInfo,
)
from audit.checks import (
    CheckResult,
    Explainer,
    onnx_forward,
    runtime_reproducibility,
    torch_forward,
)
from audit.checks.counterfactual import (
    COUNTERFACTUAL_METRICS,
    occlusion_boxes,
    occlusion_row,
    occlusion_scores,
    paint_out_dicom,
)
from audit.errors import AuditError, CheckInputError
from audit.iba_stats import AUDIT_ONLY_PARAMS, method_kwargs
from audit.reference import ReferenceCase
from mimicry.preprocess import Letterbox, PreprocessSpec, unletterbox
from mimicry.registry import ModelCard, Registry, RegistryError
from mimicry.saliency import SaliencyError, explain

if TYPE_CHECKING:
    from audit.scoring import AuditContext, Pairs

__all__ = [
    "ENDPOINT_CAPABILITIES",
    "REQUIREMENTS",
    "Capabilities",
    "CaseMap",
    "EndpointSource",
    "MapSource",
    "OcclusionRow",
    "SourceIdentity",
    "TwinSource",
    "can_run",
    "make_explainer",
    "missing_capability",
    "model_sha256",
]

#: ``(case key, class name, counterfactual scores)`` of one case.
OcclusionRow = tuple[str, str, dict[str, float]]


@dataclass(frozen=True)
class Capabilities:
    """What a source can do beyond returning maps of the reference cases.

    Attributes:
        methods: the saliency methods it explains (``None``: any; a method it refuses fails at run time).
        perturbed_forwards: class probabilities of arbitrary in-memory inputs (faithfulness's deletion and
            insertion curves).
        perturbed_explanations: maps of arbitrary in-memory inputs (robustness to input noise).
        weights: parameters to randomise (cascading / independent randomisation, random logit).
        partners: maps of other registry versions on the same cases (repeatability, reproducibility,
            consistency across replicates).
        occlusion: predictions of a case with its marker painted out (counterfactual).
        runtime_parity: a second runtime of the same model to compare with (runtime reproducibility).
    """

    methods: frozenset[str] | None = None
    perturbed_forwards: bool = False
    perturbed_explanations: bool = False
    weights: bool = False
    partners: bool = False
    occlusion: bool = False
    runtime_parity: bool = False

    def can_explain(self, method: str) -> bool:
        return self.methods is None or method in self.methods


#: check → (the capability it needs, what it needs in words; the N/A reason adds the source's mode).
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "faithfulness": ("perturbed_forwards", "needs model forwards on perturbed inputs"),
    "robustness": ("perturbed_explanations", "needs explanations of noise-perturbed inputs"),
    "cascading_randomisation": ("weights", "needs the model weights"),
    "independent_randomisation": ("weights", "needs the model weights"),
    "random_logit": ("weights", "needs the model weights"),
    "repeatability": ("partners", "needs the model weights"),
    "reproducibility": ("partners", "needs the model weights"),
    "consistency": ("partners", "needs the model weights"),
    "counterfactual": ("occlusion", "needs predictions of edited inputs"),
    "runtime_reproducibility": ("runtime_parity", "needs the served version in the registry"),
}


def can_run(capabilities: Capabilities, check: str) -> bool:
    """Whether a source with ``capabilities`` can run ``check``."""
    need = REQUIREMENTS.get(check)
    return need is None or bool(getattr(capabilities, need[0]))


def missing_capability(source: MapSource, check: str) -> str | None:
    """Why ``source`` cannot run ``check`` (``None``: it can)."""
    if can_run(source.capabilities, check):
        return None
    return f"{REQUIREMENTS[check][1]} ({source.mode_label})"


@dataclass(frozen=True)
class SourceIdentity:
    """The audited model as the history and the report name it.

    ``sha256``: the cache key's model part (white-box: :func:`model_sha256` of the card; black-box: the
    served ``model.onnx``). ``run_config``: extra entries of the history's run configuration.
    """

    name: str
    version: int
    sha256: str
    architecture: str
    class_names: tuple[str, ...]
    spec: PreprocessSpec
    endpoint: str | None = None
    run_config: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass
class CaseMap:
    """One method's map of one case: at model resolution (``model``, ``None`` when the source returns only
    the native grid) and on the native grid (``native``), with the explained class."""

    target_class: str
    model: np.ndarray | None = None
    letterbox: Letterbox | None = None
    target: int | None = None
    given_native: np.ndarray | None = None

    @cached_property
    def native(self) -> np.ndarray:
        if self.given_native is not None:
            return self.given_native
        assert self.model is not None
        assert self.letterbox is not None
        return unletterbox(self.model, self.letterbox)


class MapSource(ABC):
    """The boundary the scoring loop talks to (see :mod:`audit.scoring`); subclasses implement the abstract
    hooks (``explain``, ``occlusion_rows``, ``runtime_parity``) and may override the others."""

    mode: str = "whitebox"  #: recorded in the report, and in the cache key when not ``whitebox``
    mode_label: str = "white-box mode"  #: closes the N/A reasons
    identity: SourceIdentity
    capabilities: Capabilities
    #: probabilities of in-memory inputs (``float32[N, 1, S, S]``) when ``perturbed_forwards``
    forward: Callable[[np.ndarray], np.ndarray] | None = None

    def open(self, methods: Sequence[str]) -> dict[str, str]:
        """Prepare ``methods``; returns the error message of each method that cannot run."""
        return {
            m: f"method {m}: not offered by this source"
            for m in methods
            if not self.capabilities.can_explain(m)
        }

    def targets(self, cases: Sequence[ReferenceCase]) -> list[int] | None:
        """The class index each case is explained for, when the source decides it up front (else ``None``)."""
        return None

    @abstractmethod
    def explain(
        self,
        need: dict[str, list[int]],
        cases: Sequence[ReferenceCase],
        positions: Sequence[int],
        targets: list[int] | None,
    ) -> dict[str, dict[int, CaseMap] | str]:
        """Maps of ``cases[j]`` for each ``j in need[method]``, or the method's error message if it failed."""

    @abstractmethod
    def occlusion_rows(
        self, positions: Sequence[int], cases: Sequence[ReferenceCase], errors: list[str]
    ) -> list[OcclusionRow] | None:
        """Counterfactual rows of one chunk (``None``: stop the check; the reason is in ``errors``)."""

    @abstractmethod
    def runtime_parity(self, ctx: AuditContext, pairs: Pairs, k: int) -> CheckResult | None:
        """``runtime_reproducibility`` against a second runtime (``None``: not run)."""


def model_sha256(card: ModelCard) -> str:
    """Identity of a version's artifacts: sha256 over its sorted ``artifact=sha256`` lines."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(card.artifacts.items()))
    return hashlib.sha256(text.encode()).hexdigest()


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


def class_name(names: Sequence[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else str(i)


def twin_targets(ctx: AuditContext, model: torch.nn.Module, cases: Sequence[ReferenceCase]) -> list[int]:
    """The labelled class (policy ``target: label``) or the twin's predicted class of each case."""
    if ctx.policy.target == "label":
        return [c.label_index for c in cases]
    x = torch.from_numpy(np.stack([c.x for c in cases]))
    with torch.no_grad():
        return [int(t) for t in model(x).argmax(dim=1)]


def twin_method_params(
    ctx: AuditContext, method: str, card: ModelCard, twin: torch.nn.Module
) -> dict[str, Any]:
    """``explain`` keyword arguments of ``method`` for ``card``'s twin (IBA: with layer statistics)."""
    return method_kwargs(
        method,
        ctx.policy.method_params.get(method),
        model=twin,
        model_sha256=model_sha256(card),
        spec=card.preprocessing,
        provider=ctx.iba,
        card_stats=card.iba_stats,
    )


class TwinSource(MapSource):
    """A registry version's torch twin (white-box mode): maps, forwards, weights, partners, ONNX parity."""

    mode = "whitebox"
    mode_label = "white-box mode"

    def __init__(self, ctx: AuditContext, registry: Registry, card: ModelCard) -> None:
        self.ctx = ctx
        self.registry = registry
        self.card = card
        self.identity = SourceIdentity(
            card.name,
            card.version,
            model_sha256(card),
            card.architecture,
            tuple(card.class_names),
            card.preprocessing,
        )
        self.capabilities = Capabilities(
            perturbed_forwards=True,
            perturbed_explanations=True,
            weights=True,
            partners=True,
            occlusion=True,
            runtime_parity=True,
        )
        self.explainers: dict[str, Explainer] = {}
        self.twin: torch.nn.Module | None = None

    def open(self, methods: Sequence[str]) -> dict[str, str]:
        self.twin = twin = self.registry.load_twin(self.card.ref)
        self.forward = _numpy_forward(twin)
        failed = super().open(methods)
        for m in methods:
            if m in failed:
                continue
            try:
                self.explainers[m] = make_explainer(m, twin_method_params(self.ctx, m, self.card, twin))
            except (AuditError, SaliencyError, ValueError, RuntimeError) as exc:
                failed[m] = f"method {m}: {type(exc).__name__}: {exc}"
        return failed

    def targets(self, cases: Sequence[ReferenceCase]) -> list[int]:
        assert self.twin is not None
        return twin_targets(self.ctx, self.twin, cases)

    def explain(
        self,
        need: dict[str, list[int]],
        cases: Sequence[ReferenceCase],
        positions: Sequence[int],
        targets: list[int] | None,
    ) -> dict[str, dict[int, CaseMap] | str]:
        assert targets is not None
        assert self.twin is not None
        names = self.identity.class_names
        out: dict[str, dict[int, CaseMap] | str] = {}
        for m, js in need.items():
            if not js:
                out[m] = {}
                continue
            x = torch.from_numpy(np.stack([cases[j].x for j in js]))
            tt = torch.tensor([targets[j] for j in js], dtype=torch.long)
            try:
                maps = self.explainers[m](self.twin, x, tt)
            except (SaliencyError, ValueError, RuntimeError) as exc:
                out[m] = f"method {m}: {type(exc).__name__}: {exc}"
                continue
            out[m] = {
                j: CaseMap(class_name(names, targets[j]), maps[i], cases[j].letterbox, targets[j])
                for i, j in enumerate(js)
            }
        return out

    def occlusion_rows(
        self, positions: Sequence[int], cases: Sequence[ReferenceCase], errors: list[str]
    ) -> list[OcclusionRow]:
        """The twin's predictions of each decoded case with the marker box / its mirror painted out."""
        assert self.forward is not None
        names = self.identity.class_names
        scores = occlusion_scores(self.forward, cases, self.identity.spec)
        return [(c.key, class_name(names, c.label_index), sc) for c, sc in zip(cases, scores, strict=True)]

    def runtime_parity(self, ctx: AuditContext, pairs: Pairs, k: int) -> CheckResult | None:
        """The torch twin vs ONNX Runtime on the pairwise cases (not run with fewer than two)."""
        if k < 2 or not pairs.x:
            return None
        assert self.twin is not None
        onnx = onnx_forward(self.registry.load_onnx_path(self.card.ref))
        return runtime_reproducibility(
            torch_forward(self.twin), onnx, pairs.x, pairs.t, pairs.keys, bootstrap=ctx.bootstrap
        )


#: What every served model offers: maps of stored DICOMs and predictions of edited ones (``runtime_parity``
#: is added per model when the registry holds the served version).
ENDPOINT_CAPABILITIES = Capabilities(occlusion=True)


class EndpointSource(MapSource):
    """A model served by a running mimicry service (black-box mode; see :mod:`audit.blackbox`).

    ``runtime_parity`` is declared when ``registry`` holds the served version with the same ``model.onnx``
    sha256: the registry's torch twin is then compared with the service.
    """

    mode = "blackbox"
    mode_label = "black-box mode"

    def __init__(
        self, ctx: AuditContext, info: ServedModelInfo, client: EndpointClient, registry: Registry | None
    ) -> None:
        self.ctx = ctx
        self.info = info
        self.client = client
        self.registry = registry
        self.identity = SourceIdentity(
            info.name,
            info.version,
            info.sha256,
            info.architecture,
            tuple(info.class_names),
            info.card.preprocessing if info.card is not None else PreprocessSpec(),
            endpoint=client.url,
            run_config={"served": info.requested},
        )
        self.served_card = self._served_card()
        self.capabilities = dataclasses.replace(
            ENDPOINT_CAPABILITIES, runtime_parity=self.served_card is not None
        )

    def _served_card(self) -> ModelCard | None:
        """The registry's card of the served version, when its ``model.onnx`` is the same."""
        if self.registry is None:
            return None
        try:
            card = self.registry.card(self.info.ref)
        except (RegistryError, ValueError):  # not in the registry, or a card this version cannot read
            return None
        return card if card.artifacts.get("model.onnx") == self.info.sha256 else None

    def _target_param(self, case: ReferenceCase) -> str:
        names = self.identity.class_names
        if self.ctx.policy.target == "label" and 0 <= case.label_index < len(names):
            return names[case.label_index]
        return "predicted"

    def _same_model(self, answer: Any) -> None:
        if answer.model.get("sha256") != self.info.sha256:
            raise EndpointError("the endpoint's model changed during the audit (sha256 differs)")

    def explain(
        self,
        need: dict[str, list[int]],
        cases: Sequence[ReferenceCase],
        positions: Sequence[int],
        targets: list[int] | None,
    ) -> dict[str, dict[int, CaseMap] | str]:
        """All methods' requests of the chunk in one concurrent batch (``/v1/explain``, native grid)."""
        jobs = [(m, j) for m, js in need.items() for j in js]
        dicoms = {j: self.ctx.reference.dicom_bytes(positions[j]) for j in sorted({j for _, j in jobs})}
        params = {
            m: {
                k: v
                for k, v in self.ctx.policy.method_params.get(m, {}).items()
                if k not in AUDIT_ONLY_PARAMS
            }
            for m in need
        }
        answers = self.client.explain_many(
            [
                ExplainRequest(
                    dicoms[j],
                    model=self.info.requested,
                    method=m,
                    target=self._target_param(cases[j]),
                    space="source",
                    params=params[m],
                )
                for m, j in jobs
            ]
        )
        out: dict[str, dict[int, CaseMap] | str] = {m: {} for m in need}
        for (m, j), ans in zip(jobs, answers, strict=True):
            got = out[m]
            if isinstance(ans, EndpointRequestError):
                if not isinstance(got, str):
                    out[m] = f"method {m}: {ans}"
                continue
            if isinstance(ans, EndpointError):
                raise ans
            self._same_model(ans)
            if isinstance(got, str):
                continue
            if ans.map.shape != cases[j].shape:
                raise EndpointError(
                    f"the endpoint's map has shape {ans.map.shape}, the DICOM {cases[j].shape}"
                )
            got[j] = CaseMap(ans.target_class, given_native=ans.map)
        return out

    def occlusion_rows(
        self, positions: Sequence[int], cases: Sequence[ReferenceCase], errors: list[str]
    ) -> list[OcclusionRow] | None:
        """Each stored DICOM, and copies with the marker box / its mirror painted out
        (:func:`audit.checks.counterfactual.paint_out_dicom`), sent to ``/v1/predict``.

        A case whose DICOM cannot be edited keeps NaN scores and adds a message (position, not case id) to
        ``errors``; the other cases are still scored. A refused request stops the check (``None``).

        Raises:
            EndpointError: an answer failed, came from another model version (sha256), or named other classes.
        """
        try:
            return self._occlusion_rows(positions, cases, errors)
        except EndpointRequestError as exc:  # the service refused an edited DICOM: stop the check
            errors.append(f"counterfactual: {exc}")
            return None

    def _occlusion_rows(
        self, positions: Sequence[int], cases: Sequence[ReferenceCase], errors: list[str]
    ) -> list[OcclusionRow]:
        names = self.identity.class_names
        empty = dict.fromkeys(COUNTERFACTUAL_METRICS, math.nan)
        rows = [(c.key, class_name(names, c.label_index), dict(empty)) for c in cases]
        payloads: list[bytes] = []
        scored: list[int] = []
        for j, (pos, c) in enumerate(zip(positions, cases, strict=True)):
            boxes = occlusion_boxes(c.marker) if c.marker is not None else None
            if boxes is None:
                continue
            original = self.ctx.reference.dicom_bytes(pos)
            try:
                edited = [paint_out_dicom(original, box) for box in boxes]
            except CheckInputError as exc:
                errors.append(f"counterfactual: reference case #{pos}: {exc}")
                continue
            payloads += [original, *edited]
            scored.append(j)
        answers = self.client.predict_many(payloads, model=self.info.requested)
        for ans in answers:
            if isinstance(ans, EndpointError):
                raise ans
            self._same_model(ans)
            if ans.class_names != names:
                raise EndpointError(f"/v1/predict named classes {list(ans.class_names)}, not {list(names)}")
        for i, j in enumerate(scored):
            orig, painted, control = (a.probabilities for a in answers[3 * i : 3 * i + 3])  # type: ignore[union-attr]
            rows[j] = (rows[j][0], rows[j][1], occlusion_row(orig, painted, control))
        return rows

    def runtime_parity(self, ctx: AuditContext, pairs: Pairs, k: int) -> CheckResult | None:
        """The registry's torch twin vs the service on the first ``k`` cases: ``probs_max_abs_diff``
        (softmax vs the service's probabilities) and ``cam_max_abs_diff`` (the twin's ``gradcam`` vs the
        service's, both at model resolution) — ``details["runtime"] = "service"``."""
        assert self.registry is not None
        assert self.served_card is not None
        card = self.served_card
        twin = self.registry.load_twin(card.ref)
        cases = [ctx.reference.case(i, card.preprocessing) for i in range(k)]
        targets = twin_targets(ctx, twin, cases)
        answers = self.client.explain_many(
            [
                ExplainRequest(
                    ctx.reference.dicom_bytes(i),
                    model=self.info.requested,
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
        result.details["endpoint"] = self.client.url
        return result.summarise(ctx.bootstrap)
