"""The model card: ``registry/<name>/<version>/card.json`` (docs/architecture.md, "The registry").

One pydantic model, :class:`ModelCard`, holds everything a consumer of a published version needs: what it
is (architecture + kwargs, ``cam_layer``, class names in output order), how to feed it (the
:class:`~mimicry.preprocess.PreprocessSpec` shared with training and serving), where it came from (training
config, seed, replicate group, dataset fingerprint, code version), how good it is (metrics, parity of the
ONNX graph and the twin), the sha256 of its artifacts, and its intended use. Optional sections used by later
stages: ``uncertainty`` (abstention threshold on predictive entropy), ``reference_stats`` (statistics for an
out-of-distribution check), ``iba_stats`` and a free ``extra`` dict.

The card is immutable (frozen) and versioned by ``schema_version``; unknown fields are refused so a typo
cannot silently drop information.

**Seal.** ``artifacts`` holds the sha256 of ``model.onnx`` and ``weights.safetensors``; the card's own
bytes are covered by ``card_sha256``: the sha256 of the exact ``card.json`` bytes with that field's value
replaced by 64 zeros (:func:`seal_card`, :func:`check_card_seal`). Every byte of every artifact is thus
covered, and a mismatch names the file that changed.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mimicry.preprocess import PreprocessSpec

__all__ = [
    "CARD_SCHEMA_VERSION",
    "INTENDED_USE",
    "CodeVersion",
    "ModelCard",
    "OnnxInfo",
    "OnnxTensor",
    "ParityReport",
    "ReferenceStats",
    "UncertaintySpec",
    "check_card_seal",
    "code_version",
    "seal_card",
]

CARD_SCHEMA_VERSION = 1
INTENDED_USE = "research use; not for clinical decisions"

_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_UNSEALED = "0" * 64
# The top-level key is indented by exactly two spaces in ModelCard.to_json(); nested keys by more.
_SEAL_LINE = re.compile(rb'^  "card_sha256": "([0-9a-f]{64})"', re.MULTILINE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxTensor(_Strict):
    """One graph input/output: name, element type and shape (the batch dimension is a string symbol)."""

    name: str
    dtype: Literal["float32"] = "float32"
    shape: list[int | str]


class OnnxInfo(_Strict):
    """How ``model.onnx`` was produced and what its signature is.

    ``inputs``: ``image[N, 1, H, W]``; ``outputs``: ``logits[N, K]``, ``probs[N, K]``, ``cam[N, K, h, w]``.
    """

    opset: int = Field(ge=17)
    ir_version: int = Field(gt=0, description="ONNX IR version of the file (the runtime must support it).")
    exporter: Literal["dynamo", "torchscript"]
    exporter_call: str = Field(description="The torch call that produced the graph.")
    torch_version: str
    onnx_version: str
    onnxruntime_version: str
    inputs: list[OnnxTensor]
    outputs: list[OnnxTensor]
    input_size: tuple[int, int] = Field(description="(H, W) of the model input.")
    num_classes: int = Field(gt=0)
    cam_grid: tuple[int, int] = Field(description="(h, w) of the in-graph Grad-CAM (feature-map grid).")


class ParityReport(_Strict):
    """Maximum absolute differences measured at export (ONNX Runtime vs torch, in-graph vs captum Grad-CAM,
    safetensors twin vs source model) and the tolerances they were held to."""

    batch_sizes: list[int]
    held_batch_size: int
    probs_max_abs_diff: float
    logits_max_abs_diff: float
    cam_vs_torch_max_abs_diff: float
    cam_vs_captum_max_abs_diff: float
    twin_max_abs_diff: float | None = None
    probs_atol: float
    logits_atol: float
    cam_atol: float
    captum_version: str
    onnxruntime_provider: str = "CPUExecutionProvider"


class UncertaintySpec(_Strict):
    """When the model should say "I don't know" (docs/methods.md, "Out-of-distribution and abstain flags").

    Abstain when the predictive entropy ``H(p) = −Σ_c p_c ln p_c`` (nats) of the softmax output exceeds
    ``abstain_threshold``.
    """

    measure: Literal["predictive_entropy"] = "predictive_entropy"
    abstain_threshold: float = Field(ge=0.0)
    calibration: dict[str, Any] = Field(default_factory=dict, description="How the threshold was chosen.")


class ReferenceStats(BaseModel):
    """Reference statistics of the training images / features for an out-of-distribution check.

    The named fields are the common ones; an OOD method may add its own (extra fields are kept).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    n_samples: int = Field(ge=0)
    image_mean: float | None = None
    image_std: float | None = None
    feature_layer: str | None = None
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None


