"""Level 3: two ``bentoml serve`` instances on one host (127.0.0.1), each started by
:func:`serving.launch.start_service` with its own state directory and stopped by its process group.

* neither instance loses counts when the other starts (BentoML wipes ``$BENTOML_HOME/
  prometheus_multiproc_dir`` at start-up: each instance has its own ``BENTOML_HOME``);
* STOW-RS through an independent client, ``dicomweb_client.DICOMwebClient.store_instances``, every field of
  the answer checked against what pydicom reads from the sent files;
* a scan of 200 random paths over HTTP adds a bounded number of ``/metrics`` series, none carrying the path.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from serving.launch import ServiceProcess, build_serve_invocation, start_service

pytestmark = pytest.mark.integration

DICOM = {"content-type": "application/dicom"}
LABELS = 'runner_name="mimicry",service_name="mimicry",service_version="not available"'


@pytest.fixture(scope="module")
def two(registry_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServiceProcess]]:
    logs = tmp_path_factory.mktemp("instances")
    env = {"MIMICRY_SERVE_INGEST__UID_SALT": "instances-salt"}
    first = start_service(registry_dir, ["cxr-toy"], env=env, log_path=logs / "a.log", ready_timeout_s=90)
    services = [first]
    try:
        yield services
    finally:
        for s in services:
            s.stop()


def _predict_count(text: str) -> float:
    m = re.search(
        r'^bentoml_service_request_total\{endpoint="/v1/predict",http_response_code="200",'
        + LABELS
        + r"\} (\S+)$",
        text,
        re.M,
    )
    return float(m.group(1)) if m else 0.0


def test_state_directories_are_per_instance(tmp_path: Path) -> None:
    common = {"host": "127.0.0.1", "workers": 1, "registry": tmp_path, "models": [], "backend": "onnxruntime"}
    _, a = build_serve_invocation(port=3001, device="cpu", **common)
    _, b = build_serve_invocation(port=3002, device="cpu", **common)
    _, c = build_serve_invocation(port=3002, device="cpu", state_dir=tmp_path / "s", **common)
    assert a["BENTOML_HOME"] != b["BENTOML_HOME"]
    assert c["BENTOML_HOME"] == str(tmp_path / "s")


def test_second_instance_does_not_zero_the_first(two, registry_dir: Path, phantom_files, tmp_path) -> None:
    a = two[0]
    data = phantom_files[0].read_bytes()
    for _ in range(3):
        assert httpx.post(a.url + "/v1/predict", content=data, headers=DICOM, timeout=30).status_code == 200
    before = _predict_count(httpx.get(a.url + "/metrics", timeout=30).text)
    assert before >= 3
    b = start_service(
        registry_dir,
        ["cxr-toy"],
        env={"MIMICRY_SERVE_INGEST__UID_SALT": "instances-salt"},
        log_path=tmp_path / "b.log",
        ready_timeout_s=90,
    )
    two.append(b)
    assert b.state_dir != a.state_dir
    assert httpx.post(b.url + "/v1/predict", content=data, headers=DICOM, timeout=30).status_code == 200
    assert _predict_count(httpx.get(a.url + "/metrics", timeout=30).text) == before
    assert _predict_count(httpx.get(b.url + "/metrics", timeout=30).text) == 1
    assert httpx.post(a.url + "/v1/predict", content=data, headers=DICOM, timeout=30).status_code == 200
    assert _predict_count(httpx.get(a.url + "/metrics", timeout=30).text) == before + 1
    assert _predict_count(httpx.get(b.url + "/metrics", timeout=30).text) == 1


def test_stow_rs_with_dicomweb_client(two, phantom_files) -> None:
    from dicomweb_client.api import DICOMwebClient
    from requests.exceptions import HTTPError

    client = DICOMwebClient(url=two[0].url + "/dicomweb")
    sent = [pydicom.dcmread(f) for f in phantom_files[:2]]
    answer = client.store_instances(sent)
    assert isinstance(answer, pydicom.Dataset)
    assert set(answer.keys()) == {
        pydicom.tag.Tag(0x0008, 0x1190),
        pydicom.tag.Tag(0x0008, 0x1199),
    }  # Retrieve URL (Type 2, empty) and Referenced SOP Sequence, nothing else
    assert answer.RetrieveURL in (None, "")
    refs = answer.ReferencedSOPSequence
    assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in refs] == [
        (ds.SOPClassUID, ds.SOPInstanceUID) for ds in sent
    ]
    for r in refs:
        assert set(r.keys()) == {
            pydicom.tag.Tag(0x0008, 0x1150),
            pydicom.tag.Tag(0x0008, 0x1155),
            pydicom.tag.Tag(0x0008, 0x1190),
        }
    # into the right study: accepted; into another study: none stored → 409 (the client raises)
    study = sent[0].StudyInstanceUID
    same = client.store_instances([sent[0]], study_instance_uid=study)
    assert [r.ReferencedSOPInstanceUID for r in same.ReferencedSOPSequence] == [sent[0].SOPInstanceUID]
    with pytest.raises(HTTPError) as err:
        client.store_instances([sent[0]], study_instance_uid="1.2.826.0.1.3680043.8.498.1")
    assert err.value.response.status_code == 409
    failed = pydicom.Dataset.from_json(err.value.response.json()).FailedSOPSequence
    assert [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in failed] == [
        (sent[0].SOPInstanceUID, 0xA900)
    ]
    # a corrupted instance among good ones: 202 with both sequences
    broken = pydicom.dcmread(io.BytesIO(phantom_files[2].read_bytes()))
    broken.Modality = "CT"
    mixed = client.store_instances([sent[1], broken])
    assert [r.ReferencedSOPInstanceUID for r in mixed.ReferencedSOPSequence] == [sent[1].SOPInstanceUID]
    assert [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in mixed.FailedSOPSequence] == [
        (broken.SOPInstanceUID, 0xA900)
    ]
    # the predictions, opt-in and in request order
    body, ctype = _multipart([phantom_files[0].read_bytes()])
    r = httpx.post(
        two[0].url + "/dicomweb/studies?include=predictions",
        content=body,
        headers={"content-type": ctype},
        timeout=30,
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["predictions"][0]["prediction"]["predicted_class"] in ("Normal", "CHF", "pneumonia")


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    b = "instancesboundary"
    body = b"".join(f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{b}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={b}'


def _series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_scan_of_random_paths_adds_bounded_series(two) -> None:
    url = two[0].url
    httpx.get(url + "/metrics", timeout=30)
    before = _series(httpx.get(url + "/metrics", timeout=30).text)
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(200):
            path = f"/{uuid.uuid4()}" if i % 2 else f"/dicomweb/studies/1.2.826.0.1.3680043.8.498.{i}/series"
            r = c.get(path)
            assert r.status_code == 404
            assert r.headers["content-type"] == "application/problem+json"
    text = httpx.get(url + "/metrics", timeout=30).text
    after = _series(text)
    assert len(after - before) <= 25
    assert "1.2.826.0.1.3680043.8.498" not in text
    assert "pid=" not in text
