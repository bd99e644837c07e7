"""The serving pipeline as plain functions (docs/architecture.md, "A request").

DICOM bytes → :func:`ingest` (:func:`mimicry.dicom.read_dicom`: validate, decode, display pipeline, safe
metadata; typed refusal otherwise) → :func:`prepare` (:func:`mimicry.preprocess.preprocess` with the card's
spec: the one preprocessing contract shared with training) → backend (``logits``, ``probs``, in-graph
``cam``) → :func:`prediction_record` (probabilities in card order, uncertainty, provenance) and, for
explanations, :func:`explain_map` (Grad-CAM from the ``cam`` output, occlusion through the backend's forward,
every other method on the torch twin) → :func:`to_source_grid` (the map on the radiograph's own grid).

Nothing here knows about HTTP; :mod:`serving.service` wraps these functions.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mimicry.dicom import XrayImage, read_dicom
from mimicry.models.ensemble import ENSEMBLE_ARCH
from mimicry.preprocess import Letterbox, letterbox, normalise, unletterbox
from mimicry.registry import ModelCard, ModelRef, Registry
from mimicry.saliency import (
    PostProcess,
    SaliencyError,
    explain,
    get_method,
    list_methods,
    occlusion_from_forward,
    upsample,
)
from mimicry.settings import IngestSettings
from serving.backends.protocol import BackendOutput, InferenceBackend
from serving.settings import ServeSettings
from serving.uncertainty import image_statistic, uncertainty_report

__all__ = [
    "DEFAULT_METHOD",
    "ONNX_METHODS",
    "PreparedInput",
    "ServedModel",
    "TargetError",
    "build_backend",
    "explain_map",
    "ingest",
    "load_served_model",
    "offered_methods",
    "parse_params",
    "prediction_record",
    "prepare",
    "resolve_model_refs",
    "resolve_target",
    "to_source_grid",
    "torch_device",
]

#: The method served from the ONNX ``cam`` output (any backend, batched, no gradients).
DEFAULT_METHOD = "gradcam"
#: Methods that need only the backend (``gradcam`` from the in-graph CAM; ``occlusion`` from forwards).
ONNX_METHODS = frozenset({"gradcam", "occlusion"})


class TargetError(ValueError):
    """The requested explanation target is not a class of the model."""


def torch_device(settings: ServeSettings) -> str:
    """The twin's torch device: ``saliency_device`` if set, else CUDA when available and allowed."""
    if settings.saliency_device:
        return settings.saliency_device
    if settings.device != "cpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


@dataclass
class ServedModel:
    """One served model version: its card, its backend, and its lazily loaded torch twin.

    An ensemble (card architecture ``ensemble``) also has a second, private copy of the twin used only for
    :meth:`member_probs` (the disagreement of every prediction): gradient methods on the shared twin
    install hooks (captum) and run for seconds under ``Runtime.twin_limiter``; the copy keeps predictions
    out of both.

    Attributes:
        requested: The reference as configured (``name``, ``name:3``, ``name@production``).
        card: The verified model card.
        backend: The inference backend running ``model.onnx``.
        registry: Where the twin is loaded from.
        twin_device: Torch device of the twin.
    """

    requested: str
    card: ModelCard
    backend: InferenceBackend
    registry: Registry
    twin_device: str = "cpu"
    _twin: Any = field(default=None, repr=False)
    _twin_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _members_twin: Any = field(default=None, repr=False)
    #: Where ensemble member probabilities come from: ``twin`` (default) or ``backend`` (the graph exports
    #: ``member_probs``; set by :func:`warm_up`).
    members_source: str = "twin"

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def is_ensemble(self) -> bool:
        """The card's architecture is :data:`mimicry.models.ensemble.ENSEMBLE_ARCH`."""
        return self.card.architecture == ENSEMBLE_ARCH

    def member_probs(self, x: np.ndarray) -> np.ndarray:
        """Every ensemble member's softmax probabilities ``float32[N, S, K]`` for a preprocessed batch
        ``x[N, 1, S, S]`` (``Ensemble.member_probs`` on the private twin copy, no gradients).

        Raises:
            TypeError: the model is not an ensemble.
        """
        with self._twin_lock:
            if self._members_twin is None:
                if not self.is_ensemble:
                    raise TypeError(f"{self.card.ref} is not an ensemble")
                self._members_twin = self.registry.load_twin(self.card.ref, device=self.twin_device)
            twin = self._members_twin
        device = next(twin.parameters()).device
        with torch.inference_mode():
            members = twin.member_probs(torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device))
        return members.permute(1, 0, 2).float().cpu().numpy()

    @property
    def sha256(self) -> str:
        """sha256 of the served ``model.onnx`` (from the verified card)."""
        return self.card.artifacts.get("model.onnx", "")

    def twin(self) -> torch.nn.Module:
        """The torch twin (verified safetensors), loaded on first use; thread-safe."""
        with self._twin_lock:
            if self._twin is None:
                self._twin = self.registry.load_twin(self.card.ref, device=self.twin_device)
            return self._twin

    def info(self) -> dict[str, Any]:
        """Provenance block of every response."""
        return {
            "name": self.card.name,
            "version": self.card.version,
            "sha256": self.sha256,
            "ref": self.card.ref,
        }


