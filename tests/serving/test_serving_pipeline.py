"""Level 1: the serving pipeline and helpers as plain functions (no HTTP)."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mimicry.dicom import NotDicomError, read_dicom
from mimicry.indicators import border_mass, map_entropy
from mimicry.registry import Registry
from mimicry.saliency import explain
from mimicry.settings import IngestSettings
from serving import dicomweb, pipeline, problems, render
from serving.auth import token_matches
from serving.backends.onnxruntime import OnnxRuntimeBackend, select_providers
from serving.settings import CONFIG_ENV, ServeSettings
from serving.uncertainty import ensemble_disagreement, ood_check, predictive_entropy, uncertainty_report


def test_border_mass_and_entropy_known_values() -> None:
    uniform = np.ones((10, 10))
    assert border_mass(uniform, 0.1) == pytest.approx(0.36)
    assert map_entropy(uniform) == pytest.approx(1.0)
    centre = np.zeros((10, 10))
    centre[5, 5] = 1.0
    assert border_mass(centre) == 0.0
    assert map_entropy(centre) == 0.0
    edge = np.zeros((10, 10))
    edge[0, 3] = 2.0
    edge[5, 5] = 2.0
    assert border_mass(edge) == pytest.approx(0.5)
    assert map_entropy(edge) == pytest.approx(math.log(2) / math.log(100))
    assert border_mass(np.zeros((4, 4))) == 0.0


def test_predictive_entropy_and_ensemble_disagreement() -> None:
    assert predictive_entropy(np.array([1.0, 0.0, 0.0])) == 0.0
    assert predictive_entropy(np.full(3, 1 / 3)) == pytest.approx(math.log(3))
    members = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = ensemble_disagreement(members)
    assert d["mutual_information"] == pytest.approx(math.log(2))
    assert d["max_member_tv"] == pytest.approx(0.5)
    agree = ensemble_disagreement(np.array([[0.7, 0.3], [0.7, 0.3]]))
    assert agree["mutual_information"] == pytest.approx(0.0, abs=1e-12)


def test_uncertainty_report_abstain_and_ood(registry_dir: Path) -> None:
    reg = Registry(registry_dir)
    card = reg.card("cxr-toy")  # abstain_threshold 0.5; reference image_mean 0.3, std 0.05
    sure = uncertainty_report(
        card, np.array([0.98, 0.01, 0.01]), statistic=0.31, default_threshold=None, ood_z_threshold=4.0
    )
    assert sure["abstain"] is False
    assert sure["threshold_source"] == "card"
    assert sure["ood"]["z"] == pytest.approx(0.2)
    assert sure["ood"]["ood"] is False
    unsure = uncertainty_report(
        card, np.full(3, 1 / 3), statistic=0.6, default_threshold=None, ood_z_threshold=4.0
    )
    assert unsure["abstain"] is True
    assert unsure["normalized_entropy"] == pytest.approx(1.0)
    assert unsure["ood"]["z"] == pytest.approx(6.0)
    assert unsure["ood"]["ood"] is True
    plain = reg.card("cxr-toy2")
    assert ood_check(plain, 0.9, 4.0) is None
    none = uncertainty_report(
        plain, np.full(3, 1 / 3), statistic=0.5, default_threshold=None, ood_z_threshold=4.0
    )
    assert none["abstain"] is None
    assert none["ood"] is None
    assert none["threshold_source"] == "none"
    dflt = uncertainty_report(
        plain, np.full(3, 1 / 3), statistic=0.5, default_threshold=2.0, ood_z_threshold=4.0
    )
    assert dflt["abstain"] is False
    assert dflt["threshold_source"] == "settings"


def test_render_roundtrips() -> None:
    m = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    png = render.encode_png16(m)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_allclose(render.decode_png16(png), m, atol=1 / 65535)
    f16 = np.frombuffer(base64.b64decode(render.encode_float16(m)), dtype="<f2").reshape(3, 4)
    np.testing.assert_allclose(f16, m, atol=1e-3)
    rgb = render.overlay_rgb(np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32))
    assert rgb.shape == (3, 4, 3)
    assert rgb.max() == 0
    full = render.overlay_rgb(np.zeros((3, 4), np.float32), np.ones((3, 4), np.float32), alpha=1.0)
    np.testing.assert_array_equal(full[0, 0], render.heatmap_rgb(np.ones((1, 1)))[0, 0])


def test_problems_from_ingest_error_and_auth() -> None:
    p = problems.from_ingest_error(NotDicomError("nope"))
    assert p.to_dict() == {
        "type": "/problems/dicom/not_dicom",
        "title": "The input is not a DICOM file",
        "status": 400,
        "detail": "nope",
        "code": "not_dicom",
    }
    r = problems.backend_unavailable(7).to_response()
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert r.media_type == "application/problem+json"
    assert token_matches("Bearer s3cret", "s3cret")
    assert token_matches("bearer  s3cret ", "s3cret")
    assert not token_matches("Bearer s3cre", "s3cret")
    assert not token_matches("Basic s3cret", "s3cret")
    assert not token_matches(None, "s3cret")


def test_settings_env_and_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIMICRY_SERVE_MODELS", "a, b@production")
    monkeypatch.setenv("MIMICRY_SERVE_INGEST__MAX_PIXELS", "1234")
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("backend: triton\nmax_batch_size: 4\nmodels: [ignored]\n")
    monkeypatch.setenv(CONFIG_ENV, str(cfg))
    s = ServeSettings()
    assert s.models == ["a", "b@production"]  # env beats YAML
    assert s.backend == "triton"
    assert s.max_batch_size == 4
    assert s.ingest.max_pixels == 1234
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    assert (
        select_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0]
        == "CUDAExecutionProvider"
    )
    assert select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def _model(registry_dir: Path) -> pipeline.ServedModel:
    return pipeline.load_served_model(Registry(registry_dir), "cxr-toy", ServeSettings(registry=registry_dir))


def test_prediction_matches_raw_onnxruntime(registry_dir: Path, phantom_files: list[Path]) -> None:
    model = _model(registry_dir)
    image = pipeline.ingest(phantom_files[0].read_bytes(), IngestSettings(uid_salt="s"))
    prep = pipeline.prepare(image, model.card)
    assert prep.x.shape == (1, 1, 32, 32)
    assert prep.x.dtype == np.float32
    out = model.backend.infer(prep.x)
    sess = ort.InferenceSession(
        str(Registry(registry_dir).load_onnx_path("cxr-toy")), providers=["CPUExecutionProvider"]
    )
    (probs,) = sess.run(["probs"], {"image": prep.x})
    rec = pipeline.prediction_record(model, out, prep, ServeSettings(registry=registry_dir))
    assert list(rec["probabilities"]) == ["Normal", "CHF", "pneumonia"]
    np.testing.assert_allclose(list(rec["probabilities"].values()), probs[0], rtol=0, atol=1e-6)
    assert rec["predicted_index"] == int(np.argmax(probs[0]))
    assert rec["model"]["sha256"] == model.card.artifacts["model.onnx"]
    assert rec["instance"]["sop_instance_uid_hash"] == image.meta.sop_instance_uid_hash
    assert isinstance(model.backend, OnnxRuntimeBackend)
    assert model.backend.provider == "CPUExecutionProvider"


def test_gradcam_from_onnx_matches_twin_gradcam(registry_dir: Path, phantom_files: list[Path]) -> None:
    model = _model(registry_dir)
    prep = pipeline.prepare(read_dicom(phantom_files[1].read_bytes()), model.card)
    out = model.backend.infer(prep.x)
    for target in range(3):
        fast = pipeline.explain_map(model, prep, out, target, "gradcam")
        slow = explain(model.twin(), torch.from_numpy(prep.x), target, "gradcam")[0]
        assert fast.shape == (32, 32)
        # raw CAM parity at export is 1e-4; the per-map percentile clip + min-max rescale amplifies it ~5x
        np.testing.assert_allclose(fast, slow, atol=1e-3)
    occ = pipeline.explain_map(model, prep, out, 0, "occlusion", {"window": 8, "stride": 8})
    occ_twin = explain(model.twin(), torch.from_numpy(prep.x), 0, "occlusion", window=8, stride=8)[0]
    np.testing.assert_allclose(occ, occ_twin, atol=1e-3)  # ORT vs torch forwards, rescaled
    src = pipeline.to_source_grid(fast, prep.box)
    assert src.shape == prep.image.pixels.shape


def test_resolve_target_and_params(registry_dir: Path) -> None:
    card = Registry(registry_dir).card("cxr-toy")
    assert pipeline.resolve_target(card, "predicted", 2) == 2
    assert pipeline.resolve_target(card, None, 1) == 1
    assert pipeline.resolve_target(card, "CHF", 0) == 1
    assert pipeline.resolve_target(card, "0", 2) == 0
    with pytest.raises(pipeline.TargetError):
        pipeline.resolve_target(card, "cancer", 0)
    with pytest.raises(pipeline.TargetError):
        pipeline.resolve_target(card, "3", 0)
    assert pipeline.parse_params('{"n_samples": 4}') == {"n_samples": 4}
    with pytest.raises(ValueError, match="JSON object"):
        pipeline.parse_params("[1]")


def test_multipart_related_parser() -> None:
    body = (
        b"--XX\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n"
        b"--XX\r\nContent-Type: application/dicom\r\n\r\nBB\r\n--XX--\r\n"
    )
    boundary = dicomweb.request_type('multipart/related; type="application/dicom"; boundary=XX')
    whole = dicomweb.StowParts(boundary, max_part_bytes=100)
    whole.feed(body)
    assert whole.take() == [b"AAA", b"BB"]
    assert whole.finished
    streamed = dicomweb.StowParts(boundary, max_part_bytes=2)  # byte by byte, a 2-byte limit per part
    for i in range(len(body)):
        streamed.feed(body[i : i + 1])
    got = streamed.take()
    assert isinstance(got[0], problems.Problem)
    assert got[0].status == 413
    assert got[1] == b"BB"
    with pytest.raises(problems.Problem) as exc:
        dicomweb.request_type('multipart/related; type="application/json"; boundary=XX')
    assert exc.value.status == 415
    assert dicomweb.failure_reason(problems.request_too_large(1)) == 0xA700
    assert dicomweb.failure_reason(problems.from_ingest_error(NotDicomError("x"))) == 0xC000
