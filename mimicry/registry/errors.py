"""Typed refusals of the model registry and the ONNX exporter.

Messages carry model names, version numbers, artifact file names and numbers only — never image content,
patient data or file contents (CONTRIBUTING.md, "Safety": no PHI in logs or errors).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AliasNotFoundError",
    "CardError",
    "ExportError",
    "ExportParityError",
    "IncompatibleVersionError",
    "IntegrityError",
    "InvalidReferenceError",
    "ModelNotFoundError",
    "PromotionRefusedError",
    "PublishError",
    "RegistryError",
]


class RegistryError(Exception):
    """Base class of every registry / export refusal."""


class InvalidReferenceError(RegistryError, ValueError):
    """A model reference (``name``, ``name:version``, ``name@alias``) or a name/alias that is malformed."""


class ModelNotFoundError(RegistryError, LookupError):
    """The registry has no such model, version or alias."""


class AliasNotFoundError(ModelNotFoundError):
    """``name@alias`` names an alias that is not set for that model."""


class IntegrityError(RegistryError):
    """An artifact of a published version does not match its recorded sha256 (or is missing / unreadable).

    Attributes:
        artifact: File name inside the version directory (``model.onnx``, ``weights.safetensors``,
            ``card.json``), ``config.pbtxt`` of the model directory or ``aliases.json`` of the registry.
        ref: The ``name:version`` whose artifact failed.
    """

    def __init__(self, message: str, *, artifact: str, ref: str) -> None:
        super().__init__(message)
        self.artifact = artifact
        self.ref = ref


class CardError(RegistryError):
    """A ``card.json`` whose bytes are intact but which is not a valid
    :class:`~mimicry.registry.card.ModelCard` (or no longer rebuilds its twin)."""


class IncompatibleVersionError(RegistryError):
    """A new version whose input size / class count / class names / CAM grid differs from the model's
    ``config.pbtxt`` (Triton requires one config for all versions of a model)."""


class PublishError(RegistryError):
    """A publish request that cannot be honoured (bad arguments, a twin that does not rebuild, …)."""


class ExportError(RegistryError):
    """ONNX export failed, or the exported graph does not have the registry's input/output signature."""


class ExportParityError(ExportError):
    """The exported ONNX model (or the safetensors twin) does not reproduce the torch model.

    Attributes:
        check: Which check failed (``"probs"``, ``"logits"``, ``"cam_vs_captum"``, ``"twin"``, …).
        measured: The measured maximum absolute difference.
        tolerance: The tolerance it exceeded.
        details: Every difference measured so far (for the log / the card).
    """

    def __init__(
        self,
        message: str,
        *,
        check: str,
        measured: float,
        tolerance: float,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.check = check
        self.measured = measured
        self.tolerance = tolerance
        self.details = dict(details or {})


class PromotionRefusedError(RegistryError):
    """A promotion gate refused the version (pass ``force=True`` to override, which is recorded)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
