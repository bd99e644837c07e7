"""Deadline and circuit breaker around an inference backend (docs/serving.md, "Backend failures").

:class:`GuardedBackend` wraps any :class:`~serving.backends.protocol.InferenceBackend` and is what the
runtime calls:

* **Deadline.** A remote backend's :meth:`~GuardedBackend.infer` runs in a small thread pool and the caller
  waits at most ``timeout_s`` (the configured backend timeout, connection set-up included): past it the
  caller gets :class:`~serving.backends.protocol.DeadlineExceededError` and the abandoned call ends on the
  client's own network timeout (set to the same value). A frozen server therefore costs a request at most
  one deadline, never the sum of the client's connect + read timeouts over retries and chunks.
* **Circuit breaker** (:class:`CircuitBreaker`: closed → open → half-open → closed). ``fail_max``
  consecutive unavailability failures (unreachable, deadline exceeded) open it; the background probe
  (:mod:`serving.health`) opens it at once when the backend stops answering its health check. While open,
  calls fail fast with :class:`~serving.backends.protocol.CircuitOpenError` (503 + ``Retry-After``) without
  touching the backend, and calls already waiting on a backend that the probe has just declared down are
  released with the same error. After ``reset_timeout_s`` without a failed probe — or as soon as the probe
  sees the backend answer again — the breaker is half-open: one trial call goes through (others still fail
  fast); its success closes the breaker, its failure opens it again.
* **Integrity hold.** :meth:`GuardedBackend.hold` refuses every call with ``CircuitOpenError`` until
  :meth:`GuardedBackend.release` (the probe holds a model whose registry artifacts no longer match its card).

Errors that are not about availability (a :class:`~serving.backends.protocol.ModelMismatchError`, a bad
tensor) pass through unchanged and do not count as breaker failures.

``pybreaker`` (the maintained synchronous breaker on PyPI) holds one re-entrant lock for the whole wrapped
call, which serialises concurrent inference and makes callers queue behind a hung call instead of failing
fast; the breaker here is a small state machine with the same three states and no lock held across calls.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from serving.backends.protocol import (
    BackendOutput,
    BackendUnavailableError,
    CircuitOpenError,
    DeadlineExceededError,
    InferenceBackend,
)

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker", "GuardedBackend", "call_with_deadline"]

logger = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"

T = TypeVar("T")

#: How often a caller waiting on a backend call looks whether the breaker was opened meanwhile.
_POLL_S = 0.05


class CircuitBreaker:
    """Thread-safe closed / open / half-open state machine.

    Args:
        fail_max: Consecutive failures that open a closed breaker.
        reset_timeout_s: How long an opened breaker stays open before letting one trial call through.
        name: For log records.
        clock: Monotonic clock (tests inject their own).
    """

    def __init__(
        self,
        *,
        fail_max: int = 3,
        reset_timeout_s: float = 5.0,
        name: str = "backend",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fail_max < 1 or reset_timeout_s <= 0:
            raise ValueError("fail_max must be >= 1 and reset_timeout_s > 0")
        self.fail_max = fail_max
        self.reset_timeout_s = reset_timeout_s
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._epoch = 0  # bumped on every opening: callers waiting since an older epoch are released
        self.last_reason: str | None = None

    # ------------------------------------------------------------------ state

    def _refresh(self) -> None:  # with the lock held
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._state = HALF_OPEN
            self._trial_in_flight = False
            logger.info("breaker %s half-open (reset timeout)", self.name)

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        with self._lock:
            self._refresh()
            return self._state

    @property
    def epoch(self) -> int:
        """Number of times the breaker has opened."""
        return self._epoch

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    def retry_after_s(self) -> int:
        """Whole seconds (>= 1) until an open breaker lets a trial through (1 when not open)."""
        with self._lock:
            self._refresh()
            if self._state != OPEN:
                return 1
            return max(1, math.ceil(self.reset_timeout_s - (self._clock() - self._opened_at)))

    # ------------------------------------------------------------------ transitions

    def before_call(self) -> bool:
        """Admit a call or raise :class:`CircuitOpenError`. Returns True when the call is the half-open
        trial (its outcome decides the state)."""
        with self._lock:
            self._refresh()
            if self._state == CLOSED:
                return False
            if self._state == HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            retry = (
                max(1, math.ceil(self.reset_timeout_s - (self._clock() - self._opened_at)))
                if self._state == OPEN
                else 1
            )
        raise CircuitOpenError(f"{self.name}: circuit breaker {self._state}", retry_after_s=retry)

    def _open(self, reason: str) -> None:  # with the lock held
        if self._state != OPEN:
            logger.warning("breaker %s open: %s", self.name, reason)
        self._state = OPEN
        self._opened_at = self._clock()
        self._trial_in_flight = False
        self._epoch += 1
        self.last_reason = reason

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            if self._state == HALF_OPEN:
                logger.info("breaker %s closed", self.name)
                self._state = CLOSED
                self._trial_in_flight = False
                self.last_reason = None

    def record_failure(self, reason: str = "call failed") -> None:
        with self._lock:
            self._refresh()
            if self._state == HALF_OPEN:
                self._open(f"trial failed: {reason}")
                return
            if self._state == OPEN:
                return
            self._failures += 1
            if self._failures >= self.fail_max:
                self._open(f"{self._failures} consecutive failures, last: {reason}")

    def trip(self, reason: str) -> None:
        """Open now (or keep open, restarting the reset timeout): the probe found the backend down."""
        with self._lock:
            self._open(reason)

    def probe_ok(self) -> None:
        """The probe saw the backend answer: an open breaker goes half-open at once (the next call is the
        trial) instead of waiting for the reset timeout."""
        with self._lock:
            if self._state == OPEN:
                self._state = HALF_OPEN
                self._trial_in_flight = False
                logger.info("breaker %s half-open (probe answered)", self.name)

    def cancel_trial(self) -> None:
        """The trial call ended without a verdict (an error unrelated to availability)."""
        with self._lock:
            self._trial_in_flight = False


def call_with_deadline(
    fn: Callable[[], T],
    timeout_s: float,
    executor: cf.Executor,
    *,
    abandon: Callable[[], bool] | None = None,
    what: str = "backend call",
) -> T:
    """Run ``fn()`` on ``executor`` and wait at most ``timeout_s``.

    Raises:
        DeadlineExceededError: ``fn`` did not return in time (it keeps running on its thread).
        CircuitOpenError: ``abandon()`` turned true while waiting (the breaker was opened meanwhile).
        Exception: whatever ``fn`` raised.
    """
    future = executor.submit(fn)
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            future.cancel()
            raise DeadlineExceededError(f"{what}: no answer within {timeout_s:g} s", timeout_s=timeout_s)
        try:
            return future.result(timeout=min(remaining, _POLL_S) if abandon else remaining)
        except cf.TimeoutError:
            if abandon is not None and abandon():
                future.cancel()
                raise CircuitOpenError(f"{what}: abandoned, the backend was declared down") from None


class GuardedBackend:
    """An :class:`~serving.backends.protocol.InferenceBackend` with a deadline and a circuit breaker.

    Args:
        inner: The backend.
        timeout_s: Deadline of one :meth:`infer` (``None``: called inline, no deadline — the in-process
            ONNX Runtime backend, which cannot hang on a network).
        fail_max, reset_timeout_s: The breaker's parameters.
        max_concurrency: Threads running calls of this backend (calls beyond wait in the pool's queue, within
            their deadline).
    """

    def __init__(
        self,
        inner: InferenceBackend,
        *,
        timeout_s: float | None,
        fail_max: int = 3,
        reset_timeout_s: float = 5.0,
        max_concurrency: int = 8,
    ) -> None:
        self.inner = inner
        self.timeout_s = timeout_s
        self.breaker = CircuitBreaker(
            fail_max=fail_max, reset_timeout_s=reset_timeout_s, name=f"{inner.name}:{_ref(inner)}"
        )
        self._pool = (
            cf.ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"{inner.name}-call")
            if timeout_s is not None
            else None
        )
        self._held: str | None = None

    # ------------------------------------------------------------------ protocol

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def provider(self) -> str:
        return self.inner.provider

    @property
    def held(self) -> str | None:
        """Why every call is refused (integrity), or ``None``."""
        return self._held

    def hold(self, reason: str) -> None:
        """Refuse every call until :meth:`release`."""
        self._held = reason

    def release(self) -> None:
        self._held = None

    def infer(self, x: np.ndarray) -> BackendOutput:
        """``inner.infer(x)`` within the deadline, unless the breaker refuses.

        Raises:
            CircuitOpenError: the breaker is open (or the model is held): the backend was not called.
            DeadlineExceededError: no answer within ``timeout_s``.
            BackendUnavailableError: the backend is unreachable.
        """
        if self._held is not None:
            raise CircuitOpenError(f"{self.breaker.name}: not served ({self._held})")
        trial = self.breaker.before_call()
        epoch = self.breaker.epoch
        try:
            if self._pool is None or self.timeout_s is None:
                out = self.inner.infer(x)
            else:
                out = call_with_deadline(
                    lambda: self.inner.infer(x),
                    self.timeout_s,
                    self._pool,
                    abandon=lambda: self.breaker.epoch != epoch,
                    what=self.breaker.name,
                )
        except CircuitOpenError as exc:
            if exc.retry_after_s is None:
                exc.retry_after_s = self.breaker.retry_after_s()
            raise
        except BackendUnavailableError as exc:
            self.breaker.record_failure(type(exc).__name__)
            if exc.retry_after_s is None:
                exc.retry_after_s = self.breaker.retry_after_s()
            raise
        except BaseException:
            if trial:
                self.breaker.cancel_trial()
            raise
        self.breaker.record_success()
        return out

    def is_ready(self) -> bool:
        """The inner backend's own check (called by the background probe, never by a request)."""
        return self.inner.is_ready()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.inner.close()


def _ref(backend: Any) -> str:
    card = getattr(backend, "card", None)
    return str(getattr(card, "ref", "?"))
