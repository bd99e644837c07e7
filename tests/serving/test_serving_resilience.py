"""Serving that stays up, without a Triton server: the circuit breaker's states, the hard deadline of a
backend call, the cached readiness, and artifact integrity at start-up (launcher pre-flight and worker) and
while running (docs/serving.md, "Backend failures" and "Integrity").

Hung backends are simulated by a backend whose ``infer`` blocks on an event; the real thing (a SIGSTOPped
``tritonserver``) is in ``test_serving_triton.py``. No wall-clock bounds: that a call returned *before*
its deadline is shown by which mechanism answered (``CircuitOpenError`` from the breaker rather than
``DeadlineExceededError`` from the deadline) and by the backend's call counter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mimicry.registry import IntegrityError, Registry
from serving.backends.guard import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, GuardedBackend
from serving.backends.protocol import (
    BackendOutput,
    BackendUnavailableError,
    CircuitOpenError,
    DeadlineExceededError,
    ModelMismatchError,
)
from serving.health import ArtifactWatch, HealthMonitor, preflight, preflight_env
from serving.launch import build_serve_invocation, free_port
from serving.runtime import Runtime, active_runtime
from serving.settings import ServeSettings
from tests.serving.conftest import make_client

DICOM = {"content-type": "application/dicom"}
ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class HangingBackend:
    """A backend whose calls block until ``release`` is set (a frozen server), counting calls."""

    name = "fake-remote"
    provider = "fake"

    def __init__(self, *, hang: bool = True) -> None:
        self.release = threading.Event()
        if not hang:
            self.release.set()
        self.calls = 0
        self.ready = True
        self.error: Exception | None = None

    def infer(self, x: np.ndarray) -> BackendOutput:
        self.calls += 1
        if self.error is not None:
            raise self.error
        self.release.wait(60)
        n = x.shape[0]
        return BackendOutput(
            np.zeros((n, 2), np.float32), np.zeros((n, 2), np.float32), np.zeros((n, 2, 1, 1))
        )

    def is_ready(self) -> bool:
        if not self.release.is_set():
            self.release.wait(60)  # the health check hangs too
        return self.ready

    def close(self) -> None:
        self.release.set()


X = np.zeros((1, 1, 4, 4), np.float32)


# ---------------------------------------------------------------------- breaker


def test_breaker_opens_after_fail_max_and_recovers_through_one_trial() -> None:
    clock = FakeClock()
    b = CircuitBreaker(fail_max=3, reset_timeout_s=5.0, clock=clock)
    for _ in range(2):
        assert b.before_call() is False
        b.record_failure()
    assert b.state == CLOSED
    b.record_success()  # a success resets the consecutive count
    for _ in range(3):
        b.record_failure()
    assert b.state == OPEN
    with pytest.raises(CircuitOpenError) as info:
        b.before_call()
    assert info.value.retry_after_s == 5
    clock.t += 3.2
    assert b.retry_after_s() == 2
    clock.t += 2.0
    assert b.state == HALF_OPEN
    assert b.before_call() is True  # the trial
    with pytest.raises(CircuitOpenError):
        b.before_call()  # only one trial at a time
    b.record_failure("still down")
    assert b.state == OPEN  # a failed trial opens again, for a full reset timeout
    assert b.retry_after_s() == 5
    clock.t += 5.0
    assert b.before_call() is True
    b.record_success()
    assert b.state == CLOSED
    assert b.before_call() is False


def test_breaker_follows_the_probe() -> None:
    clock = FakeClock()
    b = CircuitBreaker(fail_max=3, reset_timeout_s=5.0, clock=clock)
    b.trip("probe: timed out")
    assert b.state == OPEN
    assert b.epoch == 1
    clock.t += 4.0
    b.trip("probe: timed out")  # every failed probe restarts the reset timeout: stays open while down
    clock.t += 4.0
    assert b.state == OPEN
    b.probe_ok()  # answered again: the next call is the trial, no need to wait for the timeout
    assert b.state == HALF_OPEN
    assert b.before_call() is True
    b.record_success()
    assert b.state == CLOSED


# ---------------------------------------------------------------------- deadline


def test_hung_backend_hits_the_deadline_then_fails_fast() -> None:
    inner = HangingBackend()
    guarded = GuardedBackend(inner, timeout_s=0.2, fail_max=2, reset_timeout_s=30)
    try:
        for _ in range(2):
            with pytest.raises(DeadlineExceededError) as info:
                guarded.infer(X)
            assert info.value.timeout_s == 0.2
            assert info.value.retry_after_s is not None
            assert info.value.retry_after_s >= 1
        assert guarded.breaker.state == OPEN
        calls = inner.calls
        with pytest.raises(CircuitOpenError) as fast:
            guarded.infer(X)
        assert inner.calls == calls  # refused without touching the backend
        assert isinstance(fast.value, BackendUnavailableError)  # -> 503 backend_unavailable
        assert fast.value.retry_after_s is not None
        assert 1 <= fast.value.retry_after_s <= 30
    finally:
        guarded.close()


def test_waiting_call_is_released_when_the_probe_declares_the_backend_down() -> None:
    inner = HangingBackend()
    guarded = GuardedBackend(inner, timeout_s=600, fail_max=3, reset_timeout_s=30)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            guarded.infer(X)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    while inner.calls == 0:  # the call reached the backend and hangs there
        threading.Event().wait(0.01)
    guarded.breaker.trip("probe: timed out")
    t.join(60)
    try:
        assert not t.is_alive()
        # released by the breaker (CircuitOpenError), long before its 600 s deadline (DeadlineExceededError)
        assert len(errors) == 1
        assert type(errors[0]) is CircuitOpenError
    finally:
        guarded.close()


def test_availability_errors_count_other_errors_pass_through() -> None:
    inner = HangingBackend(hang=False)
    guarded = GuardedBackend(inner, timeout_s=5, fail_max=1, reset_timeout_s=30)
    try:
        inner.error = ModelMismatchError("different model")
        with pytest.raises(ModelMismatchError):
            guarded.infer(X)
        assert guarded.breaker.state == CLOSED
        inner.error = None
        assert len(guarded.infer(X)) == 1
        inner.error = BackendUnavailableError("refused")
        with pytest.raises(BackendUnavailableError):
            guarded.infer(X)
        assert guarded.breaker.state == OPEN
    finally:
        guarded.close()


# ---------------------------------------------------------------------- cached readiness


class _Model:
    def __init__(self, backend: object, card: object) -> None:
        self.backend = backend
        self.card = card


def test_probe_marks_a_hung_backend_not_ready_and_opens_its_breaker(registry_dir: Path) -> None:
    card = Registry(registry_dir).card("cxr-toy")
    inner = HangingBackend()
    guarded = GuardedBackend(inner, timeout_s=5, fail_max=3, reset_timeout_s=30)
    settings = ServeSettings(registry=registry_dir, probe_timeout_s=0.2, integrity_interval_s=3600)
    watch = ArtifactWatch(Registry(registry_dir), card)
    monitor = HealthMonitor(
        {"cxr-toy": _Model(guarded, card)}, Registry(registry_dir), settings, watches={"cxr-toy": watch}
    )
    try:
        assert monitor.ready() is False  # nothing checked yet
        state = monitor.run_once()["cxr-toy"]
        assert state.ready is False
        assert state.backend_ready is False
        assert "timed out" in (state.reason or "")
        assert state.breaker == OPEN
        state = monitor.run_once()["cxr-toy"]  # the first probe still hangs: no second thread piles up
        assert "pending" in (state.reason or "")
        inner.release.set()  # the backend answers again
        monitor._pending["cxr-toy"].result(10)
        state = monitor.run_once()["cxr-toy"]
        assert state.ready is True
        assert state.breaker == HALF_OPEN
        assert monitor.ready() is True
        guarded.infer(X)  # the trial succeeds
        assert guarded.breaker.state == CLOSED
    finally:
        monitor.stop()
        guarded.close()


# ---------------------------------------------------------------------- integrity


@pytest.fixture
def own_registry(registry_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the toy registry that a test may tamper with."""
    root = tmp_path / "registry"
    shutil.copytree(registry_dir, root)
    return root