def resolve_model_refs(registry: Registry, refs: list[str]) -> list[str]:
    """The configured references, or ``name`` for every model in the registry when none are configured."""
    if refs:
        return [str(ModelRef.parse(r)) for r in refs]
    return sorted(registry.models())


def build_backend(registry: Registry, card: ModelCard, settings: ServeSettings) -> InferenceBackend:
    """The backend named by ``settings.backend`` for ``card`` (imported lazily: tritonclient is optional)."""
    if settings.backend == "onnxruntime":
        from serving.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(registry.load_onnx_path(card.ref), card, device=settings.device)
    from serving.backends.triton import TritonBackend

    return TritonBackend(
        card,
        url=settings.triton_url,
        protocol=settings.triton_protocol,
        timeout_s=settings.triton_timeout_s,
        health_timeout_s=settings.probe_timeout_s,
        config=registry.config(card.name),
    )


def load_served_model(registry: Registry, ref: str, settings: ServeSettings) -> ServedModel:
    """Resolve ``ref``, verify its artifacts, and open its backend."""
    card = registry.card(ref)
    backend = build_backend(registry, card, settings)
    return ServedModel(ref, card, backend, registry, torch_device(settings))


def warm_up(model: ServedModel, *, members: bool = False) -> BackendOutput:
    """Run one all-black input through the backend (first-call allocations happen before /readyz), and
    with ``members`` (an ensemble whose graph lacks ``member_probs``) through the members' twin too."""
    size = model.card.preprocessing.size
    x = np.full((1, 1, size, size), model.card.black_level, dtype=np.float32)
    out = model.backend.infer(x)
    if out.member_probs is not None:
        model.members_source = "backend"
    elif members:
        out = out.with_members(model.member_probs(x))
    return out


def ingest(data: bytes, settings: IngestSettings, *, min_side: int | None = None) -> XrayImage:
    """DICOM bytes → :class:`~mimicry.dicom.XrayImage` (raises a typed ``DicomIngestError``).

    ``min_side``: see :func:`mimicry.dicom.read_dicom`; :func:`decode_side` gives the value for a model when
    only a prediction is needed (a JPEG 2000 film is then decoded at a reduced resolution level).
    """
    return read_dicom(data, settings=settings, min_side=min_side)


def decode_side(card: ModelCard) -> int:
    """The longer side a film must keep for ``card``'s model: twice its input side, so that the letterbox
    still area-averages (at least 2x2 source pixels per model pixel) after a reduced JPEG 2000 decode."""
    return 2 * int(card.preprocessing.size)


@dataclass(frozen=True)
class PreparedInput:
    """A model input and what is needed to map results back: ``x[1, 1, S, S]``, the letterbox geometry, the
    letterboxed display image (for the OOD statistic) and the source image."""

    x: np.ndarray
    box: Letterbox
    statistic: float
    image: XrayImage


def prepare(image: XrayImage, card: ModelCard) -> PreparedInput:
    """Apply the card's preprocessing (letterbox + normalisation) to one image."""
    spec = card.preprocessing
    boxed, box = letterbox(image.pixels, spec.size, spec.pad_value)  # the one resize of the request
    x = normalise(boxed, spec)
    return PreparedInput(x[None, None], box, image_statistic(boxed), image)


