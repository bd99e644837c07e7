"""``mimicry listen`` runs the DICOM listener from the console script: C-ECHO answers, a tampered registry is
refused before it listens. A real process on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pynetdicom import AE

from mimicry.registry import Registry
from serving.launch import free_port
from tests.registry import publish_toy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
VERIFICATION = "1.2.840.10008.1.1"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMICRY_SERVE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["MIMICRY_SERVE_UID_SECRET"] = "listen-cli-test"
    env["MIMICRY_SERVE_PUSH__SPOOL_DIR"] = str(tmp_path / "spool")
    return env


def _echo(port: int) -> int | None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="MIMICRY")
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_listen_answers_c_echo_and_stops_on_sigterm(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    publish_toy(Registry(registry), "cxr-toy")
    port = free_port()
    argv = [sys.executable, "-m", "mimicry_cli", "listen", "--registry", str(registry), "--model", "cxr-toy",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = tmp_path / "listen.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        status = None
        while status is None:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            status = _echo(port)
            if status is None:
                time.sleep(0.5)
        assert status == 0x0000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_listen_refuses_a_tampered_registry(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    card = publish_toy(Registry(registry), "cxr-toy")
    weights = registry / "cxr-toy" / str(card.version) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    argv = [sys.executable, "-m", "mimicry_cli", "listen", "--registry", str(registry), "--model", "cxr-toy",
            "--port", str(free_port())]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "IntegrityError" in done.stderr
    assert "weights.safetensors" in done.stderr
