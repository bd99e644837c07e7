"""The PACS round trip over DICOMweb against a real PACS: Orthanc (with its DICOMweb plugin, started on
127.0.0.1) forwards a study to the service's STOW-RS (``POST /dicom-web/servers/mimicry/stow``, one
multipart/related request), the service (real BentoML, :func:`serving.launch.start_service`) answers every
instance and pushes the Structured Report and the saliency Segmentation of each back into Orthanc over
STOW-RS; the test finds them, through Orthanc's REST API, in the source's study, referencing their sources,
valid for dciodvfy. The study holds full-size radiographs (3000 x 2500, 12-bit, 15 MB each; one stored as
HTJ2K lossless): the request
as a whole is over ``max_request_bytes`` while each instance is under it, so it passes only because the limit
is per instance and the body is parsed as a stream (docs/serving.md, "PACS integration")."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from mimicry.dicom.results import to_part10
from serving.launch import start_service
from tests.serving.pacs_helpers import free_port, full_size, referenced_sources, run_orthanc

pytestmark = pytest.mark.integration  # Orthanc and its DICOMweb plugin missing: run_orthanc fails

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
N_FULL = 3  # full-size instances in the study
MAX_INSTANCE = 24 * 2**20  # per-instance limit: one full-size instance fits, the whole request does not


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric, parsed by prometheus-client's exposition parser."""
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def _peak_rss_mib(pid: int) -> dict[str, float]:
    """Peak resident memory (VmHWM) of the service's processes, MiB (reported, not asserted)."""
    out = {}
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        hwm = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")), None)
        if hwm is not None:
            out[f"{proc.pid}"] = int(hwm) / 1024
    return out


def _dciodvfy_errors(ds: Dataset, path: Path) -> list[str]:
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("Error")]


def test_orthanc_forwards_a_study_over_stow_and_gets_the_results_back(
    registry_dir: Path, phantom_files, tmp_path: Path
) -> None:
    mimicry_port = free_port()
    servers = {"mimicry": {"Url": f"http://127.0.0.1:{mimicry_port}/dicomweb/", "ChunkedTransfers": True}}
    with run_orthanc(tmp_path / "orthanc", {}, dicomweb_servers=servers) as orthanc:
        service = start_service(
            registry_dir,
            ["cxr-toy"],
            port=mimicry_port,
            env={
                "MIMICRY_SERVE_UID_SECRET": "dicomweb-test-secret",
                "MIMICRY_SERVE_MAX_REQUEST_BYTES": str(MAX_INSTANCE),
                "MIMICRY_SERVE_PUSH__KIND": "stow",
                "MIMICRY_SERVE_PUSH__URL": f"{orthanc.url}/dicom-web",
                "MIMICRY_SERVE_PUSH__SPOOL_DIR": str(tmp_path / "spool"),
                "MIMICRY_SERVE_PUSH__BACKOFF_S": "0.2",
                "MIMICRY_SERVE_PUSH__MAX_BACKOFF_S": "2",
            },
            log_path=tmp_path / "serve.log",
            state_dir=tmp_path / "bentoml",
            ready_timeout_s=120,
        )
        try:
            small = pydicom.dcmread(phantom_files[0])
            sources = [small] + [full_size(small) for _ in range(N_FULL - 1)] + [full_size(small, htj2k=True)]
            total = sum(len(to_part10(ds)) for ds in sources)
            assert total > MAX_INSTANCE  # the request as a whole is over the per-instance limit
            with orthanc.client() as http:
                for ds in sources:
                    r = http.post("/instances", content=to_part10(ds))
                    assert r.status_code == 200, r.text
                study_id = r.json()["ParentStudy"]
                # the last source is stored (and forwarded) as HTJ2K lossless
                header = http.get(f"/instances/{r.json()['ID']}/header").json()
                assert header["0002,0010"]["Value"].strip("\x00 ") == "1.2.840.10008.1.2.4.201"
                r = http.post("/dicom-web/servers/mimicry/stow", json={"Resources": [study_id]})
                assert r.status_code == 200, r.text + service.log_text()[-3000:]
                # the results arrive asynchronously (the push spool): wait for 2 per source
                deadline = time.monotonic() + 300
                while True:
                    instances = http.get(f"/studies/{study_id}/instances").json()
                    if len(instances) >= 3 * len(sources) or time.monotonic() > deadline:
                        break
                    time.sleep(1)
                found: dict[str, list[Dataset]] = {}
                for inst in instances:
                    data = http.get(f"/instances/{inst['ID']}/file").content
                    ds = pydicom.dcmread(io.BytesIO(data))
                    found.setdefault(str(ds.SOPClassUID), []).append(ds)
            metrics = httpx.get(f"{service.url}/metrics", timeout=30).text
            peak = _peak_rss_mib(service.pid)
            log = service.log_text()
        finally:
            service.stop()
    assert "Traceback" not in log  # no request, instance or push failed with an exception
    # Orthanc sent the study as one STOW-RS request, answered 200 (every instance accepted); 2 objects each
    stow = [
        (labels, v)
        for labels, v in _samples(metrics, "bentoml_service_request_total")
        if labels.get("endpoint") == "/dicomweb/studies"
    ]
    assert [v for _, v in stow] == [1.0], stow
    assert stow[0][0]["http_response_code"] == "200", stow
    assert sum(v for _, v in _samples(metrics, "mimicry_push_sent_total")) == 2 * len(sources)
    print(f"one STOW-RS request of {total / 2**20:.1f} MiB; peak RSS (MiB) by process: {peak}")
    srcs = {str(s.SOPInstanceUID) for s in sources}
    srs, segs = found.get(COMPREHENSIVE_3D_SR, []), found.get(SegmentationStorage, [])
    print(f"dicomweb round trip: {len(sources)} sources, {len(srs)} SR, {len(segs)} SEG in the study")
    assert len(srs) == len(sources)  # every instance was answered and every result arrived
    assert len(segs) == len(sources)
    sr_refs, seg_refs = referenced_sources(srs, segs)
    assert sr_refs == srcs
    assert seg_refs == srcs
    assert {str(d.StudyInstanceUID) for d in srs + segs} == {str(small.StudyInstanceUID)}
    assert sum((s.Rows, s.Columns) == (3000, 2500) for s in segs) == N_FULL
    # every object as the PACS stored it is valid for dciodvfy (dicom3tools)
    errors: dict[str, list[str]] = {}
    for i, ds in enumerate(srs + segs):
        errors[f"{ds.Modality}{i}"] = _dciodvfy_errors(ds, tmp_path / f"result{i}.dcm")
    print(f"dciodvfy: {len(errors)} objects, {sum(map(len, errors.values()))} errors")
    assert all(e == [] for e in errors.values()), errors
