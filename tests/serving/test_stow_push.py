"""STOW-RS with a push destination (docs/serving.md, "PACS integration"): every accepted instance's
Structured Report and Segmentation are spooled before the answer; a destination outage loses nothing (the
objects wait in the spool and arrive once it is back); a full spool fails the instance with 0xA700. The
destination is a pynetdicom Storage SCP on 127.0.0.1 (started late to simulate the outage)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
from pydicom.uid import SegmentationStorage

from serving.push import shared_queue
from serving.settings import PushSettings
from tests.serving.conftest import make_client
from tests.serving.pacs_helpers import RecordingScp, free_port

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
FAILED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081197"


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    b = "pushboundary"
    body = b"".join(f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{b}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={b}'


def _push_env(serve_env, spool: Path, port: int, **extra: str) -> None:
    serve_env.setenv("MIMICRY_SERVE_UID_SECRET", "stow-push-secret")
    serve_env.setenv("MIMICRY_SERVE_PUSH__KIND", "dimse")
    serve_env.setenv("MIMICRY_SERVE_PUSH__AE_TITLE", "RECORDER")
    serve_env.setenv("MIMICRY_SERVE_PUSH__PORT", str(port))
    serve_env.setenv("MIMICRY_SERVE_PUSH__SPOOL_DIR", str(spool))
    serve_env.setenv("MIMICRY_SERVE_PUSH__ATTEMPTS", "1")
    serve_env.setenv("MIMICRY_SERVE_PUSH__BACKOFF_S", "0.1")
    serve_env.setenv("MIMICRY_SERVE_PUSH__MAX_BACKOFF_S", "0.5")
    serve_env.setenv("MIMICRY_SERVE_PUSH__TIMEOUT_S", "5")
    for key, value in extra.items():
        serve_env.setenv(f"MIMICRY_SERVE_PUSH__{key}", value)


def _stop(spool: Path, port: int) -> None:
    queue = shared_queue(PushSettings(kind="dimse", spool_dir=spool, port=port))
    assert queue is not None
    queue.stop()


def test_stow_spools_results_through_an_outage(serve_env, phantom_files, tmp_path: Path) -> None:
    port, spool = free_port(), tmp_path / "spool"
    _push_env(serve_env, spool, port)
    sources = [pydicom.dcmread(p) for p in phantom_files[:2]]
    body, ctype = _multipart([p.read_bytes() for p in phantom_files[:2]])
    scp = RecordingScp(port)
    try:
        with make_client() as client:  # the destination is down
            r = client.post("/dicomweb/studies", content=body, headers={"content-type": ctype})
            assert r.status_code == 200, r.text
            assert r.headers["x-mimicry-results-destination"] == "dimse"
            assert r.headers["x-mimicry-results-spooled"] == "4"
            assert FAILED_SOP_SEQUENCE not in r.json()
            spooled = [pydicom.dcmread(p, stop_before_pixels=True) for p in spool.glob("*.dcm")]
            assert sorted(str(d.SOPClassUID) for d in spooled) == sorted(
                [COMPREHENSIVE_3D_SR, SegmentationStorage] * 2
            )
            scp.start()  # the destination is back: everything spooled arrives
            deadline = time.monotonic() + 60
            while len(scp.received) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        scp.stop()
        _stop(spool, port)
    assert sorted(str(d.SOPClassUID) for d in scp.received.values()) == sorted(
        [COMPREHENSIVE_3D_SR, SegmentationStorage] * 2
    )
    assert list(spool.glob("*.dcm")) == []
    studies = {str(d.StudyInstanceUID) for d in scp.received.values()}
    assert studies == {str(s.StudyInstanceUID) for s in sources}  # results join the source's study
    refs = {
        str(d.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
        for d in scp.received.values()
        if str(d.SOPClassUID) == SegmentationStorage
    }
    assert refs == {str(s.SOPInstanceUID) for s in sources}


def test_stow_with_a_full_spool_fails_the_instance(serve_env, phantom_files, tmp_path: Path) -> None:
    port, spool = free_port(), tmp_path / "spool"
    _push_env(serve_env, spool, port, MAX_QUEUED="2")  # room for one instance's results; destination down
    body, ctype = _multipart([p.read_bytes() for p in phantom_files[:2]])
    try:
        with make_client() as client:
            r = client.post("/dicomweb/studies", content=body, headers={"content-type": ctype})
            assert r.status_code == 202, r.text  # the first accepted, the second refused
            failed = r.json()[FAILED_SOP_SEQUENCE]["Value"]
            assert [f[FAILURE_REASON]["Value"] for f in failed] == [[0xA700]]
            src = pydicom.dcmread(io.BytesIO(phantom_files[1].read_bytes()), stop_before_pixels=True)
            assert failed[0]["00081155"]["Value"] == [str(src.SOPInstanceUID)]
            assert r.headers["x-mimicry-results-spooled"] == "2"
            assert client.get("/readyz").status_code == 200  # the service stays up
    finally:
        _stop(spool, port)
    assert len(list(spool.glob("*.dcm"))) == 2  # nothing lost: the refused instance is the PACS's to resend


def test_stow_without_push_destination_has_no_results_headers(client, phantom_files) -> None:
    body, ctype = _multipart([phantom_files[0].read_bytes()])
    r = client.post("/dicomweb/studies", content=body, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    assert "x-mimicry-results-spooled" not in r.headers
