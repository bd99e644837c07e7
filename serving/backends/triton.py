"""Triton Inference Server backend (tritonclient, HTTP/REST or gRPC; KServe v2 protocol).

The Triton server serves the registry directory itself (README, "Architecture": it *is* a Triton model
repository): a production Triton (NGC image, onnxruntime backend) or, locally and in tests,
:mod:`serving.triton_local` (PyTriton). This backend asks for the card's exact model version.

**Start-up check.** Triton must serve the card's model under its name and version (``versions`` of the
model metadata), with the card's ``max_batch_size`` (model configuration vs ``config.pbtxt``) and the
card's signature (``GET /v2/models/<name>/versions/<v>``: tensor names, datatypes, shapes) — input
``image`` ``FP32 [-1, 1, H, W]``, outputs ``logits``/``probs`` ``FP32 [-1, K]`` and ``cam``
``FP32 [-1, K, h, w]`` with ``K`` the card's classes — otherwise
:class:`~serving.backends.protocol.ModelMismatchError` refuses to start. When Triton is unreachable at
start-up the check is deferred to the first moment it answers (the service starts, ``/readyz`` stays 503
meanwhile). The bytes Triton loads are the registry's own files, whose sha256 the service verifies against
the card at start-up and re-verifies while running (:mod:`serving.health`).

**Timeouts.** Every call has the configured ``timeout_s`` as its client-side limit (HTTP: connection and
network timeouts of the client; gRPC: ``client_timeout``); health checks use the shorter
``health_timeout_s``. :class:`serving.backends.guard.GuardedBackend` adds the hard deadline and the
circuit breaker on top.

**Unreachable Triton.** :meth:`TritonBackend.is_ready` is false and :meth:`TritonBackend.infer` raises
:class:`~serving.backends.protocol.BackendUnavailableError`, answered 503 with ``Retry-After``.

**Provider** reported in ``/readyz`` and ``mimicry_model_info``: ``triton:<platform or backend>`` from the
model configuration Triton reports (``triton:onnxruntime_onnx`` on a production Triton, ``triton:python``
under PyTriton).

The HTTP client (geventhttpclient) is not thread-safe, so HTTP clients are kept per thread; the gRPC
client is shared.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

import numpy as np
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_none

from mimicry.registry import ModelCard
from mimicry.registry.pbtxt import TritonModelConfig
from serving.backends.protocol import (
    BackendError,
    BackendOutput,
    BackendUnavailableError,
    ModelMismatchError,
)

__all__ = ["TritonBackend", "expected_signature"]

logger = logging.getLogger(__name__)

_OUTPUTS = ("logits", "probs", "cam")
_UNAVAILABLE_MARKERS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "connect", "Connection", "timed out", "refused")


def expected_signature(card: ModelCard, config: TritonModelConfig | None) -> dict[str, tuple[str, list[int]]]:
    """Tensor name → (KServe datatype, shape with ``-1`` batch) that Triton must report for ``card``.

    From ``config.pbtxt`` when given (what Triton loads), cross-checked against the card: the class count,
    and — when the card has its ``onnx`` section — the input size and Grad-CAM grid.

    Raises:
        ModelMismatchError: ``config.pbtxt`` and the card disagree.
    """
    k = len(card.class_names)
    size = card.preprocessing.size
    if config is not None:
        sig = {t.name: ("FP32", [-1, *t.dims]) for t in (*config.inputs, *config.outputs)}
        types = {t.name: t.data_type for t in (*config.inputs, *config.outputs)}
        if any(v != "TYPE_FP32" for v in types.values()):
            raise ModelMismatchError(f"{card.ref}: config.pbtxt declares non-FP32 tensors")
    else:
        if card.onnx is None:
            raise ModelMismatchError(f"{card.ref}: neither config.pbtxt nor the card's onnx section")
        h, w = card.onnx.cam_grid
        sig = {
            card.onnx.inputs[0].name: ("FP32", [-1, 1, size, size]),
            "logits": ("FP32", [-1, k]),
            "probs": ("FP32", [-1, k]),
            "cam": ("FP32", [-1, k, h, w]),
        }
    missing = [n for n in _OUTPUTS if n not in sig]
    if missing:
        raise ModelMismatchError(f"{card.ref}: config.pbtxt lacks outputs {missing}")
    if sig["probs"][1] != [-1, k] or sig["logits"][1] != [-1, k] or sig["cam"][1][:2] != [-1, k]:
        raise ModelMismatchError(f"{card.ref}: config.pbtxt class count differs from the card's {k}")
    if card.onnx is not None:
        in_name = card.onnx.inputs[0].name
        h, w = card.onnx.cam_grid
        ih, iw = card.onnx.input_size
        if sig.get(in_name, ("", []))[1] != [-1, 1, ih, iw]:
            raise ModelMismatchError(f"{card.ref}: config.pbtxt input differs from the card")
        if sig["cam"][1] != [-1, k, h, w]:
            raise ModelMismatchError(f"{card.ref}: config.pbtxt cam grid differs from the card")
    return sig


def _timed_out(exc: BaseException | None) -> bool:
    """The server accepted the call but did not answer in time (retrying would only wait again)."""
    if exc is None:
        return False
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return True
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    text = f"{status or ''} {exc}"
    return "DEADLINE_EXCEEDED" in text or "timed out" in text


def _transient(exc: BaseException) -> bool:
    """Worth one immediate retry on a fresh connection: the connection was refused, reset or dropped (a
    pooled keep-alive connection to a Triton that restarted), not a timeout."""
    return isinstance(exc, BackendUnavailableError) and not _timed_out(exc.__cause__)


def _is_unavailable(exc: BaseException) -> bool:
    """A connection-level failure (refused, reset, timed out, gRPC UNAVAILABLE) rather than a bad request."""
    if isinstance(exc, OSError) or "Timeout" in type(exc).__name__:
        return True
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    text = f"{status or ''} {exc}"
    return any(m in text for m in _UNAVAILABLE_MARKERS)


class TritonBackend:
    """One model version on a Triton server.

    Args:
        card: The verified model card (name, version, classes).
        url: ``host:port`` (no scheme) of Triton's HTTP (default 8000) or gRPC (8001) endpoint.
        protocol: ``http`` or ``grpc``.
        timeout_s: Per-request timeout (connection set-up included).
        health_timeout_s: Timeout of the health checks of :meth:`is_ready` (at most ``timeout_s``).
        config: The registry's parsed ``config.pbtxt`` for this model (what Triton loaded).

    Raises:
        ModelMismatchError: Triton reports a signature other than the card's (when reachable at start-up).
    """

    name = "triton"

    def __init__(
        self,
        card: ModelCard,
        *,
        url: str,
        protocol: Literal["http", "grpc"] = "http",
        timeout_s: float = 10.0,
        health_timeout_s: float = 2.0,
        config: TritonModelConfig | None = None,
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError("protocol must be 'http' or 'grpc'")
        self.card = card
        self.url = url
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.health_timeout_s = min(health_timeout_s, timeout_s)
        self.model_name = card.name
        self.model_version = str(card.version)
        self.max_batch_size = config.max_batch_size if config is not None and config.max_batch_size > 0 else 0
        self.expected = expected_signature(card, config)
        self.input_name = next(n for n in self.expected if n not in _OUTPUTS)
        self._local = threading.local()
        self._grpc: Any = None
        self._lock = threading.Lock()
        self._verified = False
        self._provider = "triton"
        try:
            self.verify()
        except BackendUnavailableError:
            logger.warning("triton at %s unreachable at start-up; %s checked when it answers", url, card.ref)

    # ------------------------------------------------------------------ clients

    def _client(self, health: bool = False) -> Any:
        if self.protocol == "grpc":
            with self._lock:
                if self._grpc is None:
                    import tritonclient.grpc as grpcclient

                    self._grpc = grpcclient.InferenceServerClient(url=self.url)
                return self._grpc
        attr = "health" if health else "client"
        client = getattr(self._local, attr, None)
        if client is None:
            import tritonclient.http as httpclient

            timeout = self.health_timeout_s if health else self.timeout_s
            client = httpclient.InferenceServerClient(
                url=self.url, connection_timeout=timeout, network_timeout=timeout
            )
            setattr(self._local, attr, client)
        return client

    def _timeout_kw(self, health: bool = False) -> dict[str, Any]:
        if self.protocol != "grpc":
            return {}
        return {"client_timeout": self.health_timeout_s if health else self.timeout_s}

    def _reset_http(self) -> None:
        for attr in ("health", "client"):
            client = getattr(self._local, attr, None)
            if client is not None:
                try:
                    client.close()
                finally:
                    setattr(self._local, attr, None)

    # ------------------------------------------------------------------ start-up check

    def verify(self) -> None:
        """Check Triton's metadata and config for this model version against the card (once).

        Raises:
            BackendUnavailableError: Triton cannot be reached / the model is not loaded.
            ModelMismatchError: the reported signature differs.
        """
        if self._verified:
            return
        try:
            client = self._client()
            if self.protocol == "grpc":
                meta = client.get_model_metadata(
                    self.model_name, self.model_version, as_json=True, **self._timeout_kw()
                )
                cfg = client.get_model_config(
                    self.model_name, self.model_version, as_json=True, **self._timeout_kw()
                )
                cfg = cfg.get("config", cfg)
            else:
                meta = client.get_model_metadata(self.model_name, self.model_version)
                cfg = client.get_model_config(self.model_name, self.model_version)
        except Exception as exc:
            if self.protocol == "http":
                self._reset_http()
            raise BackendUnavailableError(f"{self.card.ref}: triton metadata unavailable") from exc
        if meta.get("name", self.model_name) != self.model_name or (
            "versions" in meta and self.model_version not in [str(v) for v in meta["versions"]]
        ):
            raise ModelMismatchError(
                f"{self.card.ref}: triton serves {meta.get('name')!r} versions {meta.get('versions')}"
            )
        if self.max_batch_size and int(cfg.get("max_batch_size", 0)) != self.max_batch_size:
            raise ModelMismatchError(
                f"{self.card.ref}: triton's max_batch_size {cfg.get('max_batch_size')} differs from "
                f"config.pbtxt's {self.max_batch_size}"
            )
        reported = {
            t["name"]: (t["datatype"], [int(d) for d in t["shape"]])
            for t in (*meta.get("inputs", []), *meta.get("outputs", []))
        }
        if reported != self.expected:
            names = set(reported) | set(self.expected)
            diff = sorted(n for n in names if reported.get(n) != self.expected.get(n))
            raise ModelMismatchError(f"{self.card.ref}: triton reports a different signature for {diff}")
        platform = cfg.get("platform") or cfg.get("backend") or "unknown"
        self._provider = f"triton:{platform}"
        self._verified = True
        logger.info("triton model %s verified (%s)", self.card.ref, self._provider)

    # ------------------------------------------------------------------ protocol

    @property
    def provider(self) -> str:
        return self._provider

    def _infer_chunk(self, x: np.ndarray) -> BackendOutput:
        """One call, retried once at once on a fresh connection after a dropped or refused connection
        (tenacity); a timeout is not retried (the caller's deadline covers both attempts)."""
        for attempt in Retrying(
            stop=stop_after_attempt(2), retry=retry_if_exception(_transient), wait=wait_none(), reraise=True
        ):
            with attempt:
                return self._infer_once(x)
        raise AssertionError("unreachable")  # pragma: no cover

    def _infer_once(self, x: np.ndarray) -> BackendOutput:
        if self.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc  # type: ignore[no-redef]
        inp = tc.InferInput(self.input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        outputs = [tc.InferRequestedOutput(n) for n in _OUTPUTS]
        client = self._client()
        try:
            if self.protocol == "grpc":
                res = client.infer(
                    self.model_name,
                    [inp],
                    model_version=self.model_version,
                    outputs=outputs,
                    client_timeout=self.timeout_s,
                )
            else:
                res = client.infer(self.model_name, [inp], model_version=self.model_version, outputs=outputs)
        except Exception as exc:
            if self.protocol == "http":
                self._reset_http()
            if _is_unavailable(exc):
                raise BackendUnavailableError(f"{self.card.ref}: triton unreachable") from exc
            raise BackendError(f"{self.card.ref}: triton inference failed ({type(exc).__name__})") from exc
        arrays = [np.array(res.as_numpy(n), dtype=np.float32) for n in _OUTPUTS]  # writable copies
        return BackendOutput(*arrays)

    def infer(self, x: np.ndarray) -> BackendOutput:
        """Run ``x[N, 1, H, W]`` on Triton, in chunks of at most ``max_batch_size``.

        Raises:
            BackendUnavailableError: Triton cannot be reached.
            ModelMismatchError: first contact after an unreachable start-up found a different model.
        """
        self.verify()
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self.max_batch_size or x.shape[0]
        parts = [self._infer_chunk(x[i : i + step]) for i in range(0, x.shape[0], step)]
        return parts[0] if len(parts) == 1 else BackendOutput.concat(parts)

    def is_ready(self) -> bool:
        """Server live and ready, this model version ready, and its signature verified (short timeouts).

        Once Triton has been unreachable or the model version not ready, the start-up check runs again
        when it answers (a restarted Triton may serve something else)."""
        try:
            client = self._client(health=True)
            kw = self._timeout_kw(health=True)
            ok = bool(client.is_server_ready(**kw)) and bool(
                client.is_model_ready(self.model_name, self.model_version, **kw)
            )
        except Exception:
            if self.protocol == "http":
                self._reset_http()
            self._verified = False
            return False
        if not ok:
            self._verified = False
        if ok and not self._verified:
            try:
                self.verify()
            except BackendError as exc:
                logger.error("triton model %s not usable: %s", self.card.ref, type(exc).__name__)
                return False
        return ok

    def close(self) -> None:
        self._reset_http()
        if self._grpc is not None:
            try:
                self._grpc.close()
            finally:
                self._grpc = None
