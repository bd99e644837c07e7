"""End-to-end test of the local stack (docs/deploy.md, "Local stack"): ``stack up`` on free ports with a
toy registry and a phantom reference store, one ``/v1/predict`` and one two-instance STOW-RS through the
service and Triton, Prometheus'
query API sees every target up and the service, Triton and audit series, ``stack down`` leaves no process.

``up`` and ``down`` run as real commands (``python -m mimicry_cli.commands.stack``), so the stack's processes
are orphans of the test like they are of a user's shell.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.registry import Registry
from mimicry_cli.stack.config import PORT_NAMES
from mimicry_cli.stack.process import read_state
from tests.deploy._support import ROOT
from tests.registry import publish_toy

pytestmark = pytest.mark.integration

JOBS = ("mimicry-serving", "mimicry-triton", "mimicry-audit", "mimicry-pushgateway")


def _free_block(n: int = len(PORT_NAMES)) -> int:
    """A base port whose block of ``n`` ports is free on 127.0.0.1 right now."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port block")


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _connections(proc: psutil.Process) -> list:
    try:
        return proc.net_connections("inet")
    except psutil.NoSuchProcess:  # a short-lived helper that already exited
        return []


def _stack(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mimicry_cli.commands.stack", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _eventually(prometheus: str, expr: str, timeout_s: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = _query(prometheus, expr)
        if result:
            return result
        assert time.monotonic() < deadline, f"Prometheus never answered {expr!r}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stack")
    publish_toy(Registry(root / "registry"), "cxr-toy")
    generate_phantom_dataset(root / "reference", PhantomConfig(n=12, size=64, seed=0))
    return root / "registry", root / "reference"


@pytest.fixture
def stack(inputs: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    registry, reference = inputs
    base = _free_block()
    ports = {name: base + i for i, name in enumerate(PORT_NAMES)}
    state_dir = tmp_path / "state"
    up = _stack(
        "up", "--registry", str(registry), "--reference", str(reference), "--state-dir", str(state_dir),
        "--ports", str(base), "--scrape-interval", "1s", "--audit-methods", "gradcam",
        "--audit-max-cases", "2", "--device", "cpu", "--timeout", "150",
        timeout=300,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert (
            f"predict: curl -s -X POST -H 'Content-Type: application/dicom' --data-binary @FILE "
            f"http://127.0.0.1:{base}/v1/predict"
        ) in up.stdout
        yield state_dir, ports
    finally:
        if (state_dir / "stack.json").exists():
            _stack("down", "--state-dir", str(state_dir), "--timeout", "10", timeout=120)


def test_stack_up_predict_scrape_down(stack: tuple[Path, dict[str, int]], inputs: tuple[Path, Path]) -> None:
    state_dir, ports = stack
    records = read_state(state_dir / "stack.json")
    assert [r.name for r in records] == ["triton", "audit", "pushgateway", "service", "prometheus"]
    tracked = {r.pid: psutil.Process(r.pid) for r in records}
    for r in records:
        tracked.update({p.pid: p for p in psutil.Process(r.pid).children(recursive=True)})

    # 127.0.0.1 only: every listening socket of every tracked process is on loopback
    listening = [c.laddr for p in tracked.values() for c in _connections(p) if c.status == psutil.CONN_LISTEN]
    assert {a.port for a in listening} >= {ports[n] for n in PORT_NAMES}
    assert {a.ip for a in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening

    status = _stack("status", "--state-dir", str(state_dir), timeout=60)
    assert status.returncode == 0, status.stdout
    assert [line.split()[2:4] for line in status.stdout.splitlines()[1:]] == [["running", "ok"]] * 5

    prometheus = f"http://127.0.0.1:{ports['prometheus']}"
    for job in JOBS:
        up = _eventually(prometheus, f'up{{job="{job}"}} == 1')
        assert up[0]["metric"]["instance"].startswith("127.0.0.1:")
    triton_expr = 'sum(nv_inference_request_success{job="mimicry-triton", model="cxr-toy"})'
    before = float(_eventually(prometheus, triton_expr)[0]["value"][1])

    dicom = sorted((inputs[1] / "files").rglob("*.dcm"))[0]
    request = urllib.request.Request(
        f"http://127.0.0.1:{ports['service']}/v1/predict",
        data=dicom.read_bytes(),
        headers={"Content-Type": "application/dicom"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.status == 200
        body = json.load(r)
    assert body["model"]["ref"] == "cxr-toy:1"
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    # DICOMweb STOW-RS: two instances in one multipart/related request, both stored with predictions
    boundary = "mimicrystackboundary"
    parts = [p.read_bytes() for p in sorted((inputs[1] / "files").rglob("*.dcm"))[1:3]]
    stow_body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    stow = urllib.request.Request(
        f"http://127.0.0.1:{ports['service']}/dicomweb/studies?include=predictions",
        data=stow_body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        method="POST",
    )
    with urllib.request.urlopen(stow, timeout=60) as r:
        assert r.status == 200
        stowed = json.load(r)
    assert len(stowed["dicom"]["00081199"]["Value"]) == 2  # the standard answer, beside the predictions
    assert [p["status"] for p in stowed["predictions"]] == ["stored", "stored"]

    # the requests went through Triton (1 predict + 2 STOW instances), and the service and audit series
    # arrive in Prometheus
    _eventually(prometheus, f"{triton_expr} >= {before + 3}")
    served = _eventually(
        prometheus, 'bentoml_service_request_total{job="mimicry-serving", endpoint="/v1/predict"} >= 1'
    )
    assert served[0]["metric"]["http_response_code"] == "200"
    audit = _eventually(prometheus, 'mimicry_audit_runs_total{job="mimicry-audit"}')
    assert {s["metric"]["status"] for s in audit} == {"passed", "failed", "error"}

    down = _stack("down", "--state-dir", str(state_dir), "--timeout", "20", timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [line.split()[0] for line in down.stdout.splitlines()[:5]] == [
        "prometheus", "service", "pushgateway", "audit", "triton",
    ]  # fmt: skip
    assert not (state_dir / "stack.json").exists()
    deadline = time.monotonic() + 10
    left = tracked
    while left and time.monotonic() < deadline:  # orphans are reaped by init shortly after they exit
        left = {pid: p for pid, p in left.items() if _running(p)}
        time.sleep(0.1)
    assert left == {}, sorted(left)
