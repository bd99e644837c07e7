"""``/v1/explain?format=dicom``: the saliency overlay as a DICOM Secondary Capture that references its source.

A thin adapter of :func:`mimicry.dicom.results.build_secondary_capture` (the object, its modules and its UID
rules are documented there and in docs/serving.md, "PACS integration"). The endpoint passes the ``policy`` of
:func:`serving.results.results_policy` (``uid_secret`` + ``results_study``: the source's study by default)
and the served model as ``algorithm``; called with ``salt`` only, the object goes to the de-identified copy
of the source study keyed by that salt. Either way every UID is derived from the source's UIDs and the key,
so all workers sharing the key produce the same study, series and instance.
"""

from __future__ import annotations

import numpy as np

from mimicry.dicom.results import (
    AiAlgorithm,
    UidPolicy,
    build_secondary_capture,
    read_source,
    to_part10,
)
from serving.results import description_algorithm, legacy_policy

__all__ = ["DICOM_MEDIA_TYPE", "secondary_capture"]

DICOM_MEDIA_TYPE = "application/dicom"


def secondary_capture(
    source: bytes,
    overlay: np.ndarray,
    *,
    description: str,
    salt: str | None = None,
    policy: UidPolicy | None = None,
    algorithm: AiAlgorithm | None = None,
    target: str = "",
) -> bytes:
    """Encode ``overlay`` (``uint8[H, W, 3]`` on the source grid) as a Secondary Capture of the source.

    Args:
        source: The request's DICOM bytes (already accepted by :func:`mimicry.dicom.read_dicom`).
        overlay: The RGB overlay on the source grid.
        description: Derivation Description (model, method, target; must not contain PHI).
        salt: Key of the de-identified placement (used when ``policy`` is not given).
        policy: Study placement and UID key (preferred).
        algorithm: The model (keys the UIDs; default: derived from ``description``).
        target: The explained class (keys the instance UID).

    Returns:
        DICOM Part 10 bytes.

    Raises:
        ValueError: neither ``policy`` nor ``salt``; :class:`mimicry.dicom.results.ResultsError` (a
            ``ValueError``) for an overlay off the source grid or a source without UIDs.
    """
    if policy is None:
        if not salt:
            raise ValueError("secondary_capture needs a policy or a salt")
        policy = legacy_policy(salt)
    algo = algorithm if algorithm is not None else description_algorithm(description)
    ds = build_secondary_capture(
        read_source(source), np.asarray(overlay), algo, policy, description=description, target=target
    )
    return to_part10(ds)
