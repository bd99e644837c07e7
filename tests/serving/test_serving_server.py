"""Level 3: ``bentoml serve`` as a subprocess on 127.0.0.1 with 2 workers, driven over HTTP and by
``bentoml.SyncHTTPClient`` (docs/serving.md: "Endpoints", "Error codes", "Metrics").

One server per module (start-up costs seconds): started in its own process group by
:func:`serving.launch.start_service` and stopped by that group's id in teardown.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from mimicry.dicom import DicomIngestError, hash_uid, read_dicom
from mimicry.registry import Registry
from mimicry.settings import IngestSettings
from serving import pipeline
from serving.launch import ServiceProcess, start_service
from serving.settings import ServeSettings

pytestmark = pytest.mark.integration

SALT = "server-test-salt"
DICOM = {"content-type": "application/dicom"}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def server(registry_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    service = start_service(
        registry_dir,
        ["cxr-toy", "cxr-toy2:1"],
        workers=2,
        device="cpu",
        env={"MIMICRY_SERVE_INGEST__UID_SALT": SALT, "MIMICRY_SERVE_MAX_REQUEST_BYTES": str(2**20)},
        log_path=log,
        ready_timeout_s=90,
    )
    try:
        yield service
    finally:
        service.stop()
        assert service.proc.poll() is not None


@pytest.fixture(scope="module")
def http(server: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


def _metric(text: str, name: str, labels: dict[str, str]) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


def _worker_pids(url: str, tries: int = 60) -> set[int]:
    """PIDs of the workers answering ``/readyz`` (a fresh connection per request: the kernel spreads them)."""
    pids: set[int] = set()
    for _ in range(tries):
        pids.add(httpx.get(url + "/readyz", timeout=10).json()["pid"])
        if len(pids) >= 2:
            break
    return pids


def test_predict_explain_models_over_http(server, http, registry_dir: Path, phantom_files) -> None:
    data = phantom_files[0].read_bytes()
    ready = http.get("/readyz").json()
    assert ready["ready"] is True
    assert [(m["name"], m["provider"]) for m in ready["models"]] == [
        ("cxr-toy", "CPUExecutionProvider"),
        ("cxr-toy2", "CPUExecutionProvider"),
    ]
    r = http.post("/v1/predict", content=data, headers=DICOM)
    assert r.status_code == 200, r.text
    settings = ServeSettings(registry=registry_dir)
    model = pipeline.load_served_model(Registry(registry_dir), "cxr-toy", settings)
    prep = pipeline.prepare(pipeline.ingest(data, settings.ingest), model.card)
    out = model.backend.infer(prep.x)
    np.testing.assert_allclose(list(r.json()["probabilities"].values()), out.probs[0], atol=1e-6)
    ds = pydicom.dcmread(io.BytesIO(data))

    assert r.json()["instance"]["sop_instance_uid_hash"] == hash_uid(str(ds.SOPInstanceUID), SALT)
    e = http.post("/v1/explain", params={"format": "png", "target": "CHF"}, content=data, headers=DICOM)
    assert e.status_code == 200
    assert e.headers["content-type"] == "image/png"
    assert e.headers["x-mimicry-target"] == "CHF"
    assert [m["name"] for m in http.get("/v1/models").json()["models"]] == ["cxr-toy", "cxr-toy2"]


def test_sync_http_client_batched_infer(server, registry_dir: Path, phantom_files) -> None:
    """The BentoML-native batchable API through BentoML's own client."""
    import bentoml

    settings = ServeSettings(registry=registry_dir)
    model = pipeline.load_served_model(Registry(registry_dir), "cxr-toy", settings)
    x = np.concatenate(
        [
            pipeline.prepare(pipeline.ingest(f.read_bytes(), settings.ingest), model.card).x
            for f in phantom_files
        ]
    )
    with bentoml.SyncHTTPClient(server.url, server_ready_timeout=30) as client:
        assert client.is_ready()
        probs = np.asarray(client.infer(images=x))
    assert probs.shape == (len(phantom_files), 3)
    np.testing.assert_allclose(probs, model.backend.infer(x).probs, atol=1e-6)