def _flip_byte(path: Path, offset: int = -10) -> bytes:
    data = path.read_bytes()
    changed = bytearray(data)
    changed[offset] ^= 0x01
    path.write_bytes(bytes(changed))
    return data


@pytest.mark.parametrize("backend", ["onnxruntime", "triton"])
def test_preflight_refuses_a_tampered_artifact(own_registry: Path, backend: str) -> None:
    settings = ServeSettings(registry=own_registry, models=["cxr-toy"], backend=backend)
    assert [c.ref for c in preflight(settings)] == ["cxr-toy:1"]
    _flip_byte(own_registry / "cxr-toy" / "1" / "model.onnx")
    with pytest.raises(IntegrityError) as info:
        preflight(settings)
    assert info.value.artifact == "model.onnx"
    assert info.value.ref == "cxr-toy:1"


def test_preflight_env_reads_what_the_launcher_passes(own_registry: Path) -> None:
    _, extra = build_serve_invocation(
        host="127.0.0.1", port=3000, workers=2, registry=own_registry, models=["cxr-toy2"], backend="triton",
        device="cpu",
    )  # fmt: skip
    assert [c.ref for c in preflight_env(extra)] == ["cxr-toy2:1"]
    assert "MIMICRY_SERVE_REGISTRY" not in os.environ or os.environ["MIMICRY_SERVE_REGISTRY"] != str(
        own_registry
    )
    _flip_byte(own_registry / "cxr-toy2" / "1" / "card.json", offset=20)
    with pytest.raises(IntegrityError) as info:
        preflight_env(extra)
    assert info.value.artifact == "card.json"


