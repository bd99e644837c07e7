"""A worker that dies mid-request (docs/serving.md, "Backend failures"): ``bentoml serve`` with 2 workers on
127.0.0.1, one request held open half-sent on a known worker, that worker SIGKILLed.

What the test pins down: the request in flight on the dead worker gets **no HTTP response** (the connection
is closed or reset; a client or ingress retries it — ``/v1/predict`` and ``/v1/explain`` are idempotent);
requests keep being served by the surviving worker meanwhile; BentoML's arbiter starts a replacement worker
that becomes ready on its own. Recovery times are measured by ``bench/bench_resilience.py``, not here.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from serving.launch import start_service

pytestmark = pytest.mark.integration

DICOM = {"content-type": "application/dicom"}


def _until(predicate: Callable[[], bool], what: str, bound_s: float = 120.0) -> None:
    """Wait for something the server brings about (a bound against hanging, not a timing)."""
    deadline = time.monotonic() + bound_s
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def _ready_pid(url: str) -> int | None:
    try:
        r = httpx.get(url + "/readyz", timeout=5, headers={"connection": "close"})
    except httpx.HTTPError:
        return None
    return int(r.json()["pid"]) if r.status_code == 200 else None


def _owner(server_pid: int, port: int, client_port: int) -> int | None:
    """PID of the process of ``server_pid``'s group holding the accepted connection from ``client_port``."""
    for proc in psutil.Process(server_pid).children(recursive=True):
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        for c in conns:
            if c.laddr and c.raddr and c.laddr.port == port and c.raddr.port == client_port:
                return proc.pid
    return None


def test_worker_killed_mid_request(registry_dir: Path, phantom_files: list[Path], tmp_path: Path) -> None:
    dicom = phantom_files[0].read_bytes()
    service = start_service(
        registry_dir,
        ["cxr-toy"],
        workers=2,
        device="cpu",
        env={"MIMICRY_SERVE_INGEST__UID_SALT": "crash-test"},
        log_path=tmp_path / "serve.log",
        ready_timeout_s=120,
    )
    try:
        host, port = "127.0.0.1", int(service.url.rsplit(":", 1)[1])
        # a request whose body is half sent: it sits in a worker until the rest arrives
        sock = socket.create_connection((host, port), timeout=30)
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/dicom\r\n"
            f"Content-Length: {len(dicom)}\r\nConnection: close\r\n\r\n"
        ).encode()
        sock.sendall(head + dicom[: len(dicom) // 2])
        client_port = sock.getsockname()[1]
        victim: list[int] = []

        def accepted() -> bool:
            pid = _owner(service.pid, port, client_port)
            if pid is not None:
                victim.append(pid)
            return pid is not None

        _until(accepted, "a worker accepted the connection")
        os.kill(victim[0], signal.SIGKILL)
        try:
            sock.sendall(dicom[len(dicom) // 2 :])
            answer = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
        finally:
            sock.close()
        assert not answer.startswith(b"HTTP/")  # the in-flight request is lost, not answered

        # the surviving worker serves meanwhile, and a replacement worker (a new PID) becomes ready
        r = httpx.post(service.url + "/v1/predict", content=dicom, headers=DICOM, timeout=60)
        assert r.status_code == 200, r.text
        seen: set[int] = set()

        def replacement_ready() -> bool:
            pid = _ready_pid(service.url)
            if pid is not None:
                seen.add(pid)
            return len(seen - {victim[0]}) >= 2

        _until(replacement_ready, "two live workers again, neither the killed one")
        assert victim[0] not in seen
        assert service.proc.poll() is None  # the server as a whole never went down
    finally:
        service.stop()
