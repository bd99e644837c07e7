"""Inference backends behind one protocol (:class:`~serving.backends.protocol.InferenceBackend`)."""

from serving.backends.protocol import (
    BackendError,
    BackendOutput,
    BackendUnavailableError,
    CircuitOpenError,
    DeadlineExceededError,
    InferenceBackend,
    ModelMismatchError,
)

__all__ = [
    "BackendError",
    "BackendOutput",
    "BackendUnavailableError",
    "CircuitOpenError",
    "DeadlineExceededError",
    "InferenceBackend",
    "ModelMismatchError",
]