class CodeVersion(_Strict):
    """The code that produced the artifacts (``git_commit`` is ``None`` outside a git checkout)."""

    mimicry: str
    git_commit: str | None = None
    torch: str
    python: str


class ModelCard(_Strict):
    """Everything a published version records (docs/architecture.md, "The registry"); ``card.json``."""

    schema_version: Literal[1] = CARD_SCHEMA_VERSION
    name: str = Field(pattern=_MODEL_NAME)
    version: int = Field(ge=1)
    architecture: str = Field(description="Name registered in mimicry.models.zoo.")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    cam_layer: str = Field(description="Dotted module path of the Grad-CAM feature layer.")
    class_names: list[str] = Field(min_length=1, description="In output (logit) order.")
    preprocessing: PreprocessSpec
    training_config: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    replicate_group: str | None = Field(
        None, description="Same recipe, different seed: versions sharing it are replicates (repeatability)."
    )
    dataset_fingerprint: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)
    artifacts: dict[str, str] = Field(description="File name → sha256 (hex) of every binary artifact.")
    created_at: datetime
    code_version: CodeVersion
    intended_use: str = INTENDED_USE
    uncertainty: UncertaintySpec | None = None
    reference_stats: ReferenceStats | None = None
    onnx: OnnxInfo | None = None
    parity: ParityReport | None = None
    iba_stats: dict[str, Any] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    card_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the card.json bytes with this value set to 64 zeros (see seal_card).",
    )

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_or_none(cls, value: Any) -> Any:
        """NaN / ±inf (e.g. an undefined gaze metric) become ``null`` so ``card.json`` stays strict JSON."""
        if isinstance(value, dict):
            return {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in value.items()
            }
        return value

    @field_validator("artifacts")
    @classmethod
    def _hex_digests(cls, value: dict[str, str]) -> dict[str, str]:
        for fname, digest in value.items():
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"artifact {fname!r}: sha256 must be 64 lower-case hex digits")
        return value

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must be timezone-aware (UTC)")
        return value

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.name}:{self.version}"

    @property
    def black_level(self) -> float:
        """Model-input value of a black pixel under the card's preprocessing, ``(0 − mean) / std``."""
        return (0.0 - self.preprocessing.mean) / self.preprocessing.std

    def to_json(self) -> str:
        """Canonical serialisation written to ``card.json`` (indented, keys in schema order)."""
        return self.model_dump_json(indent=2) + "\n"


def seal_card(card: ModelCard) -> bytes:
    """The ``card.json`` bytes of ``card`` with ``card_sha256`` set to the seal (see the module docstring)."""
    raw = card.model_copy(update={"card_sha256": _UNSEALED}).to_json().encode("utf-8")
    matches = _SEAL_LINE.findall(raw)
    if matches != [_UNSEALED.encode()]:  # pragma: no cover - guaranteed by to_json()
        raise ValueError("cannot locate the card_sha256 field in the serialised card")
    digest = hashlib.sha256(raw).hexdigest()
    return _SEAL_LINE.sub(b'  "card_sha256": "' + digest.encode() + b'"', raw, count=1)


def check_card_seal(raw: bytes) -> str | None:
    """``None`` when the ``card.json`` bytes ``raw`` match their ``card_sha256`` seal, else the problem."""
    matches = list(_SEAL_LINE.finditer(raw))
    if len(matches) != 1:
        return "its card_sha256 seal is missing or duplicated"
    m = matches[0]
    recorded = m.group(1).decode()
    unsealed = raw[: m.start(1)] + _UNSEALED.encode() + raw[m.end(1) :]
    actual = hashlib.sha256(unsealed).hexdigest()
    if actual != recorded:
        return (
            f"its bytes do not match its card_sha256 seal (recorded {recorded[:12]}…, found {actual[:12]}…)"
        )
    return None


def _git_commit() -> str | None:
    """HEAD of the checkout this package runs from; ``MIMICRY_GIT_COMMIT`` wins (containers have no .git)."""
    env = os.environ.get("MIMICRY_GIT_COMMIT")
    if env:
        return env.strip() or None
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", out) else None


def code_version() -> CodeVersion:
    """The running code's version: ``mimicry.__version__``, git commit if available, torch and python."""
    import torch

    from mimicry import __version__

    return CodeVersion(
        mimicry=__version__,
        git_commit=_git_commit(),
        torch=torch.__version__,
        python=platform.python_version(),
    )


def utc_now() -> datetime:
    """Timezone-aware current time (card ``created_at``)."""
    return datetime.now(UTC)