def test_preflight_command_exits_non_zero(own_registry: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMICRY_SERVE_")}
    env |= {"MIMICRY_SERVE_REGISTRY": str(own_registry), "MIMICRY_SERVE_BACKEND": "triton"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "serving.health", "preflight"]
    assert preflight(ServeSettings(registry=own_registry, backend="triton"))  # intact: passes (in-process)
    _flip_byte(own_registry / "cxr-toy2" / "1" / "weights.safetensors")
    bad = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "IntegrityError" in bad.stderr
    assert "weights.safetensors" in bad.stderr


@pytest.mark.parametrize("backend", ["onnxruntime", "triton"])
def test_worker_start_up_refuses_a_tampered_artifact(own_registry: Path, backend: str) -> None:
    _flip_byte(own_registry / "cxr-toy" / "1" / "model.onnx")
    settings = ServeSettings(
        registry=own_registry,
        models=["cxr-toy"],
        backend=backend,
        device="cpu",
        triton_url=f"127.0.0.1:{free_port()}",  # nothing listens: the hash check comes first regardless
        warmup=False,
    )
    with pytest.raises(IntegrityError) as info:
        Runtime(settings)
    assert info.value.artifact == "model.onnx"


def test_watch_rehashes_only_on_change(own_registry: Path) -> None:
    reg = Registry(own_registry)
    watch = ArtifactWatch(reg, reg.card("cxr-toy"), rehash_s=0)
    watch.verify_strict()
    n = watch.verifications
    for _ in range(3):
        assert watch.check() is None
    assert watch.verifications == n  # unchanged files are not hashed again
    original = _flip_byte(own_registry / "cxr-toy" / "1" / "model.onnx")
    assert "model.onnx" in (watch.check() or "")
    assert watch.verifications == n + 1
    (own_registry / "cxr-toy" / "1" / "model.onnx").write_bytes(original)
    assert watch.check() is None


def test_watch_rehashes_periodically_without_a_visible_change(own_registry: Path) -> None:
    reg = Registry(own_registry)
    clock = FakeClock()
    watch = ArtifactWatch(reg, reg.card("cxr-toy"), rehash_s=60, clock=clock)
    path = own_registry / "cxr-toy" / "1" / "model.onnx"
    before = path.stat()
    watch.verify_strict()
    _flip_byte(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime
    watch._seen = watch.fingerprint()  # even a stat that looks unchanged ...
    assert watch.check() is None
    clock.t += 60
    assert "model.onnx" in (watch.check() or "")  # ... is caught by the periodic rehash


def test_running_service_marks_a_tampered_model_not_ready(
    serve_env: pytest.MonkeyPatch, own_registry: Path, phantom_files: list[Path]
) -> None:
    """onnxruntime backend (the Triton backend: ``test_serving_triton.py``)."""
    serve_env.setenv("MIMICRY_SERVE_REGISTRY", str(own_registry))
    serve_env.setenv("MIMICRY_SERVE_INTEGRITY_INTERVAL_S", "3600")  # this test runs the rounds itself
    serve_env.setenv("MIMICRY_SERVE_PROBE_INTERVAL_S", "3600")
    with make_client() as c:
        rt = active_runtime()
        assert rt is not None
        assert rt.health is not None
        check_tamper_marks_not_ready(c, rt, own_registry, phantom_files[0].read_bytes())


def check_tamper_marks_not_ready(c: object, rt: Runtime, registry: Path, dicom: bytes) -> None:
    """Flip a byte of ``cxr-toy2``'s model.onnx under a running service: that model is not ready and
    refuses requests, the other stays ready, /livez answers; restoring the file makes it ready again."""
    assert rt.health is not None
    rt.health.run_once(integrity=True)
    assert c.get("/readyz").status_code == 200  # type: ignore[attr-defined]
    path = registry / "cxr-toy2" / "1" / "model.onnx"
    original = _flip_byte(path)
    rt.health.run_once(integrity=True)
    r = c.get("/readyz")  # type: ignore[attr-defined]
    assert r.status_code == 503
    assert r.headers["retry-after"]
    by_name = {m["name"]: m for m in r.json()["models"]}
    assert by_name["cxr-toy2"]["ready"] is False
    assert "integrity" in by_name["cxr-toy2"]["reason"]
    assert by_name["cxr-toy"]["ready"] is True
    assert c.get("/livez").status_code == 200  # type: ignore[attr-defined]
    p = c.post("/v1/predict?model=cxr-toy2", content=dicom, headers=DICOM)  # type: ignore[attr-defined]
    assert p.status_code == 503
    assert p.json()["code"] == "backend_unavailable"
    with pytest.raises(CircuitOpenError):  # the model itself refuses, whatever the route checks
        rt.models["cxr-toy2"].backend.infer(np.zeros((1, 1, 32, 32), np.float32))
    path.write_bytes(original)
    rt.health.run_once(integrity=True)
    assert c.get("/readyz").status_code == 200  # type: ignore[attr-defined]
    ok = c.post("/v1/predict?model=cxr-toy2", content=dicom, headers=DICOM)  # type: ignore[attr-defined]
    assert ok.status_code == 200


def test_shipped_worker_count_is_at_least_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bentoml serve serving.service:MimicryService`` without a worker setting (the container) runs 2."""
    for key in list(os.environ):
        if key.startswith("MIMICRY_SERVE_"):
            monkeypatch.delenv(key)
    assert ServeSettings().workers >= 2
    from serving.service import MimicryService

    assert MimicryService.config["workers"] == ServeSettings().workers


def test_triton_call_retried_once_after_a_dropped_connection_not_after_a_timeout(registry_dir: Path) -> None:
    from serving.backends.triton import TritonBackend

    reg = Registry(registry_dir)
    backend = TritonBackend(reg.card("cxr-toy"), url=f"127.0.0.1:{free_port()}", config=reg.config("cxr-toy"))
    ok = BackendOutput(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32), np.zeros((1, 3, 8, 8)))
    calls: list[int] = []

    def dropped_then_ok(x: np.ndarray) -> BackendOutput:
        calls.append(1)
        if len(calls) == 1:
            raise BackendUnavailableError("reset") from ConnectionResetError("reset by peer")
        return ok

    backend._infer_once = dropped_then_ok  # type: ignore[method-assign]
    assert backend._infer_chunk(np.zeros((1, 1, 32, 32), np.float32)) is ok
    assert len(calls) == 2

    def timed_out(x: np.ndarray) -> BackendOutput:
        calls.append(1)
        raise BackendUnavailableError("slow") from TimeoutError("timed out")

    calls.clear()
    backend._infer_once = timed_out  # type: ignore[method-assign]
    with pytest.raises(BackendUnavailableError):
        backend._infer_chunk(np.zeros((1, 1, 32, 32), np.float32))
    assert len(calls) == 1  # a timeout is not retried: the deadline would only be waited twice
    backend.close()
