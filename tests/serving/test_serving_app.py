"""Level 2: the BentoML service's ASGI app in-process (lifespan run by starlette's TestClient).

``/metrics`` is scraped over a real server in the integration test (BentoML's in-process metrics route
blocks under TestClient); here the same metric objects are read from prometheus_client's registry.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from mimicry.registry import Registry
from serving import pipeline, render
from serving.settings import ServeSettings
from tests.serving.conftest import make_client

DICOM = {"content-type": "application/dicom"}
PROBLEM = "application/problem+json"


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_readyz_details_and_models(client) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    assert [(m["name"], m["version"], m["provider"]) for m in body["models"]] == [
        ("cxr-toy", 1, "CPUExecutionProvider"),
        ("cxr-toy2", 1, "CPUExecutionProvider"),
    ]
    assert client.get("/healthz").status_code == 200
    assert client.get("/livez").status_code == 200
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["cxr-toy", "cxr-toy2"]
    assert models[0]["default"] is True
    assert models[0]["card"]["class_names"] == ["Normal", "CHF", "pneumonia"]
    assert "gradcam" in models[0]["methods"]


def test_predict_all_media_types_agree_with_pipeline(client, registry_dir: Path, phantom_files) -> None:
    data = phantom_files[0].read_bytes()
    a = client.post("/v1/predict", content=data, headers=DICOM)
    b = client.post("/v1/predict", content=data, headers={"content-type": "application/octet-stream"})
    c = client.post(
        "/v1/predict", files={"file": ("x.dcm", data, "application/dicom")}, data={"model": "cxr-toy2"}
    )
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.json()["probabilities"] == b.json()["probabilities"]
    assert c.json()["model"]["name"] == "cxr-toy2"
    settings = ServeSettings(registry=registry_dir)
    model = pipeline.load_served_model(Registry(registry_dir), "cxr-toy", settings)
    prep = pipeline.prepare(pipeline.ingest(data, settings.ingest), model.card)
    expected = model.backend.infer(prep.x).probs[0]
    got = np.array(list(a.json()["probabilities"].values()))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert set(a.json()["timings_ms"]) == {"ingest_ms", "preprocess_ms", "inference_ms", "total_ms"}
    assert a.json()["uncertainty"]["abstain_threshold"] == 0.5


def test_explain_formats(client, registry_dir: Path, phantom_files) -> None:
    data = phantom_files[1].read_bytes()
    r = client.post("/v1/explain?target=CHF&space=model", content=data, headers=DICOM)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "gradcam"
    assert body["target"] == {"class": "CHF", "index": 1}
    m = render.decode_png16(base64.b64decode(body["map"]["data"]))
    assert m.shape == (32, 32) == tuple(body["map"]["shape"])
    settings = ServeSettings(registry=registry_dir)
    model = pipeline.load_served_model(Registry(registry_dir), "cxr-toy", settings)
    prep = pipeline.prepare(pipeline.ingest(data, settings.ingest), model.card)
    expected = pipeline.explain_map(model, prep, model.backend.infer(prep.x), 1, "gradcam")
    np.testing.assert_allclose(m, expected, atol=2 / 65535)
    src = client.post("/v1/explain?encoding=float16", content=data, headers=DICOM).json()
    assert src["map"]["shape"] == [96, 96]
    assert src["map"]["space"] == "source"
    assert 0.0 <= src["indicators"]["border_mass"] <= 1.0
    png = client.post(
        "/v1/explain", files={"file": ("x.dcm", data)}, data={"format": "png", "method": "gradient"}
    )
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.headers["x-mimicry-method"] == "gradient"
    assert Image.open(io.BytesIO(png.content)).size == (96, 96)
    ov = client.post("/v1/explain?format=overlay", content=data, headers=DICOM)
    assert Image.open(io.BytesIO(ov.content)).mode == "RGB"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"", "headers": DICOM}, 400, "missing_dicom"),
        ({"content": b"\x00" * 200, "headers": DICOM}, 400, "not_dicom"),
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415, "unsupported_media_type"),
        ({"content": b"x" * (2 * 2**20 + 1), "headers": DICOM}, 413, "request_too_large"),
    ],
)
def test_bad_requests_are_problems(client, kwargs, status, code) -> None:
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == code
    assert r.json()["status"] == status


def test_bad_explain_parameters_and_unknown_model(client, phantom_files) -> None:
    data = phantom_files[0].read_bytes()
    before = _sample("mimicry_input_rejected_total", {"reason": "unknown_method"})
    r = client.post("/v1/explain?method=magic", content=data, headers=DICOM)
    assert (r.status_code, r.json()["code"]) == (422, "unknown_method")
    assert _sample("mimicry_input_rejected_total", {"reason": "unknown_method"}) == before + 1
    r = client.post("/v1/explain?target=cancer", content=data, headers=DICOM)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter")
    r = client.post("/v1/explain?format=gif", content=data, headers=DICOM)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter")
    r = client.post("/v1/explain?method=gradient&params=%7B%22bogus%22%3A1%7D", content=data, headers=DICOM)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_explanation_request")
    r = client.post("/v1/predict?model=nope", content=data, headers=DICOM)
    assert (r.status_code, r.json()["code"]) == (404, "model_not_found")
    assert client.get("/readyz").status_code == 200  # still ready after bad requests


def test_streamed_body_over_limit_is_413(client) -> None:
    def chunks():
        for _ in range(40):
            yield b"y" * 65536

    r = client.post("/v1/predict", content=chunks(), headers=DICOM)  # chunked: no Content-Length
    assert r.status_code == 413
    assert r.json()["code"] == "request_too_large"


def test_bearer_token(serve_env, phantom_files) -> None:
    serve_env.setenv("MIMICRY_SERVE_API_TOKEN", "tok-123")
    with make_client() as c:
        data = phantom_files[0].read_bytes()
        r = c.post("/v1/predict", content=data, headers=DICOM)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["code"] == "unauthorized"
        r = c.post("/v1/predict", content=data, headers={**DICOM, "authorization": "Bearer tok-12"})
        assert r.status_code == 401
        r = c.post("/v1/predict", content=data, headers={**DICOM, "authorization": "Bearer tok-123"})
        assert r.status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.get("/readyz").status_code == 200
        assert c.get("/healthz").status_code == 200


def test_metrics_recorded(client, phantom_files) -> None:
    labels = {"model": "cxr-toy2", "backend": "onnxruntime"}
    before = _sample("mimicry_inference_seconds_count", labels)
    r = client.post("/v1/predict?model=cxr-toy2", content=phantom_files[2].read_bytes(), headers=DICOM)
    cls = r.json()["predicted_class"]
    assert _sample("mimicry_inference_seconds_count", labels) == before + 1
    assert _sample("mimicry_predictions_total", {"model": "cxr-toy2", "class": cls}) >= 1
    sha = r.json()["model"]["sha256"]
    info = {
        "model": "cxr-toy2",
        "version": "1",
        "sha256": sha,
        "backend": "onnxruntime",
        "provider": "CPUExecutionProvider",
    }
    assert _sample("mimicry_model_info", info) == 1.0
    n = _sample("mimicry_explanation_entropy_count", {"model": "cxr-toy2", "method": "gradcam"})
    client.post("/v1/explain?model=cxr-toy2", content=phantom_files[2].read_bytes(), headers=DICOM)
    assert _sample("mimicry_explanation_entropy_count", {"model": "cxr-toy2", "method": "gradcam"}) == n + 1
    assert _sample("mimicry_saliency_seconds_count", {"model": "cxr-toy2", "method": "gradcam"}) >= 1


def test_stow_rs(client, phantom_files) -> None:
    good = phantom_files[0].read_bytes()
    boundary = "mimicryboundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in (good, b"not a dicom", phantom_files[1].read_bytes())
        )
        + f"--{boundary}--\r\n".encode()
    )
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    r = client.post("/dicomweb/studies", content=body, headers={"content-type": ctype})
    assert r.status_code == 202
    assert r.headers["content-type"] == "application/dicom+json"
    out = r.json()
    uid = str(pydicom.dcmread(io.BytesIO(good)).SOPInstanceUID)
    refs = out["00081199"]["Value"]
    assert len(refs) == 2
    assert refs[0]["00081155"]["Value"] == [uid]
    failed = out["00081198"]["Value"]
    assert failed == [{"00081197": {"vr": "US", "Value": [0xC000]}}]
    assert set(out) == {"00081190", "00081198", "00081199"}  # a pure DICOM JSON dataset
    # the predictions: opt-in, in their own document (docs/serving.md, "STOW-RS")
    r2 = client.post("/dicomweb/studies?include=predictions", content=body, headers={"content-type": ctype})
    assert r2.status_code == 202
    assert r2.json()["dicom"] == out
    preds = r2.json()["predictions"]
    assert [p["status"] for p in preds] == ["stored", "failed", "stored"]
    assert preds[1]["problem"]["code"] == "not_dicom"
    assert preds[0]["prediction"]["predicted_class"] in ("Normal", "CHF", "pneumonia")
    r = client.post("/dicomweb/studies", content=good, headers=DICOM)
    assert r.status_code == 415


def test_no_phi_in_logs_or_responses(client, phantom_files, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ds = pydicom.dcmread(phantom_files[3])
    phi = [str(ds.PatientName), str(ds.PatientID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)]
    phi = [p for p in phi if len(p) >= 4]
    assert phi
    data = phantom_files[3].read_bytes()
    texts = [
        client.post("/v1/predict", content=data, headers=DICOM).text,
        client.post("/v1/explain", content=data, headers=DICOM).text,
    ]
    ds.Modality = "CT"
    buf = io.BytesIO()
    ds.save_as(buf)
    bad = client.post("/v1/predict", content=buf.getvalue(), headers=DICOM)
    assert bad.status_code == 422
    assert bad.json()["code"] == "unsupported_modality"
    texts.append(bad.text)
    texts.append(client.post("/v1/predict", content=data[: len(data) // 2], headers=DICOM).text)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for value in phi:
        assert value not in logged
        for t in texts:
            assert value not in t
