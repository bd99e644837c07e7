"""Classifiers: the :class:`CamClassifier` contract and its implementations.

Every architecture ends in global-average-pool → linear on a named feature layer (``cam_layer``) so that
Grad-CAM is exact as a forward op and exported inside the ONNX graph (DESIGN.md, "Why a twin").
"""

from mimicry.models.base import (
    DEFAULT_CLASS_NAMES,
    CamClassifier,
    ModelContractError,
    assert_contract,
    cam_from_features,
)
from mimicry.models.toy import HalfGate, LeftRightToyNet, ToyCamNet

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "CamClassifier",
    "HalfGate",
    "LeftRightToyNet",
    "ModelContractError",
    "ToyCamNet",
    "assert_contract",
    "cam_from_features",
]
