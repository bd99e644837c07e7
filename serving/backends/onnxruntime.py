"""In-process ONNX Runtime backend.

Provider choice (``onnxruntime-gpu`` silently falls back to CPU, so the
provider is read back from ``session.get_providers()``, never assumed):

* ``device="cpu"`` → ``CPUExecutionProvider``;
* ``device="cuda"`` → ``CUDAExecutionProvider`` first; start-up fails when the session does not use it;
* ``device="auto"`` → CUDA when ``onnxruntime.get_available_providers()`` offers it, else CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mimicry.registry import ModelCard
from serving.backends.protocol import BackendError, BackendOutput, ModelMismatchError

__all__ = ["OnnxRuntimeBackend", "select_providers"]

logger = logging.getLogger(__name__)

_OUTPUTS = ("logits", "probs", "cam")
#: Optional ensemble output ``[N, S, K]`` (see :mod:`serving.backends.protocol`).
MEMBER_OUTPUT = "member_probs"


def select_providers(device: str, available: list[str] | None = None) -> list[str]:
    """Execution providers to request for ``device`` (``auto``/``cpu``/``cuda``), in priority order."""
    available = list(ort.get_available_providers()) if available is None else available
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """One ``onnxruntime.InferenceSession`` for one model version.

    Args:
        onnx_path: The verified ``model.onnx`` (from :meth:`mimicry.registry.Registry.load_onnx_path`).
        card: Its model card; the graph's input/output names and class count are checked against it.
        device: ``auto``, ``cpu`` or ``cuda``.
        intra_op_threads: ONNX Runtime intra-op threads (0 = its default).

    Raises:
        BackendError: CUDA was required but the session runs on CPU.
        ModelMismatchError: the graph's signature disagrees with the card.
    """

    name = "onnxruntime"

    def __init__(
        self, onnx_path: Path, card: ModelCard, *, device: str = "auto", intra_op_threads: int = 0
    ) -> None:
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        self.card = card
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=opts, providers=select_providers(device)
        )
        used = self.session.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in used:
            raise BackendError("device='cuda' but ONNX Runtime runs this model on " + ", ".join(used))
        self._provider = used[0]
        self._input = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self._fetch = list(_OUTPUTS) + ([MEMBER_OUTPUT] if MEMBER_OUTPUT in outputs else [])
        missing = [n for n in _OUTPUTS if n not in outputs]
        if missing:
            raise ModelMismatchError(f"{card.ref}: the ONNX graph lacks outputs {missing}")
        if card.onnx is not None:
            expected_in = card.onnx.inputs[0].name
            if expected_in != self._input:
                raise ModelMismatchError(f"{card.ref}: graph input {self._input!r} != card {expected_in!r}")
        k = self.session.get_outputs()[outputs.index("probs")].shape[-1]
        if isinstance(k, int) and k != len(card.class_names):
            raise ModelMismatchError(f"{card.ref}: graph has {k} classes, card {len(card.class_names)}")
        logger.info("onnxruntime session for %s on %s", card.ref, self._provider)

    @property
    def provider(self) -> str:
        return self._provider

    def infer(self, x: np.ndarray) -> BackendOutput:
        x = np.ascontiguousarray(x, dtype=np.float32)
        logits, probs, cam, *members = self.session.run(self._fetch, {self._input: x})
        return BackendOutput(
            np.asarray(logits, np.float32),
            np.asarray(probs, np.float32),
            np.asarray(cam, np.float32),
            np.asarray(members[0], np.float32) if members else None,
        )

    def is_ready(self) -> bool:
        return True

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
