"""Pydantic models of the HTTP answers (the response models of :mod:`serving.http`; FastAPI turns them into
the component schemas of ``GET /docs.json``).

Every model allows extra members (``extra="allow"``): the routes validate their answers against these models,
and a member added to the pipeline's record is passed through rather than silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Disagreement",
    "Explanation",
    "ModelEntry",
    "ModelInfo",
    "ModelList",
    "Prediction",
    "Problem",
    "Readiness",
    "StowPrediction",
    "StowWithPredictions",
    "Uncertainty",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Problem(_Open):
    """RFC 9457 problem details (media type ``application/problem+json``)."""

    type: str = Field(description="Problem type (relative URI reference, /problems/<code>).")
    title: str
    status: int
    detail: str = ""
    code: str = Field(description="Stable snake_case error code (docs/serving.md, 'Error codes').")


class ModelInfo(_Open):
    name: str
    version: int
    sha256: str
    ref: str | None = None


class Disagreement(_Open):
    """Ensemble disagreement (absent/null for a single model)."""

    measure: Literal["mutual_information"]
    value: float = Field(description="Mutual information H(mean) - mean H(member), nats.")
    mutual_information: float | None = None
    mean_pairwise_tv: float | None = None
    max_member_tv: float | None = None
    members: int
    member_probabilities: list[list[float]] | None = None
    threshold: float | None = None
    threshold_source: Literal["card", "settings", "none"] | None = None
    abstain: bool | None = None
    source: Literal["twin", "backend"] | None = None


class OutOfDistribution(_Open):
    method: str
    statistic: float
    z: float
    threshold: float
    ood: bool


class Uncertainty(_Open):
    predictive_entropy: float
    normalized_entropy: float | None = None
    abstain_threshold: float | None = None
    threshold_source: Literal["card", "settings", "none"] | None = None
    abstain: bool | None
    abstain_reasons: list[Literal["predictive_entropy", "disagreement"]] = []
    disagreement: Disagreement | None = None
    ood: OutOfDistribution | None = None


class Prediction(_Open):
    """``POST /v1/predict``: one prediction."""

    model: ModelInfo
    probabilities: dict[str, float] = Field(description="Per-class probability, in card order.")
    class_names: list[str] = []
    predicted_class: str
    predicted_index: int | None = None
    uncertainty: Uncertainty
    instance: dict[str, Any] = Field({}, description="PHI-free metadata (hashed SOP Instance UID).")
    intended_use: str | None = None
    timings_ms: dict[str, float] = {}


class SaliencyMap(_Open):
    encoding: Literal["png16", "float16"]
    data: str = Field(description="Base64: a 16-bit PNG (value/scale) or little-endian float16.")
    scale: int | None = None
    dtype: str | None = None
    shape: list[int]
    space: Literal["source", "model"]


class Target(_Open):
    class_: str = Field(alias="class")
    index: int


class Explanation(_Open):
    """``POST /v1/explain`` with ``format=json``."""

    model: ModelInfo
    method: str
    target: Target
    map: SaliencyMap
    indicators: dict[str, float] = {}
    prediction: dict[str, Any] = {}
    timings_ms: dict[str, float] = {}


class ModelEntry(_Open):
    name: str
    version: int
    requested: str | None = None
    default: bool = False
    backend: str
    provider: str
    sha256: str
    methods: list[str] = Field(description="Saliency methods /v1/explain can run for this model.")
    card: dict[str, Any] = Field(description="The model card (mimicry.registry.ModelCard).")


class ModelList(_Open):
    models: list[ModelEntry]


class ReadyModel(_Open):
    name: str
    version: int
    backend: str
    provider: str
    ready: bool


class Readiness(_Open):
    ready: bool
    pid: int | None = None
    models: list[ReadyModel] = []


class StowPrediction(_Open):
    """The outcome of one body part of a STOW-RS request, in request order."""

    index: int
    status: Literal["stored", "failed"]
    prediction: Prediction | None = None
    problem: Problem | None = None


class StowWithPredictions(_Open):
    """``POST /dicomweb/studies?include=predictions``: the standard STOW-RS answer plus the predictions."""

    dicom: dict[str, Any] = Field(description="The PS3.18 STOW-RS response (DICOM JSON dataset).")
    predictions: list[StowPrediction]
