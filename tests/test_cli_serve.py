"""``mimicry serve`` is the server itself: it replaces its own process with ``bentoml serve`` (no wrapper
left holding memory), so SIGTERM to the PID a supervisor started stops the server.

A real server on 127.0.0.1 with a one-model toy registry, in its own session, stopped by PID (and its group
killed in teardown whatever happens)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from mimicry.registry import Registry
from serving.launch import free_port
from tests.registry import publish_toy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    registry = tmp_path / "registry"
    publish_toy(Registry(registry), "cxr-toy")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMICRY_SERVE_")}
    env.pop("BENTOML_CONFIG_OPTIONS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")  # this instance's own BentoML state
    env["MIMICRY_SERVE_INGEST__UID_SALT"] = "serve-cli-test"
    log = tmp_path / "serve.log"
    argv = [
        sys.executable, "-m", "mimicry_cli", "serve", "--registry", str(registry), "--model", "cxr-toy",
        "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        # BentoML starts its workers in sessions of their own: kill the tree we started, then the group.
        if proc.poll() is None:  # still ours (not reaped): its PID cannot have been reused
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_sigterm_to_mimicry_serve_stops_the_server(served: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    proc, url, log = served
    deadline = time.monotonic() + 120
    while not _answers(url + "/readyz"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "not ready in 120 s:\n" + log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    leader = psutil.Process(proc.pid)
    cmdline = leader.cmdline()
    # The PID we started now runs BentoML's server itself: no mimicry wrapper is left waiting on a child.
    assert cmdline[1:4] == ["-m", "bentoml", "serve"], cmdline
    server_tree = [leader, *leader.children(recursive=True)]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) is not None
    assert not _answers(url + "/readyz")
    _, alive = psutil.wait_procs(server_tree, timeout=30)
    assert alive == [], [p.pid for p in alive]


def test_a_tampered_registry_ends_mimicry_serve_with_the_integrity_error(tmp_path: Path) -> None:
    """The pre-flight refuses before any server starts: exit code 2, the error named, nothing listening."""
    registry = tmp_path / "registry"
    card = publish_toy(Registry(registry), "cxr-toy")
    onnx = registry / "cxr-toy" / str(card.version) / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMICRY_SERVE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")
    argv = [
        sys.executable, "-m", "mimicry_cli", "serve", "--registry", str(registry), "--model", "cxr-toy",
        "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "IntegrityError" in done.stderr
    assert "model.onnx" in done.stderr
    assert not _answers(f"http://127.0.0.1:{port}/livez")
