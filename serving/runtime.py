"""Process-wide state of a running service: settings, served models, adaptive batchers, readiness.

One :class:`Runtime` per worker process, created by :class:`serving.service.MimicryService` at start-up and
registered with :func:`set_active_runtime` so that the HTTP routes and middleware find it.

**Batching.** Each model's DICOM traffic (``/v1/predict``, ``/v1/explain``, STOW-RS) goes through a
:class:`MicroBatcher`: while a batch runs on the backend, arriving requests queue; when the backend is free,
everything queued (up to ``max_batch_size``) is concatenated along the batch axis and run as one batch. It
adds no wait at low load, and batches grow with load. A request that waited longer than ``max_latency_ms``
is dropped with a 503 ``overloaded`` problem. BentoML's own adaptive batching serves the tensor API
``/v1/infer`` (``@bentoml.api(batchable=True)``); BentoML has no public in-process entry to its dispatcher
(calling the batchable API from a route is an HTTP round trip through the service with the tensor
serialised as JSON), hence this small batcher for the DICOM routes.

**Admission control.** :class:`Admission` bounds, per worker, the DICOM bodies decoded and preprocessed at
once (``max_concurrent_decodes``: the full-size pixel arrays are what costs memory) and the requests admitted
to wait for a decode slot (``max_queued``). A request that finds every place taken is refused *before* its
body is read (503 ``overloaded`` with ``Retry-After``), so memory stays bounded by
``(max_concurrent_decodes + max_queued) x max_request_bytes`` of bodies plus the in-flight decodes, whatever
the load. After a large request the runtime hands freed heap back to the operating system
(:func:`release_free_heap`, glibc ``malloc_trim``), and the worker's threads share ``malloc_arena_max``
malloc arenas (:func:`limit_malloc_arenas`); docs/benchmarks.md has the measurements.

**Ensemble disagreement.** For an ensemble (:attr:`serving.pipeline.ServedModel.is_ensemble`) with
``ensemble_disagreement`` on, every batch also runs the members on the torch twin
(:meth:`~serving.pipeline.ServedModel.member_probs`) unless the backend already returned ``member_probs``;
the cost is amortised by the same adaptive batch, and the member twin is loaded and warmed before
``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import numpy as np

from mimicry.registry import ModelRef, Registry
from mimicry.saliency import get_method
from serving import problems
from serving.backends.guard import GuardedBackend
from serving.backends.protocol import BackendOutput, BackendUnavailableError
from serving.health import ArtifactWatch, HealthMonitor
from serving.metrics import ServingMetrics, get_metrics
from serving.pipeline import ServedModel, load_served_model, offered_methods, resolve_model_refs, warm_up
from serving.settings import ServeSettings

__all__ = [
    "Admission",
    "MicroBatcher",
    "OverloadedError",
    "Runtime",
    "active_runtime",
    "limit_malloc_arenas",
    "release_free_heap",
    "set_active_runtime",
]

logger = logging.getLogger(__name__)

_ACTIVE: Runtime | None = None


def set_active_runtime(runtime: Runtime | None) -> None:
    """Register the runtime of this process (``None`` to clear)."""
    global _ACTIVE
    _ACTIVE = runtime


def active_runtime() -> Runtime | None:
    """The runtime of this process, if a service instance exists."""
    return _ACTIVE


class OverloadedError(Exception):
    """The adaptive batcher dropped a request that would exceed ``max_latency_ms``, or admission control
    refused it (:class:`Admission`); ``detail`` says which."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or "overloaded")
        self.detail = detail


