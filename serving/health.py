"""Readiness that never blocks a request, and the integrity of the served artifacts (docs/serving.md,
"Backend failures" and "Integrity").

* :class:`HealthMonitor` — one background thread per worker, started with the runtime. Every
  ``probe_interval_s`` it runs each model's backend health check (:meth:`InferenceBackend.is_ready`) on a
  small thread pool with its own deadline (``probe_timeout_s``): a check that does not answer in time (a
  frozen Triton) or is still pending from the previous round counts as *not ready*. The result is cached
  with its timestamp (:class:`ModelHealth`); ``/readyz``, ``__is_ready__`` and the request handlers read
  the cache and never call a backend. A failed probe opens the model's circuit breaker
  (:class:`serving.backends.guard.GuardedBackend`), so requests fail fast with 503 + ``Retry-After``; a
  successful one lets the breaker try again at once.
* :class:`ArtifactWatch` — the registry files of a served version (``model.onnx``,
  ``weights.safetensors``, ``card.json``, the model's ``config.pbtxt``): every ``integrity_interval_s`` a
  ``stat`` (size, mtime, ctime, inode); on any change (and every ``integrity_rehash_s`` regardless) the
  registry's card verification runs again (every sha256 against the sealed card, ``config.pbtxt`` equal to
  the one loaded). A mismatch marks the model not ready and holds its backend (every call refused with
  503) until the files verify again.
* :func:`preflight` — the same verification before any server process starts, for launchers
  (``mimicry serve``, container entrypoints: ``python -m serving.health preflight``): a tampered registry is
  a typed :class:`mimicry.registry.IntegrityError` and a non-zero exit, not a BentoML worker that fails its
  start-up and is restarted forever.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mimicry.registry import IntegrityError, ModelCard, Registry, RegistryError
from mimicry.registry.pbtxt import TritonModelConfig
from serving.backends.guard import CLOSED, GuardedBackend
from serving.backends.protocol import BackendError
from serving.settings import ServeSettings

__all__ = [
    "ArtifactWatch",
    "HealthMonitor",
    "ModelHealth",
    "main",
    "preflight",
    "preflight_env",
    "verify_artifacts",
]

logger = logging.getLogger(__name__)

ONNX_FILE, TWIN_FILE, CARD_FILE, CONFIG_FILE = (
    "model.onnx",
    "weights.safetensors",
    "card.json",
    "config.pbtxt",
)


@dataclass(frozen=True)
class ModelHealth:
    """Cached readiness of one served model.

    Attributes:
        backend_ready: The last probe answered ready within its deadline.
        integrity_ok: The registry artifacts matched the card at the last check.
        reason: Why not ready (``None`` when ready); names a state, never request content.
        checked_at: Unix time of the last probe.
        breaker: The backend's circuit breaker state (``closed``, ``open``, ``half-open``).
    """

    name: str
    version: int
    backend_ready: bool
    integrity_ok: bool
    reason: str | None
    checked_at: float
    breaker: str

    @property
    def ready(self) -> bool:
        return self.backend_ready and self.integrity_ok


def verify_artifacts(registry: Registry, ref: str) -> tuple[ModelCard, TritonModelConfig]:
    """The registry's card verification of one version: ``card.json`` against its seal, ``model.onnx`` and
    ``weights.safetensors`` against the sha256 the card records, ``config.pbtxt`` parsed.

    Raises:
        mimicry.registry.IntegrityError: an artifact was modified, is missing or unreadable.
        mimicry.registry.CardError, ModelNotFoundError: an invalid card, an unknown reference.
    """
    path = registry.load_onnx_path(ref)  # hashes every artifact against the sealed card
    card = registry.card(ref)
    if path.parent != registry.version_dir(card.name, card.version):  # pragma: no cover - defensive
        raise RegistryError(f"{card.ref}: resolved to an unexpected path")
    return card, registry.config(card.name)


class ArtifactWatch:
    """Cheap periodic re-verification of one served version's registry files.

    Args:
        registry: The registry.
        card: The served (verified) card.
        config: ``config.pbtxt`` as loaded at start-up (``None``: not compared).
        rehash_s: Full re-verification period even without a visible change (0: only on change).
        clock: Monotonic clock.
    """

    def __init__(
        self,
        registry: Registry,
        card: ModelCard,
        config: TritonModelConfig | None = None,
        *,
        rehash_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.ref = card.ref
        self.name = card.name
        self.config = config
        self.rehash_s = rehash_s
        self._clock = clock
        vdir = registry.version_dir(card.name, card.version)
        self.files = [
            vdir / ONNX_FILE,
            vdir / TWIN_FILE,
            vdir / CARD_FILE,
            registry.model_dir(card.name) / CONFIG_FILE,
        ]
        self._seen: tuple[Any, ...] | None = None
        self._hashed_at = -float("inf")
        self.problem: str | None = None
        self.verifications = 0

    def fingerprint(self) -> tuple[Any, ...]:
        """(size, mtime, ctime, inode) of every watched file (``None`` for a missing one)."""
        out: list[Any] = []
        for f in self.files:
            try:
                st = f.stat()
            except OSError:
                out.append(None)
                continue
            out.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        return tuple(out)

    def verify_strict(self) -> None:
        """Hash everything now and raise on a problem (start-up); remembers the files' stat.

        Raises:
            mimicry.registry.IntegrityError: an artifact does not match the card (or ``config.pbtxt`` the one
                given).
        """
        fp = self.fingerprint()
        self._hashed_at = self._clock()
        self.verifications += 1
        _, config = verify_artifacts(self.registry, self.ref)
        if self.config is None:
            self.config = config
        elif config != self.config:
            raise IntegrityError(
                f"{self.name}: {CONFIG_FILE} differs from the one loaded", artifact=CONFIG_FILE, ref=self.ref
            )
        self._seen = fp
        self.problem = None

    def verify(self) -> str | None:
        """Hash everything now; the problem found (``None``: intact). Never raises."""
        self.verifications += 1
        self._hashed_at = self._clock()
        try:
            _, config = verify_artifacts(self.registry, self.ref)
            if self.config is not None and config != self.config:
                return f"{self.name}: {CONFIG_FILE} differs from the one loaded at start-up"
        except RegistryError as exc:
            return f"{type(exc).__name__}: {exc}"
        except OSError as exc:  # pragma: no cover - unreadable directory
            return f"{self.ref}: artifacts unreadable ({type(exc).__name__})"
        return None

    def check(self) -> str | None:
        """Re-verify when a file's stat changed (or the rehash period passed), else the cached verdict."""
        fp = self.fingerprint()
        due = self.rehash_s > 0 and self._clock() - self._hashed_at >= self.rehash_s
        if fp != self._seen or due:
            problem = self.verify()
            # files may change while being hashed: remember the stat seen *before* hashing, so a change
            # during the hash is looked at again next time
            self._seen = fp
            if problem != self.problem:
                if problem:
                    logger.error("integrity: %s not servable: %s", self.ref, problem)
                else:
                    logger.info("integrity: %s verifies again", self.ref)
            self.problem = problem
        return self.problem


