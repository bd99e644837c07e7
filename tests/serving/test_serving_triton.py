"""The Triton backend against a real ``tritonserver`` (PyTriton, :mod:`serving.triton_local`) on 127.0.0.1
(docs/serving.md, "Triton"): metadata checked against the card, predictions and Grad-CAM equal to the
onnxruntime backend's over HTTP and gRPC, 503 + ``Retry-After`` while Triton is unreachable, and while it
hangs (``tritonserver`` frozen by SIGSTOP, resumed by SIGCONT: docs/serving.md, "Backend failures"), and a
tampered registry artifact under a service on Triton.

The launcher runs as ``python -m serving.triton_local`` in its own process group (tritonserver is its child,
in the same group) and the group is stopped in teardown.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from mimicry.registry import Registry
from serving.backends.guard import CLOSED, HALF_OPEN, OPEN, GuardedBackend
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.backends.protocol import (
    BackendUnavailableError,
    CircuitOpenError,
    DeadlineExceededError,
    ModelMismatchError,
)
from serving.backends.triton import TritonBackend, expected_signature
from serving.launch import free_port, stop_process_group
from serving.runtime import active_runtime
from tests.serving.conftest import make_client
from tests.serving.test_serving_resilience import check_tamper_marks_not_ready

pytestmark = pytest.mark.integration

DICOM = {"content-type": "application/dicom"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def triton(registry_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    log_path = tmp_path_factory.mktemp("triton") / "triton.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in teardown
    argv = [sys.executable, "-m", "serving.triton_local", "--registry", str(registry_dir)]
    argv += ["--models", "cxr-toy,cxr-toy2", "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    argv += ["--metrics-port", str(metrics_port)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while b"triton ready" not in log_path.read_bytes():
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "triton did not start"
            time.sleep(0.25)
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "tritonserver" in p.name()]
        assert len(servers) == 1
        yield {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}", "server": servers[0]}
    finally:
        stop_process_group(proc, timeout_s=20)
        log.close()
    assert not servers[0].is_running() or servers[0].status() == psutil.STATUS_ZOMBIE


def test_launcher_serves_config_pbtxt_signature(triton, registry_dir: Path) -> None:
    r = httpx.get(f"http://{triton['http']}/v2/models/cxr-toy/versions/1", timeout=10)
    assert r.status_code == 200
    meta = r.json()
    assert meta["name"] == "cxr-toy"
    inputs = [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]]
    assert inputs == [("image", "FP32", [-1, 1, 32, 32])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [
        ("logits", [-1, 3]),
        ("probs", [-1, 3]),
        ("cam", [-1, 3, 8, 8]),
    ]
    cfg = httpx.get(f"http://{triton['http']}/v2/models/cxr-toy/config", timeout=10).json()
    assert cfg["max_batch_size"] == Registry(registry_dir).config("cxr-toy").max_batch_size


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_backend_equals_onnxruntime(triton, registry_dir: Path, protocol: str) -> None:
    reg = Registry(registry_dir)
    card = reg.card("cxr-toy")
    backend = TritonBackend(card, url=triton[protocol], protocol=protocol, config=reg.config("cxr-toy"))
    assert backend.is_ready()
    assert backend.provider == "triton:python"
    x = np.random.default_rng(3).random((37, 1, 32, 32), dtype=np.float32)  # > max_batch_size: chunked
    got = backend.infer(x)
    want = OnnxRuntimeBackend(reg.load_onnx_path(card.ref), card, device="cpu").infer(x)
    np.testing.assert_array_equal(got.probs, want.probs)
    np.testing.assert_array_equal(got.logits, want.logits)
    np.testing.assert_array_equal(got.cam, want.cam)
    backend.close()


def test_metadata_mismatch_refused(triton, registry_dir: Path) -> None:
    reg = Registry(registry_dir)
    card = reg.card("cxr-toy")
    four = card.model_copy(update={"class_names": ["a", "b", "c", "d"]})
    with pytest.raises(ModelMismatchError, match="class count"):
        expected_signature(four, reg.config("cxr-toy"))
    assert card.onnx is not None
    onnx4 = card.onnx.model_copy(update={"num_classes": 4})
    with pytest.raises(ModelMismatchError, match="different signature"):
        TritonBackend(four.model_copy(update={"onnx": onnx4}), url=triton["http"], config=None)
    config = reg.config("cxr-toy")
    other = dataclasses.replace(config, max_batch_size=config.max_batch_size + 1)
    with pytest.raises(ModelMismatchError, match="max_batch_size"):
        TritonBackend(card, url=triton["http"], config=other)


def _explain_map(client, data: bytes) -> np.ndarray:
    r = client.post("/v1/explain?target=CHF&space=model&encoding=float16", content=data, headers=DICOM)
    assert r.status_code == 200, r.text
    body = r.json()
    return np.frombuffer(base64.b64decode(body["map"]["data"]), "<f2").reshape(body["map"]["shape"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_service_on_triton_equals_onnxruntime(triton, serve_env, phantom_files, protocol: str) -> None:
    data = [f.read_bytes() for f in phantom_files]
    with make_client() as c:
        want = [c.post("/v1/predict", content=d, headers=DICOM).json()["probabilities"] for d in data]
        want_map = _explain_map(c, data[1])
    serve_env.setenv("MIMICRY_SERVE_BACKEND", "triton")
    serve_env.setenv("MIMICRY_SERVE_TRITON_URL", str(triton[protocol]))
    serve_env.setenv("MIMICRY_SERVE_TRITON_PROTOCOL", protocol)
    with make_client() as c:
        ready = c.get("/readyz").json()
        assert ready["ready"] is True
        assert {(m["backend"], m["provider"]) for m in ready["models"]} == {("triton", "triton:python")}
        got = [c.post("/v1/predict", content=d, headers=DICOM).json()["probabilities"] for d in data]
        got_map = _explain_map(c, data[1])
    assert got == want
    np.testing.assert_array_equal(got_map, want_map)


def test_unreachable_triton_is_503_with_retry_after(serve_env, phantom_files) -> None:
    serve_env.setenv("MIMICRY_SERVE_BACKEND", "triton")
    serve_env.setenv("MIMICRY_SERVE_TRITON_URL", f"127.0.0.1:{free_port()}")  # nothing listens there
    serve_env.setenv("MIMICRY_SERVE_RETRY_AFTER_S", "7")
    with make_client() as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "7"
        assert r.json()["ready"] is False
        assert c.get("/livez").status_code == 200
        p = c.post("/v1/predict", content=phantom_files[0].read_bytes(), headers=DICOM)
        assert p.status_code == 503
        assert p.headers["retry-after"] == "7"
        assert p.json()["code"] == "backend_unavailable"


def test_backend_down_raises_unavailable(registry_dir: Path) -> None:
    reg = Registry(registry_dir)
    card = reg.card("cxr-toy")
    for protocol in ("http", "grpc"):
        url = f"127.0.0.1:{free_port()}"
        b = TritonBackend(card, url=url, protocol=protocol, config=reg.config("cxr-toy"))
        assert b.is_ready() is False
        with pytest.raises(BackendUnavailableError):
            b.infer(np.zeros((1, 1, 32, 32), np.float32))
        b.close()


# ---------------------------------------------------------------------- a hung Triton (SIGSTOP)


@contextmanager
def frozen(server: psutil.Process) -> Iterator[None]:
    """``tritonserver`` stopped by SIGSTOP (its sockets stay open: connections are accepted by the kernel
    and never answered), resumed by SIGCONT on the way out whatever happens."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def _until(predicate, what: str, bound_s: float = 60.0) -> None:
    """Wait for a condition the background probe brings about (a bound against hanging, not a timing)."""
    deadline = time.monotonic() + bound_s
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_frozen_triton_deadline_then_breaker_then_recovery(triton, registry_dir: Path, protocol: str) -> None:
    reg = Registry(registry_dir)
    card = reg.card("cxr-toy")
    inner = TritonBackend(
        card,
        url=triton[protocol],
        protocol=protocol,
        timeout_s=1.0,
        health_timeout_s=0.5,
        config=reg.config("cxr-toy"),
    )
    guarded = GuardedBackend(inner, timeout_s=1.0, fail_max=1, reset_timeout_s=60)
    x = np.zeros((2, 1, 32, 32), np.float32)
    try:
        assert len(guarded.infer(x)) == 2
        with frozen(triton["server"]):
            with pytest.raises(DeadlineExceededError) as info:  # cut by the deadline, not by the client
                guarded.infer(x)
            assert info.value.timeout_s == 1.0
            assert guarded.breaker.state == OPEN
            with pytest.raises(CircuitOpenError):  # fails fast: the deadline is not waited again
                guarded.infer(x)
            assert inner.is_ready() is False  # the health check times out too
        _until(inner.is_ready, "triton answers its health check after SIGCONT")
        guarded.breaker.probe_ok()
        assert guarded.breaker.state == HALF_OPEN
        assert len(guarded.infer(x)) == 2  # the trial succeeds ...
        assert guarded.breaker.state == CLOSED  # ... and closes the breaker
    finally:
        guarded.close()