class Admission:
    """Admission control of one worker (see the module docstring): at most ``max_active`` decodes at once
    (:meth:`decoding`) and at most ``max_active + max_queued`` requests admitted (:meth:`admit`).

    Both are used from the worker's event loop only, so the admitted count needs no lock.
    """

    def __init__(self, max_active: int, max_queued: int) -> None:
        self.max_active = int(max_active)
        self.capacity = int(max_active) + int(max_queued)
        self.admitted = 0
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """The decode slots (created lazily: a limiter belongs to the event loop that first uses it)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_active)
        return self._limiter

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place for one request (enter before reading its body).

        Raises:
            OverloadedError: every place is taken.
        """
        if self.admitted >= self.capacity:
            raise OverloadedError(
                "Every decode slot and queue place of this worker is taken; retry after the indicated time."
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @contextlib.asynccontextmanager
    async def decoding(self) -> AsyncIterator[None]:
        """Hold a decode slot (waits for one; the wait is bounded by :meth:`admit`'s capacity)."""
        async with self.limiter:
            yield


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.malloc_trim  # noqa: B018 - glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    return lib


#: glibc ``mallopt`` parameter number of ``M_ARENA_MAX`` (malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(n: int) -> bool:
    """glibc ``mallopt(M_ARENA_MAX, n)``: threads created from now on share at most ``n`` malloc arenas, so
    that memory freed by one decode thread is reused by the next instead of staying in a thread's own arena.
    ``False`` where the C library is not glibc or ``n`` is 0 (leave the default)."""
    lib = _libc()
    if lib is None or n <= 0:
        return False
    return bool(lib.mallopt(_M_ARENA_MAX, int(n)))


def release_free_heap() -> bool:
    """glibc ``malloc_trim(0)``: return the free memory at the top of every malloc arena (and whole free
    pages inside them) to the operating system. ``False`` where the C library has no ``malloc_trim``."""
    lib = _libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


class MicroBatcher:
    """Batch concurrent single-sample requests to one backend (see the module docstring).

    Args:
        run_batch: ``x[N, ...] -> BackendOutput`` (blocking; run in a worker thread).
        max_batch_size: Largest batch.
        max_latency_s: Longest a request may wait in the queue before it is dropped (``OverloadedError``).
    """

    def __init__(
        self, run_batch: Callable[[np.ndarray], BackendOutput], max_batch_size: int, max_latency_s: float
    ):
        self.run_batch = run_batch
        self.max_batch_size = int(max_batch_size)
        self.max_latency_s = float(max_latency_s)
        self._queue: deque[tuple[np.ndarray, asyncio.Future[BackendOutput], float]] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, x: np.ndarray) -> BackendOutput:
        """Queue one sample ``x[1, ...]`` and wait for its row of the batch output."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[BackendOutput] = loop.create_future()
        self._queue.append((x, fut, time.monotonic()))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await fut

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[BackendOutput]]]:
        batch: list[tuple[np.ndarray, asyncio.Future[BackendOutput]]] = []
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch_size:
            x, fut, queued = self._queue.popleft()
            if fut.done():  # the request was cancelled (client gone, timeout)
                continue
            if now - queued > self.max_latency_s:
                fut.set_exception(OverloadedError())
                continue
            batch.append((x, fut))
        return batch

    async def _drain(self) -> None:
        while self._queue:
            batch = self._take()
            if not batch:
                continue
            try:
                x = np.concatenate([b[0] for b in batch], axis=0)
                out = await anyio.to_thread.run_sync(self.run_batch, x)
            except BaseException as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for i, (_, fut) in enumerate(batch):
                if not fut.done():
                    fut.set_result(out.row(i))
            del batch, x, out


class Runtime:
    """Served models + batchers + readiness of one worker process.

    Args:
        settings: The service settings.
        load: Load (and warm up) the models now; ``False`` leaves that to :meth:`load`.
    """

    def __init__(self, settings: ServeSettings, *, load: bool = True) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry)
        self.models: dict[str, ServedModel] = {}
        self.aliases: dict[str, str] = {}
        self.default: str | None = None
        self.metrics: ServingMetrics = get_metrics()
        self._batchers: dict[str, MicroBatcher] = {}
        self._loaded = False
        self.health: HealthMonitor | None = None
        self._watches: dict[str, ArtifactWatch] = {}
        self._lock = threading.Lock()
        self.twin_limiter = anyio.CapacityLimiter(1)
        self.admission = Admission(settings.max_concurrent_decodes, settings.max_queued)
        limit_malloc_arenas(settings.malloc_arena_max)
        self._trimming = False
        if load:
            self.load()

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Open every configured model's backend, warm it up, and publish ``mimicry_model_info``."""
        refs = resolve_model_refs(self.registry, self.settings.models)
        if not refs:
            raise RuntimeError("no model to serve: the registry is empty and no model is configured")
        for ref in refs:
            model = load_served_model(self.registry, ref, self.settings)
            self._guard(model)  # readiness: deadline + breaker + integrity watch
            if self.settings.warmup:
                try:
                    warm_up(model, members=self.wants_members(model))
                except BackendUnavailableError:
                    # a remote backend (Triton) that is down: serve anyway, /readyz stays 503 until it answers
                    logger.warning("%s: backend unreachable at start-up; not ready", model.card.ref)
            self.models[model.name] = model
            self.aliases[ref] = model.name
            self.aliases[model.card.ref] = model.name
            self.metrics.model_info.labels(
                model=model.name,
                version=str(model.card.version),
                sha256=model.sha256,
                backend=model.backend.name,
                provider=model.backend.provider,
            ).set(1)
            logger.info("serving %s (%s on %s)", model.card.ref, model.backend.name, model.backend.provider)
        self.default = self.aliases[refs[0]]
        self._start_health()
        self._loaded = True

    def close(self) -> None:
        if self.health is not None:
            self.health.stop()
        for model in self.models.values():
            model.backend.close()
        self._batchers.clear()

    @property
    def loaded(self) -> bool:
        """Every configured model is loaded (its backend may still be unreachable)."""
        return self._loaded

    # ------------------------------------------------------------------ readiness (serving/health.py)

    def _guard(self, model: ServedModel) -> None:
        """Verify ``model``'s registry artifacts (typed ``IntegrityError`` at start-up, every backend) and
        wrap its backend in a deadline + circuit breaker (the deadline only for a remote backend)."""
        watch = ArtifactWatch(self.registry, model.card, rehash_s=self.settings.integrity_rehash_s)
        watch.verify_strict()
        self._watches[model.name] = watch
        if not isinstance(model.backend, GuardedBackend):
            remote = model.backend.name != "onnxruntime"
            model.backend = GuardedBackend(
                model.backend,
                timeout_s=self.settings.triton_timeout_s if remote else None,
                fail_max=self.settings.breaker_fail_max,
                reset_timeout_s=self.settings.breaker_reset_s,
                max_concurrency=max(4, self.settings.max_batch_size),
            )

    def _start_health(self) -> None:
        """First readiness round synchronously (``/readyz`` is right from the start), then the background
        probe thread."""
        self.health = HealthMonitor(self.models, self.registry, self.settings, watches=self._watches)
        self.health.run_once(integrity=False)  # the artifacts were just verified by _guard
        self.health.start()

    def is_ready(self) -> bool:
        """Loaded, warmed up, every backend answering its probe and every artifact intact — the cached
        result of the background probe (:class:`serving.health.HealthMonitor`); never calls a backend."""
        return self._loaded and self.health is not None and self.health.ready()

    def readiness(self) -> dict[str, Any]:
        """``/readyz`` details from the cached probe state (instant): readiness, the answering worker's PID
        (several workers share one port) and, per model, version, backend, the provider actually used, its
        own readiness, why not, the circuit breaker state and when it was last checked (Unix time)."""
        state = self.health.snapshot() if self.health is not None else {}
        models = []
        for m in self.models.values():
            h = state.get(m.name)
            models.append(
                {
                    "name": m.name,
                    "version": m.card.version,
                    "backend": m.backend.name,
                    "provider": m.backend.provider,
                    "ready": bool(h and h.ready),
                    "reason": h.reason if h else "not checked yet",
                    "breaker": h.breaker if h else None,
                    "checked_at": h.checked_at if h else None,
                }
            )
        return {"ready": self.is_ready(), "pid": os.getpid(), "models": models}

    def retry_after_s(self, exc: BaseException | None = None) -> int:
        """``Retry-After`` for a 503: what the error knows (an open breaker's remaining time), else the
        configured ``retry_after_s``."""
        value = getattr(exc, "retry_after_s", None)
        return int(value) if value else self.settings.retry_after_s

    def after_large_request(self, body_bytes: int) -> None:
        """Hand freed heap back to the OS after a request of at least ``malloc_trim_bytes``: in a thread of
        the event loop's default executor, not awaited (a trim takes 2-20 ms; the answer does not wait for
        it), and at most one at a time (concurrent large requests share one trim)."""
        threshold = self.settings.malloc_trim_bytes
        if not threshold or body_bytes < threshold or self._trimming:
            return
        self._trimming = True

        def done(_: object) -> None:
            self._trimming = False

        asyncio.get_running_loop().run_in_executor(None, release_free_heap).add_done_callback(done)

    # ------------------------------------------------------------------ lookup

    def model(self, ref: str | None) -> ServedModel:
        """The served model for ``ref`` (``None``/empty = default; a name, ``name:version`` or the configured
        reference). Raises a 404 :class:`~serving.problems.Problem` otherwise."""
        if not ref:
            assert self.default is not None
            return self.models[self.default]
        if ref in self.models:
            return self.models[ref]
        if ref in self.aliases:
            return self.models[self.aliases[ref]]
        try:
            parsed = ModelRef.parse(ref)
        except Exception:
            raise problems.model_not_found("The model reference is not valid.") from None
        model = self.models.get(parsed.name)
        if model is not None and (parsed.version is None or parsed.version == model.card.version):
            return model
        raise problems.model_not_found(f"Model {str(parsed)!r} is not served; see GET /v1/models.")

    # ------------------------------------------------------------------ inference

    def wants_members(self, model: ServedModel) -> bool:
        """Report the disagreement of ``model``'s sub-models (an ensemble, and the setting on)."""
        return model.is_ensemble and self.settings.ensemble_disagreement

    def infer_now(self, model: ServedModel, x: np.ndarray, *, members: bool = False) -> BackendOutput:
        """Run one batch on the backend synchronously (metrics recorded); with ``members``, attach the
        ensemble members' probabilities (from the backend if its graph has them, else the twin)."""
        t0 = time.perf_counter()
        out = model.backend.infer(x)
        self.metrics.inference_seconds.labels(model=model.name, backend=model.backend.name).observe(
            time.perf_counter() - t0
        )
        self.metrics.batch_size.labels(model=model.name, backend=model.backend.name).observe(x.shape[0])
        if members and out.member_probs is None:
            out = out.with_members(model.member_probs(x))
        return out

    def _batcher(self, model: ServedModel) -> MicroBatcher:
        batcher = self._batchers.get(model.name)
        if batcher is None:
            batcher = self._batchers[model.name] = MicroBatcher(
                lambda x: self.infer_now(model, x, members=self.wants_members(model)),
                self.settings.max_batch_size,
                self.settings.max_latency_ms / 1000.0,
            )
        return batcher

    def methods_for(self, model: ServedModel) -> list[str]:
        """Saliency methods ``/v1/explain`` can run for ``model``: the offered ones minus those that need
        layer statistics (IBA family: a ``stats`` parameter without default) the service does not have."""
        out = []
        for name in offered_methods(self.settings):
            defaults = get_method(name).defaults
            if (
                "stats" in defaults
                and defaults["stats"] is None
                and getattr(model, "layer_stats", None) is None
            ):
                continue
            out.append(name)
        return out

    async def infer(self, model: ServedModel, x: np.ndarray) -> BackendOutput:
        """One sample ``x[1, 1, S, S]`` through the adaptive batcher.

        Raises:
            OverloadedError: waited longer than ``max_latency_ms``.
            BackendUnavailableError: the backend is unreachable.
        """
        return await self._batcher(model).submit(x)
