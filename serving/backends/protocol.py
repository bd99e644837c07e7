"""The one protocol every inference backend implements (onnxruntime | triton; docs/serving.md).

A backend runs the registry's ONNX graph — ``image[N, 1, H, W] float32`` in, ``logits[N, K]``,
``probs[N, K]`` and ``cam[N, K, h, w]`` out (the in-graph Grad-CAM) — for one model version, and says which
execution provider actually ran it (reported by ``/readyz`` details and ``mimicry_model_info``).

Ensembles: a graph that also exports ``member_probs[N, S, K]`` (every sub-model's softmax, batch first)
hands it through :attr:`BackendOutput.member_probs`; today's registry export has no such output, so the
runtime fills it from the torch twin (:meth:`serving.pipeline.ServedModel.member_probs`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BackendError",
    "BackendOutput",
    "BackendUnavailableError",
    "CircuitOpenError",
    "DeadlineExceededError",
    "InferenceBackend",
    "ModelMismatchError",
]


class BackendError(Exception):
    """Base class of backend failures (never caused by the request content)."""


class BackendUnavailableError(BackendError):
    """The backend cannot be reached or is not ready (answered 503 with ``Retry-After``).

    Attributes:
        retry_after_s: When a retry may succeed (seconds, >= 1), if the raiser knows better than the
            configured ``retry_after_s`` (e.g. the time until an open circuit breaker lets a trial through).
    """

    def __init__(self, message: str = "", *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(BackendUnavailableError):
    """A backend call did not return within its deadline (the configured timeout); the call was abandoned
    (its thread finishes on the client's own network timeout) and counted as a failure by the breaker.

    Attributes:
        timeout_s: The deadline that expired.
    """

    def __init__(self, message: str, *, timeout_s: float, retry_after_s: int | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.timeout_s = timeout_s


class CircuitOpenError(BackendUnavailableError):
    """Refused without calling the backend: its circuit breaker is open (the backend is down, hung or
    failing) or a half-open trial call is already in flight."""


class ModelMismatchError(BackendError):
    """The backend's model metadata disagrees with the model card (refused at start-up)."""


@dataclass(frozen=True)
class BackendOutput:
    """Outputs of one batch: ``logits[N, K]``, ``probs[N, K]``, ``cam[N, K, h, w]`` (float32), and for an
    ensemble optionally ``member_probs[N, S, K]`` (each sub-model's probabilities; ``None`` otherwise)."""

    logits: np.ndarray
    probs: np.ndarray
    cam: np.ndarray
    member_probs: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def row(self, i: int) -> BackendOutput:
        """Sample ``i`` as a batch of one."""
        members = None if self.member_probs is None else self.member_probs[i : i + 1]
        return BackendOutput(self.logits[i : i + 1], self.probs[i : i + 1], self.cam[i : i + 1], members)

    def with_members(self, member_probs: np.ndarray) -> BackendOutput:
        """A copy with ``member_probs[N, S, K]`` attached."""
        if member_probs.ndim != 3 or member_probs.shape[0] != len(self):
            raise ValueError(f"member_probs must be [N={len(self)}, S, K], got {member_probs.shape}")
        return replace(self, member_probs=member_probs)

    @staticmethod
    def concat(parts: list[BackendOutput]) -> BackendOutput:
        members = [p.member_probs for p in parts]
        return BackendOutput(
            np.concatenate([p.logits for p in parts]),
            np.concatenate([p.probs for p in parts]),
            np.concatenate([p.cam for p in parts]),
            None if any(m is None for m in members) else np.concatenate(members),  # type: ignore[arg-type]
        )


@runtime_checkable
class InferenceBackend(Protocol):
    """What :mod:`serving.pipeline` needs from a backend."""

    #: ``"onnxruntime"`` or ``"triton"``.
    name: str

    @property
    def provider(self) -> str:
        """The execution provider that runs the graph (``CPUExecutionProvider``, ``CUDAExecutionProvider``,
        ``triton:<platform>``)."""
        ...

    def infer(self, x: np.ndarray) -> BackendOutput:
        """Run the graph on ``x`` (``float32[N, 1, H, W]``, any ``N >= 1``).

        Raises:
            BackendUnavailableError: the backend cannot be reached.
        """
        ...

    def is_ready(self) -> bool:
        """Cheap readiness check (``/readyz``)."""
        ...

    def close(self) -> None:
        """Release sessions / connections."""
        ...
