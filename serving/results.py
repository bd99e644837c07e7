"""Serving adapter of :mod:`mimicry.dicom.results`: one received DICOM → the AI result objects (Structured
Report, saliency Segmentation, optionally the Secondary Capture overlay) that go back to the PACS.

Used in-process by the DICOM listener (:func:`analyse`, :mod:`serving.dimse`) and by STOW-RS after its batched
prediction (:func:`results_of`, :mod:`serving.http`), and for ``/v1/explain?format=dicom`` (the policy and the
algorithm): the settings
give the UID policy (``uid_secret``, ``results_study``), the model gives the algorithm identification, the
prediction record of :func:`serving.pipeline.prediction_record` gives the findings. docs/serving.md, "PACS
integration", lists the objects.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from mimicry.dicom.results import (
    AiAlgorithm,
    AiFindings,
    UidPolicy,
    build_secondary_capture,
    build_segmentation,
    build_sr,
    read_source,
    to_part10,
)
from serving import pipeline, render
from serving.pipeline import ServedModel
from serving.settings import ServeSettings

__all__ = [
    "ResultObjects",
    "algorithm_of",
    "analyse",
    "findings_of",
    "legacy_policy",
    "results_of",
    "results_policy",
]

logger = logging.getLogger(__name__)
_warned = False


def results_policy(settings: ServeSettings) -> UidPolicy:
    """The UID policy of the settings: ``uid_secret`` (else, with a warning, the ingest ``uid_salt``)."""
    global _warned
    secret = settings.uid_secret
    if secret is None:
        if not _warned:
            logger.warning(
                "MIMICRY_SERVE_UID_SECRET is not set: result UIDs are keyed by the ingest uid_salt, "
                "which differs between processes unless set"
            )
            _warned = True
        secret = settings.ingest.uid_salt
    return UidPolicy(secret=secret.get_secret_value(), study=settings.results_study)


def legacy_policy(salt: str) -> UidPolicy:
    """The de-identified placement keyed by ``salt`` (what ``/v1/explain?format=dicom`` has always done)."""
    return UidPolicy(secret=salt, study="deidentified")


def algorithm_of(model: ServedModel, method: str) -> AiAlgorithm:
    """The served model as TID 4019 algorithm identification."""
    return AiAlgorithm(
        name=model.card.name, version=str(model.card.version), sha256=model.sha256, method=method
    )


def description_algorithm(description: str) -> AiAlgorithm:
    """A stand-in algorithm for callers that only have a description (its hash keys the UIDs)."""
    digest = hashlib.sha256(description.encode("utf-8")).hexdigest()
    return AiAlgorithm(name="mimicry", version="unknown", sha256=digest, method="unknown")


def findings_of(record: dict[str, Any]) -> AiFindings:
    """The findings of a prediction record (probabilities in card order, predicted class, flags)."""
    names = tuple(record["class_names"])
    unc = record.get("uncertainty") or {}
    ood = unc.get("ood")
    return AiFindings(
        class_names=names,
        probabilities=tuple(float(record["probabilities"][n]) for n in names),
        predicted_index=int(record["predicted_index"]),
        abstain=unc.get("abstain"),
        ood=None if not ood else ood.get("ood"),
    )


@dataclass
class ResultObjects:
    """The result objects of one image and the prediction record they were built from."""

    record: dict[str, Any]
    sr: Dataset
    seg: Dataset
    sc: Dataset | None = None

    def datasets(self) -> list[Dataset]:
        return [d for d in (self.sr, self.seg, self.sc) if d is not None]

    def part10(self) -> list[bytes]:
        """Every object as DICOM Part 10 bytes (SR, Segmentation, then the Secondary Capture if built)."""
        return [to_part10(d) for d in self.datasets()]


def analyse(
    data: bytes,
    model: ServedModel,
    settings: ServeSettings,
    *,
    method: str = pipeline.DEFAULT_METHOD,
    threshold: float = 0.5,
    secondary_capture: bool = False,
) -> ResultObjects:
    """Ingest, infer, explain (the predicted class) and build the result objects of one DICOM, in-process.

    Raises:
        mimicry.dicom.DicomIngestError: the DICOM is refused (typed, no PHI).
        mimicry.dicom.results.ResultsError: the source lacks a UID the results must reference.
    """
    image = pipeline.ingest(data, settings.ingest)
    prepared = pipeline.prepare(image, model.card)
    out = model.backend.infer(prepared.x)
    if model.is_ensemble and settings.ensemble_disagreement and out.member_probs is None:
        out = out.with_members(model.member_probs(prepared.x))
    record = pipeline.prediction_record(model, out, prepared, settings)
    return results_of(
        data,
        model,
        settings,
        record,
        prepared,
        out,
        method=method,
        threshold=threshold,
        secondary_capture=secondary_capture,
    )


def results_of(
    data: bytes,
    model: ServedModel,
    settings: ServeSettings,
    record: dict[str, Any],
    prepared: pipeline.PreparedInput,
    out: Any,
    *,
    method: str = pipeline.DEFAULT_METHOD,
    threshold: float = 0.5,
    secondary_capture: bool = False,
) -> ResultObjects:
    """The result objects of a DICOM already predicted (``record``, ``prepared`` and the backend output
    ``out`` of the same image): explain the predicted class and build the SR, the Segmentation and
    optionally the Secondary Capture. What the HTTP paths call after their (batched) inference.

    Raises:
        mimicry.dicom.results.ResultsError: the source lacks a UID the results must reference.
    """
    target = int(record["predicted_index"])
    smap = pipeline.explain_map(model, prepared, out, target, method)
    grid = pipeline.to_source_grid(smap, prepared.box)
    del smap
    source = read_source(data)
    policy = results_policy(settings)
    algorithm = algorithm_of(model, method)
    target_name = model.card.class_names[target]
    sr = build_sr(source, findings_of(record), algorithm, policy)
    seg = build_segmentation(source, grid, algorithm, policy, target=target_name, threshold=threshold)
    sc = None
    if secondary_capture:
        rgb = render.overlay_rgb(prepared.image.pixels, grid)
        description = f"{method} saliency of class {target_name} by {model.card.ref} (mimicry; research use)"
        sc = build_secondary_capture(
            source, np.asarray(rgb), algorithm, policy, description=description, target=target_name
        )
    return ResultObjects(record=record, sr=sr, seg=seg, sc=sc)