class HealthMonitor:
    """Background readiness probe and integrity watch of the models of one worker.

    Args:
        models: ``{name: ServedModel}`` (each ``backend`` preferably a :class:`GuardedBackend`).
        registry: The registry.
        settings: Probe interval / timeout, integrity intervals.
        watches: ``{name: ArtifactWatch}`` (default: one per model, without a config comparison).
    """

    def __init__(
        self,
        models: Mapping[str, Any],
        registry: Registry,
        settings: ServeSettings,
        *,
        watches: Mapping[str, ArtifactWatch] | None = None,
    ) -> None:
        self.models = dict(models)
        self.settings = settings
        self.watches = (
            dict(watches)
            if watches is not None
            else {
                n: ArtifactWatch(registry, m.card, rehash_s=settings.integrity_rehash_s)
                for n, m in models.items()
            }
        )
        self._pool = cf.ThreadPoolExecutor(
            max_workers=max(2, 2 * len(self.models)), thread_name_prefix="readiness-probe"
        )
        self._pending: dict[str, cf.Future[bool]] = {}
        self._state: dict[str, ModelHealth] = {}
        self._integrity: dict[str, str | None] = {n: None for n in self.models}
        self._integrity_at = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    # ------------------------------------------------------------------ reading (instant)

    def snapshot(self) -> dict[str, ModelHealth]:
        """The cached state of every model (empty before the first round)."""
        return dict(self._state)

    def ready(self) -> bool:
        """Every model's last probe and integrity check passed (False before the first round)."""
        state = self._state
        return bool(state) and len(state) == len(self.models) and all(h.ready for h in state.values())

    # ------------------------------------------------------------------ probing

    def check_integrity(self) -> None:
        """Run every model's :class:`ArtifactWatch` and hold / release its backend accordingly."""
        self._integrity_at = time.monotonic()
        for name, watch in self.watches.items():
            problem = watch.check()
            self._integrity[name] = problem
            backend = self.models[name].backend
            if isinstance(backend, GuardedBackend):
                if problem:
                    backend.hold("registry artifacts do not match the model card")
                else:
                    backend.release()

    def _probe(self, name: str) -> bool:
        try:
            return bool(self.models[name].backend.is_ready())
        except BackendError:
            return False

    def probe_backends(self) -> dict[str, tuple[bool, str | None]]:
        """Every backend's health check, concurrently, each within ``probe_timeout_s``."""
        started: dict[str, cf.Future[bool]] = {}
        stuck: set[str] = set()
        for name in self.models:
            prev = self._pending.get(name)
            if prev is not None and not prev.done():
                stuck.add(name)  # the previous probe still hangs: do not pile up threads
                continue
            started[name] = self._pending[name] = self._pool.submit(self._probe, name)
        done, _ = cf.wait(list(started.values()), timeout=self.settings.probe_timeout_s)
        out: dict[str, tuple[bool, str | None]] = {}
        for name in self.models:
            fut = started.get(name)
            if name in stuck or fut is None:
                out[name] = (False, "backend health check still pending")
            elif fut not in done:
                out[name] = (False, f"backend health check timed out ({self.settings.probe_timeout_s:g} s)")
            elif fut.exception() is not None:
                out[name] = (False, f"backend health check failed ({type(fut.exception()).__name__})")
            elif not fut.result():
                out[name] = (False, "backend not ready")
            else:
                out[name] = (True, None)
        return out

    def run_once(self, *, integrity: bool | None = None) -> dict[str, ModelHealth]:
        """One round: integrity (when due, or when ``integrity`` is true), then the backend probes; the
        breakers follow the probes. Returns the new cached state."""
        due = time.monotonic() - self._integrity_at >= self.settings.integrity_interval_s
        if integrity or (integrity is None and due):
            self.check_integrity()
        probes = self.probe_backends()
        now = time.time()
        state: dict[str, ModelHealth] = {}
        for name, model in self.models.items():
            ok, reason = probes[name]
            backend = model.backend
            breaker = CLOSED
            if isinstance(backend, GuardedBackend):
                if ok:
                    backend.breaker.probe_ok()
                else:
                    backend.breaker.trip(reason or "probe failed")
                breaker = backend.breaker.state
            problem = self._integrity.get(name)
            state[name] = ModelHealth(
                name=name,
                version=model.card.version,
                backend_ready=ok,
                integrity_ok=problem is None,
                reason=(("integrity: registry artifacts do not match the model card") if problem else reason),
                checked_at=now,
                breaker=breaker,
            )
            prev = self._state.get(name)
            if prev is not None and prev.ready != state[name].ready:
                logger.warning(
                    "%s %s%s",
                    name,
                    "ready" if state[name].ready else "not ready",
                    f": {state[name].reason}" if state[name].reason else "",
                )
        self._state = state
        self.rounds += 1
        return state

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.probe_interval_s):
            try:
                self.run_once()
            except Exception:  # pragma: no cover - never let the probe thread die
                logger.exception("readiness probe round failed")

    def start(self) -> None:
        """Start the background thread (daemon; idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="readiness-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.probe_interval_s + self.settings.probe_timeout_s + 1)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------- launcher pre-flight


def preflight(settings: ServeSettings) -> list[ModelCard]:
    """Verify every model the settings name before a server process starts (launchers call this).

    Same verification as a running service (:func:`verify_artifacts`), plus — for ``backend="triton"`` —
    ``config.pbtxt`` against the card (what Triton will load). Returns the verified cards.

    Raises:
        mimicry.registry.IntegrityError: an artifact does not match its card (typed; the message names the
            model and artifact).
        mimicry.registry.RegistryError: another registry problem (unknown model, invalid card).
        serving.backends.protocol.ModelMismatchError: ``config.pbtxt`` disagrees with the card.
        RuntimeError: no model to serve.
    """
    from serving.pipeline import resolve_model_refs

    registry = Registry(settings.registry)
    refs = resolve_model_refs(registry, settings.models)
    if not refs:
        raise RuntimeError("no model to serve: the registry is empty and no model is configured")
    cards = []
    for ref in refs:
        card, config = verify_artifacts(registry, ref)
        if settings.backend == "triton":
            from serving.backends.triton import expected_signature

            expected_signature(card, config)
        cards.append(card)
    return cards


def preflight_env(env: Mapping[str, str]) -> list[ModelCard]:
    """:func:`preflight` with the settings a server started with environment additions ``env`` will build
    (the ``MIMICRY_SERVE_*`` variables and ``MIMICRY_SERVE_CONFIG`` a launcher passes to ``bentoml serve``),
    e.g. ``_, extra = build_serve_invocation(...); preflight_env(extra)``. Errors as :func:`preflight`.
    """
    from serving.settings import load_serve_settings

    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update(env)
        settings = load_serve_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return preflight(settings)


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.health preflight`` (settings from ``MIMICRY_SERVE_*``): exit 0 when every
    configured model verifies, 2 with the error on stderr otherwise."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.health", description=preflight.__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["preflight"])
    parser.add_argument("--registry", type=Path, default=None, help="Override MIMICRY_SERVE_REGISTRY.")
    args = parser.parse_args(argv)
    from serving.settings import load_serve_settings

    try:
        overrides = {"registry": args.registry} if args.registry is not None else {}
        cards = preflight(load_serve_settings(**overrides))
    except (RegistryError, BackendError, RuntimeError, ValueError, OSError) as exc:
        print(f"mimicry preflight failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print("preflight ok: " + ", ".join(c.ref for c in cards))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
