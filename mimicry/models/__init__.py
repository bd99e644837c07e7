"""Classifiers: the :class:`CamClassifier` contract and its implementations.

Every architecture ends in global-average-pool → linear on a named feature layer (``cam_layer``) so that
Grad-CAM is exact as a forward op and exported inside the ONNX graph (docs/architecture.md, "Why a twin").

Importing this package registers every built-in architecture in :mod:`mimicry.models.zoo`: ``toy``,
``toy_left_right``, ``unet``, ``unet_tiny``, ``unet_egd``, ``unet_egd_tiny`` (:mod:`mimicry.models.unet`),
``densenet``, ``densenet121``, ``densenet_tiny`` (:mod:`mimicry.models.densenet`) and ``ensemble``
(:mod:`mimicry.models.ensemble`). MONAI is imported only when a UNet or DenseNet is built.
"""

from mimicry.models.base import (
    DEFAULT_CLASS_NAMES,
    CamClassifier,
    ModelContractError,
    assert_contract,
    cam_from_features,
)
from mimicry.models.densenet import DenseNetClassifier, densenet121, densenet_tiny
from mimicry.models.ensemble import ENSEMBLE_ARCH, Ensemble, build_ensemble
from mimicry.models.toy import HalfGate, LeftRightToyNet, ToyCamNet
from mimicry.models.unet import (
    EfficientNetStages,
    EgdUNetClassifier,
    InputSizeError,
    UNetClassifier,
    unet_egd_tiny,
    unet_tiny,
)

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "ENSEMBLE_ARCH",
    "CamClassifier",
    "DenseNetClassifier",
    "EfficientNetStages",
    "EgdUNetClassifier",
    "Ensemble",
    "HalfGate",
    "InputSizeError",
    "LeftRightToyNet",
    "ModelContractError",
    "ToyCamNet",
    "UNetClassifier",
    "assert_contract",
    "build_ensemble",
    "cam_from_features",
    "densenet121",
    "densenet_tiny",
    "unet_egd_tiny",
    "unet_tiny",
]