def test_service_with_frozen_triton_fails_fast_and_recovers(triton, serve_env, phantom_files) -> None:
    serve_env.setenv("MIMICRY_SERVE_BACKEND", "triton")
    serve_env.setenv("MIMICRY_SERVE_TRITON_URL", str(triton["http"]))
    serve_env.setenv("MIMICRY_SERVE_TRITON_TIMEOUT_S", "5")
    serve_env.setenv("MIMICRY_SERVE_PROBE_INTERVAL_S", "0.2")
    serve_env.setenv("MIMICRY_SERVE_PROBE_TIMEOUT_S", "0.5")
    serve_env.setenv("MIMICRY_SERVE_RETRY_AFTER_S", "3")
    dicom = phantom_files[0].read_bytes()
    with make_client() as c:
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/predict", content=dicom, headers=DICOM).status_code == 200
        with frozen(triton["server"]):
            _until(lambda: c.get("/readyz").status_code == 503, "/readyz turns 503 while triton is frozen")
            assert c.get("/livez").status_code == 200  # never touches a backend
            ready = c.get("/readyz")
            assert ready.headers["retry-after"] == "3"
            details = ready.json()
            assert details["ready"] is False
            assert {m["breaker"] for m in details["models"]} == {OPEN}
            assert all("health check" in m["reason"] for m in details["models"])
            p = c.post("/v1/predict", content=dicom, headers=DICOM)
            assert p.status_code == 503
            assert p.headers["retry-after"]
            assert p.json()["code"] == "backend_unavailable"
            rt = active_runtime()
            assert rt is not None
            with pytest.raises(CircuitOpenError):  # the backend itself refuses, not only the route
                rt.models["cxr-toy"].backend.infer(np.zeros((1, 1, 32, 32), np.float32))
        _until(lambda: c.get("/readyz").status_code == 200, "/readyz turns 200 after SIGCONT")
        r = c.post("/v1/predict", content=dicom, headers=DICOM)
        assert r.status_code == 200, r.text
        assert {m["breaker"] for m in c.get("/readyz").json()["models"]} <= {CLOSED, HALF_OPEN}


def test_tampered_registry_under_a_service_on_triton(
    triton, serve_env, registry_dir: Path, tmp_path: Path, phantom_files
) -> None:
    own = tmp_path / "registry"
    shutil.copytree(registry_dir, own)  # the service verifies this copy; triton serves the same bytes
    serve_env.setenv("MIMICRY_SERVE_REGISTRY", str(own))
    serve_env.setenv("MIMICRY_SERVE_BACKEND", "triton")
    serve_env.setenv("MIMICRY_SERVE_TRITON_URL", str(triton["http"]))
    serve_env.setenv("MIMICRY_SERVE_INTEGRITY_INTERVAL_S", "3600")  # the rounds are run by the test
    serve_env.setenv("MIMICRY_SERVE_PROBE_INTERVAL_S", "3600")
    with make_client() as c:
        rt = active_runtime()
        assert rt is not None
        check_tamper_marks_not_ready(c, rt, own, phantom_files[0].read_bytes())