def prediction_record(
    model: ServedModel,
    out: BackendOutput,
    prepared: PreparedInput,
    settings: ServeSettings,
    *,
    member_probs: np.ndarray | None = None,
) -> dict[str, Any]:
    """The JSON body of ``/v1/predict`` for one sample (``out`` is a batch of one).

    ``member_probs`` (``[S, K]``) defaults to ``out.member_probs[0]`` (filled by the runtime for ensembles);
    it feeds the ``uncertainty.disagreement`` report.
    """
    probs = np.asarray(out.probs[0], dtype=np.float64)
    if member_probs is None and out.member_probs is not None:
        member_probs = out.member_probs[0]
    names = model.card.class_names
    idx = int(np.argmax(probs))
    return {
        "model": model.info(),
        "probabilities": {name: float(p) for name, p in zip(names, probs, strict=True)},
        "class_names": list(names),
        "predicted_class": names[idx],
        "predicted_index": idx,
        "uncertainty": uncertainty_report(
            model.card,
            probs,
            statistic=prepared.statistic,
            default_threshold=settings.default_abstain_entropy,
            ood_z_threshold=settings.ood_z_threshold,
            member_probs=member_probs,
            default_disagreement_threshold=settings.default_abstain_disagreement,
            member_source=model.members_source,
        ),
        "instance": prepared.image.meta.to_dict(),
        "intended_use": model.card.intended_use,
    }


def resolve_target(card: ModelCard, target: str | None, predicted_index: int) -> int:
    """``predicted`` / ``None`` → the predicted class; a class name (case-sensitive) or an index → it."""
    if target is None or target == "" or target == "predicted":
        return predicted_index
    if target in card.class_names:
        return card.class_names.index(target)
    if target.isdigit() and int(target) < len(card.class_names):
        return int(target)
    raise TargetError(f"target must be 'predicted', a class index or one of: {', '.join(card.class_names)}")


def offered_methods(settings: ServeSettings) -> list[str]:
    """Saliency methods offered by ``/v1/explain``."""
    registered = list_methods()
    if settings.explain_methods is None:
        return registered
    return [m for m in settings.explain_methods if m in registered]


def parse_params(raw: str | None) -> dict[str, Any]:
    """The ``params`` field (a JSON object of method parameters) → dict."""
    if raw is None or raw.strip() == "":
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError("params must be a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError("params must be a JSON object")
    return value


def explain_map(
    model: ServedModel,
    prepared: PreparedInput,
    out: BackendOutput,
    target: int,
    method: str,
    params: dict[str, Any] | None = None,
) -> np.ndarray:
    """Saliency map ``float32[S, S]`` in ``[0, 1]`` at model-input resolution.

    * ``gradcam``: the in-graph CAM of class ``target`` from the backend's ``cam`` output, bilinearly
      upsampled to the input (Grad-CAM's upsampling, :func:`mimicry.saliency.upsample`) and post-processed
      like the twin's ``gradcam`` method (so both paths give the same map); no parameters.
    * ``occlusion``: :func:`mimicry.saliency.occlusion_from_forward` through the backend.
    * anything else: :func:`mimicry.saliency.explain` on the torch twin.

    Raises:
        SaliencyError (and its subclasses): unknown method/parameters, invalid target.
    """
    params = dict(params or {})
    size = model.card.preprocessing.size
    if method == "gradcam":
        if params:
            raise SaliencyError("gradcam from the ONNX cam output takes no parameters")
        cam = torch.from_numpy(np.array(out.cam[:1, target], dtype=np.float32))  # owned, writable copy
        raw = upsample(cam, (size, size))[:, None]
        return get_method("gradcam").postprocess(raw)[0]
    if method == "occlusion":
        impl = get_method("occlusion")
        unknown = sorted(set(params) - set(impl.defaults))
        if unknown:
            raise SaliencyError(f"occlusion does not take {', '.join(unknown)}")
        kwargs = {k: v for k, v in params.items() if k in ("window", "stride", "baseline", "batch_size")}

        def forward(x: np.ndarray) -> np.ndarray:
            return model.backend.infer(x).probs

        raw_np = occlusion_from_forward(forward, prepared.x, target, **kwargs)
        pp: PostProcess = impl.postprocess
        return pp(raw_np)[0]
    twin = model.twin()
    device = next(twin.parameters()).device
    x = torch.from_numpy(prepared.x).to(device)
    return explain(twin, x, target, method, **params)[0]


def to_source_grid(saliency: np.ndarray, box: Letterbox) -> np.ndarray:
    """A model-resolution map on the source radiograph's grid (letterbox bands cropped), clipped to [0, 1]."""
    return np.clip(unletterbox(saliency, box), 0.0, 1.0).astype(np.float32)


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0