def test_metrics_aggregate_across_two_workers(server, http, phantom_files) -> None:
    """Every scrape (answered by either worker) reports the requests both workers served."""
    assert len(_worker_pids(server.url)) == 2
    labels = {"model": "cxr-toy2"}
    before = http.get("/metrics").text
    classes = ("Normal", "CHF", "pneumonia")
    n_before = sum(_metric(before, "mimicry_predictions_total", {**labels, "class": c}) for c in classes)
    inf_before = _metric(before, "mimicry_inference_seconds_count", {**labels, "backend": "onnxruntime"})
    n = 12
    for i in range(n):  # a fresh connection per request: both workers get some
        r = httpx.post(
            server.url + "/v1/predict?model=cxr-toy2",
            content=phantom_files[i % len(phantom_files)].read_bytes(),
            headers=DICOM,
            timeout=30,
        )
        assert r.status_code == 200
    rejected_before = _metric(before, "mimicry_input_rejected_total", {"reason": "not_dicom"})
    httpx.post(server.url + "/v1/predict", content=b"\x01" * 300, headers=DICOM, timeout=30)
    for _ in range(4):  # separate connections: scrapes land on both workers
        text = httpx.get(server.url + "/metrics", timeout=30).text
        total = sum(_metric(text, "mimicry_predictions_total", {**labels, "class": c}) for c in classes)
        assert total == n_before + n
        assert _metric(text, "mimicry_inference_seconds_count", {**labels, "backend": "onnxruntime"}) == (
            inf_before + n
        )
        assert _metric(text, "mimicry_input_rejected_total", {"reason": "not_dicom"}) == rejected_before + 1
        info = {
            "model": "cxr-toy2",
            "version": "1",
            "backend": "onnxruntime",
            "provider": "CPUExecutionProvider",
        }
        assert _metric(text, "mimicry_model_info", info) == 1.0
        assert "bentoml_service_request_total" in text  # BentoML's own request metrics next to ours


# ------------------------------------------------------------------------------------------ bad input sweep


def _modified(data: bytes, **attrs: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def corrupted_inputs(valid: bytes) -> dict[str, tuple[bytes, int, str]]:
    """Corrupted variants of a valid DX phantom with the exact (status, code) the service must answer."""
    return {
        "zero_bytes": (b"", 400, "missing_dicom"),
        "random_bytes": (np.random.default_rng(0).bytes(4096), 400, "not_dicom"),
        "truncated_half": (valid[: len(valid) // 2], 400, "truncated"),
        "truncated_header": (valid[:300], 400, "truncated"),
        "preamble_only": (b"\x00" * 128 + b"DICM", 400, "truncated"),
        "wrong_modality": (_modified(valid, Modality="CT"), 422, "unsupported_modality"),
        "huge_dimensions": (_modified(valid, Rows=65000, Columns=65000), 413, "image_too_large"),
        "no_pixel_data": (_modified(valid, PixelData=None), 422, "no_pixel_data"),
        "bad_bits_allocated": (_modified(valid, BitsAllocated=12), 400, "invalid_geometry"),
        "over_request_limit": (valid + b"\x00" * 2**20, 413, "request_too_large"),
    }


def _expected(data: bytes, settings: IngestSettings) -> tuple[int, str | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read_dicom(data, settings=settings)
        except DicomIngestError as exc:
            return exc.http_status, exc.code
    return 200, None


def test_bad_input_sweep_keeps_service_ready(server, phantom_files) -> None:
    """Every pydicom test file and a set of corrupted files: the exact status and problem code, never 5xx,
    and the service still ready and predicting afterwards."""
    files = [Path(f) for f in get_testdata_files() if Path(f).is_file()]
    assert len(files) > 150
    ingest = IngestSettings(uid_salt=SALT)  # the server's acceptance rules (default CR/DX allow-list)
    seen: dict[str, tuple[int, str | None]] = {}
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        for f in files:
            data = f.read_bytes()
            r = c.post("/v1/predict", content=data, headers={"content-type": "application/octet-stream"})
            code = r.json().get("code") if r.status_code != 200 else None
            seen[f.name] = (r.status_code, code)
            assert (r.status_code, code) == _expected(data, ingest), f.name
            if r.status_code != 200:
                assert r.headers["content-type"] == PROBLEM
        for name, (data, status, code) in corrupted_inputs(phantom_files[0].read_bytes()).items():
            r = c.post("/v1/predict", content=data, headers=DICOM)
            assert (r.status_code, r.json().get("code")) == (status, code), name
            assert r.headers["content-type"] == PROBLEM
        # exact outcomes of named pydicom files (pydicom 3.0 test data)
        assert seen["CT_small.dcm"] == (422, "unsupported_modality")
        assert seen["MR_small.dcm"] == (422, "unsupported_modality")
        assert seen["6278"] == (200, None)  # one of pydicom's 16x16 MONOCHROME1 CR images
        assert all(s < 500 for s, _ in seen.values())
        assert sum(s == 200 for s, _ in seen.values()) == 3
        assert c.get("/readyz").status_code == 200
        ok = c.post("/v1/predict", content=phantom_files[1].read_bytes(), headers=DICOM)
        assert ok.status_code == 200


def test_no_phi_in_server_log(server, http, phantom_files) -> None:
    ds = pydicom.dcmread(phantom_files[3])
    phi = [str(ds.PatientName), str(ds.PatientID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)]
    phi = [p for p in phi if len(p) >= 4]
    assert len(phi) == 4
    data = phantom_files[3].read_bytes()
    assert http.post("/v1/predict", content=data, headers=DICOM).status_code == 200
    assert http.post("/v1/predict", content=_modified(data, Modality="CT"), headers=DICOM).status_code == 422
    assert http.post("/v1/predict", content=data[:-100], headers=DICOM).status_code == 400
    log = server.log_text()
    assert "Service mimicry initialized" in log  # the log is the server's
    for value in phi:
        assert value not in log
