"""Black-box mode (audit.blackbox, audit.runner with ``endpoint``): the HTTP client's retries / decoding on a
mock transport, and ``audit run --endpoint`` against a real ``bentoml serve`` on 127.0.0.1 whose gradcam
scores must equal the white-box scores of the same registry model."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from audit.blackbox import (
    EndpointClient,
    EndpointError,
    EndpointRequestError,
    EndpointUnavailableError,
    ExplainRequest,
    ServedModelInfo,
    decode_map,
    public_url,
    retry_after_seconds,
    select_served,
)
from audit.cli import app
from audit.history import History
from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.models import LeftRightToyNet
from mimicry.preprocess import PreprocessSpec
from mimicry.registry import Registry

SIZE = 32


# --------------------------------------------------------------------------------- client unit tests


def _png16(m: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.round(m * 65535).astype(np.uint16)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _explain_body(m: np.ndarray) -> dict:
    return {
        "model": {"name": "lr", "version": 1, "sha256": "ab" * 32, "ref": "lr:1"},
        "method": "gradcam",
        "target": {"class": "CHF", "index": 1},
        "map": {
            "encoding": "png16",
            "data": _png16(m),
            "scale": 65535,
            "shape": list(m.shape),
            "space": "source",
        },
        "prediction": {
            "class_names": ["Normal", "CHF", "Pneumonia"],
            "probabilities": {"Normal": 0.25, "CHF": 0.5, "Pneumonia": 0.25},
        },
    }


def test_decode_map_png16_and_float16_and_errors() -> None:
    m = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    np.testing.assert_allclose(
        decode_map({"encoding": "png16", "data": _png16(m), "shape": [2, 2]}), m, atol=1e-5
    )
    f16 = base64.b64encode(m.astype("<f2").tobytes()).decode()
    np.testing.assert_array_equal(decode_map({"encoding": "float16", "data": f16, "shape": [2, 2]}), m)
    with pytest.raises(EndpointError, match="float16 map holds 4 values"):
        decode_map({"encoding": "float16", "data": f16, "shape": [3, 2]})
    with pytest.raises(EndpointError, match="unknown map encoding"):
        decode_map({"encoding": "jpeg", "data": f16, "shape": [2, 2]})


def test_retry_after_and_public_url() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("soon") is None
    assert public_url("http://user:secret@127.0.0.1:3000/base/?token=x#f") == "http://127.0.0.1:3000/base"


def test_client_retries_503_honouring_retry_after_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    m = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= 2:
            return httpx.Response(503, headers={"Retry-After": "3"}, json={"code": "not_ready"})
        return httpx.Response(200, json=_explain_body(m))

    sleeps: list[float] = []
    monkeypatch.setenv("MIMICRY_AUDIT_ENDPOINT_TOKEN", "s3cret")
    client = EndpointClient(
        "http://127.0.0.1:9", transport=httpx.MockTransport(handler), sleep=sleeps.append, retries=3
    )
    with client:
        ans = client.explain(ExplainRequest(b"DICM", model="lr", method="gradcam", target="CHF"))
    assert sleeps == [3.0, 3.0]
    assert len(seen) == 3
    req = seen[-1]
    assert req.headers["authorization"] == "Bearer s3cret"
    assert req.headers["content-type"] == "application/dicom"
    assert dict(req.url.params) == {
        "method": "gradcam",
        "target": "CHF",
        "format": "json",
        "encoding": "png16",
        "space": "source",
        "model": "lr",
    }
    np.testing.assert_allclose(ans.map, m, atol=1e-5)
    np.testing.assert_array_equal(ans.probabilities, [0.25, 0.5, 0.25])
    assert (ans.target_index, ans.target_class, ans.model["sha256"]) == (1, "CHF", "ab" * 32)


def test_client_gives_up_with_backoff_and_does_not_retry_4xx() -> None:
    calls = {"n": 0}

    def overloaded(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(503)

    sleeps: list[float] = []
    with (
        EndpointClient(
            "http://127.0.0.1:9",
            token="",
            transport=httpx.MockTransport(overloaded),
            sleep=sleeps.append,
            retries=3,
            backoff_s=0.5,
        ) as c,
        pytest.raises(EndpointUnavailableError, match="after 4 attempt"),
    ):
        c.models()
    assert calls["n"] == 4
    assert sleeps == [0.5, 1.0, 2.0]

    def refused(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(400, json={"code": "unknown_method", "title": "Unknown method"})

    calls["n"] = 0
    with EndpointClient(
        "http://127.0.0.1:9", transport=httpx.MockTransport(refused), sleep=sleeps.append
    ) as c:
        (err,) = c.explain_many([ExplainRequest(b"x", model=None, method="nope")])
    assert isinstance(err, EndpointRequestError)
    assert (err.status, err.code, calls["n"]) == (400, "unknown_method", 1)


def test_client_predict_decodes_probabilities_in_class_order_and_refuses_bad_answers() -> None:
    bodies = [
        {
            "probabilities": {"CHF": 0.2, "Normal": 0.7, "pneumonia": 0.1},
            "class_names": ["Normal", "CHF", "pneumonia"],
            "model": {"name": "lr", "version": 1, "sha256": "ab" * 32, "ref": "lr:1"},
        },
        {"probabilities": {"Normal": 1.0}, "class_names": ["Normal", "CHF"], "model": {}},  # a class missing
        {"class_names": ["Normal"]},  # no probabilities
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=bodies[len(seen) - 1])

    with EndpointClient("http://127.0.0.1:9", transport=httpx.MockTransport(handler), token="") as c:
        ok = c.predict(b"DICM", model="lr")
        bad = c.predict_many([b"DICM", b"DICM"])
    assert (seen[0].url.path, dict(seen[0].url.params)) == ("/v1/predict", {"model": "lr"})
    assert seen[0].headers["content-type"] == "application/dicom"
    assert ok.class_names == ("Normal", "CHF", "pneumonia")
    np.testing.assert_array_equal(ok.probabilities, [0.7, 0.2, 0.1])
    assert ok.model["sha256"] == "ab" * 32
    assert all(isinstance(e, EndpointError) for e in bad)
    assert "unexpected /v1/predict answer: KeyError" in str(bad[0])


def test_select_served() -> None:
    a = ServedModelInfo("lr", 2, "a" * 64, "lr@production", True, ("gradcam",), ("x",))
    b = ServedModelInfo("cxr", 1, "b" * 64, "cxr", False, ("gradcam",), ("x",))
    assert select_served([a, b], ["all"]) == [a, b]
    assert select_served([a, b], ["lr:2", "lr"]) == [a]
    assert select_served([a, b], ["lr@production", "cxr:all"]) == [a, b]
    with pytest.raises(EndpointError, match="serves no model matching 'lr:3'"):
        select_served([a, b], ["lr:3"])


# --------------------------------------------------------------------------------- a real service

POLICY = """
version: 1
methods: [gradcam]
pairwise_cases: 4
bootstrap: {n_resamples: 200}
criteria:
  - {id: gaze_nss, group: Gaze, label: NSS, check: gaze, metric: nss, op: ">", threshold: -100.0}
  - {id: runtime_probs, group: Runtime, label: PROBS, check: runtime_reproducibility,
     metric: probs_max_abs_diff, statistic: max, op: "<=", threshold: 1.0e-4}
  - {id: runtime_cam, group: Runtime, label: CAM, check: runtime_reproducibility,
     metric: cam_max_abs_diff, statistic: max, op: "<=", threshold: 2.0e-3}
  - {id: randomisation, group: Randomization, label: "", check: cascading_randomisation, metric: ssim_full,
     op: "<", threshold: 0.5, gate: false}
"""
CHECKS = "gaze,localisation,shortcut,counterfactual,cascading_randomisation,runtime_reproducibility,subgroups"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    from serving.launch import start_service  # tests may use the service; the audit package may not

    root = tmp_path_factory.mktemp("audit_blackbox")
    generate_phantom_dataset(root / "ref", PhantomConfig(n=12, size=64, seed=4))
    reg = Registry(root / "registry")
    x = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    reg.publish(
        LeftRightToyNet(scale=40.0).eval(),
        name="lr",
        held_batch=x,
        preprocessing=PreprocessSpec(size=SIZE),
        arch_kwargs={"scale": 40.0},
    )
    (root / "policy.yaml").write_text(POLICY)
    service = start_service(
        root / "registry",
        ["lr"],
        workers=1,
        device="cpu",
        env={"MIMICRY_SERVE_INGEST__UID_SALT": "audit-test"},
        log_path=root / "serve.log",
        ready_timeout_s=45,
    )
    try:
        yield {"root": root, "url": service.url, "service": service}
    finally:
        service.stop()
        assert service.proc.poll() is not None


def _run(served: dict, *extra: str) -> object:
    root = served["root"]
    return CliRunner().invoke(
        app,
        [
            "run",
            "--reference",
            str(root / "ref"),
            "--policy",
            str(root / "policy.yaml"),
            "--checks",
            CHECKS,
            "--history",
            str(root / "history.sqlite"),
            "--no-progress",
            "--jobs",
            "2",
            *extra,
        ],
    )


@pytest.mark.integration
def test_blackbox_scores_equal_whitebox_scores_against_a_real_service(served: dict) -> None:
    root: Path = served["root"]  # type: ignore[assignment]
    white = _run(served, "--registry", str(root / "registry"), "--model", "lr:1", "--out", str(root / "w"))
    assert white.exit_code == 0, white.output
    black = _run(
        served, "--endpoint", served["url"], "--registry", str(root / "none"), "--out", str(root / "b")
    )
    assert black.exit_code == 0, black.output
    assert "N/A cascading_randomisation: needs the model weights (black-box mode)" in black.output
    w = json.loads((root / "w" / "report.json").read_text())["models"][0]
    b = json.loads((root / "b" / "report.json").read_text())["models"][0]
    card = Registry(root / "registry").card("lr:1")
    assert (b["mode"], b["ref"], b["sha256"]) == ("blackbox", "lr:1", card.artifacts["model.onnx"])
    assert b["endpoint"] == served["url"]
    assert (b["n_cases"], b["n_cached"]) == (w["n_cases"], 0)
    checks_b = {r["check"] for r in b["results"]}
    assert {"gaze", "localisation", "shortcut", "subgroups"} <= checks_b
    assert not {"cascading_randomisation", "runtime_reproducibility", "faithfulness"} & checks_b
    verdicts = {v["criterion"]: (v["status"], v["reason"]) for v in b["verdicts"]}
    assert verdicts["randomisation"] == ("N/A", "needs the model weights (black-box mode)")
    assert verdicts["runtime_cam"] == ("N/A", "needs the served version in the registry (black-box mode)")
    assert verdicts["gaze_nss"][0] == "PASS"
    # Same model, same DICOMs: every per-case score agrees (Grad-CAM from the ONNX cam output vs the torch
    # twin, PNG-16 transport) within a small tolerance.
    compared = 0
    for check in ("gaze", "localisation", "shortcut"):
        rw = next(r for r in w["results"] if r["check"] == check and r["method"] == "gradcam")
        rb = next(r for r in b["results"] if r["check"] == check and r["method"] == "gradcam")
        assert rb["values"].keys() == rw["values"].keys()
        for metric, per_case in rw["values"].items():
            assert rb["values"][metric].keys() == per_case.keys()
            for key, v in per_case.items():
                vb = rb["values"][metric][key]
                if v is None:
                    assert vb is None
                else:
                    assert vb == pytest.approx(v, abs=5e-3, rel=5e-3), (check, metric)
                    compared += 1
        assert rb["case_class"] == rw["case_class"]
    assert w["n_cases"] >= 2
    assert compared >= 7 * w["n_cases"]  # most of the 11 metrics are defined on every phantom case
    # Counterfactual: white-box paints the marker out of the decoded image and predicts with the twin;
    # black-box paints it out of the DICOM's stored values and asks /v1/predict. Same model, same edit: the
    # class-distribution changes agree (the fill is a median in display vs stored values: within 5 %).
    cw = next(r for r in w["results"] if r["check"] == "counterfactual")
    cb = next(r for r in b["results"] if r["check"] == "counterfactual")
    for metric in ("marker_tv", "control_tv", "marker_flip", "control_flip"):
        assert cb["values"][metric].keys() == cw["values"][metric].keys()
        for key, v in cw["values"][metric].items():
            assert cb["values"][metric][key] == pytest.approx(v, rel=0.05, abs=1e-6), (metric, key)
    assert max(cw["values"]["marker_tv"].values()) > 1e-5  # the edit does reach the model
    # The history holds the endpoint's identity; a second black-box run is served from the cache.
    with History(root / "history.sqlite") as h:
        runs = h.runs("lr")
    assert runs[-1].sha256 == card.artifacts["model.onnx"]
    assert runs[-1].status == "passed"
    again = _run(
        served, "--endpoint", served["url"], "--registry", str(root / "none"), "--out", str(root / "b2")
    )
    assert again.exit_code == 0, again.output
    b2 = json.loads((root / "b2" / "report.json").read_text())["models"][0]
    assert b2["n_cached"] == b2["n_cases"] == w["n_cases"]


@pytest.mark.integration
def test_runtime_reproducibility_vs_the_service_with_the_registry(served: dict) -> None:
    root: Path = served["root"]  # type: ignore[assignment]
    res = _run(
        served,
        "--endpoint",
        served["url"],
        "--registry",
        str(root / "registry"),
        "--out",
        str(root / "r"),
        "--no-history",
    )
    assert res.exit_code == 0, res.output
    m = json.loads((root / "r" / "report.json").read_text())["models"][0]
    rt = next(r for r in m["results"] if r["check"] == "runtime_reproducibility")
    assert rt["details"]["runtime"] == "service"
    assert len(rt["values"]["probs_max_abs_diff"]) == 3  # min(pairwise_cases = 4, the 3 test cases)
    assert rt["summaries"]["probs_max_abs_diff"]["max"] <= 1e-4
    assert rt["summaries"]["cam_max_abs_diff"]["max"] <= 2e-3
    statuses = {v["criterion"]: v["status"] for v in m["verdicts"]}
    assert statuses["runtime_probs"] == statuses["runtime_cam"] == "PASS"


@pytest.mark.integration
def test_unreachable_endpoint_and_unknown_model_exit_2(served: dict) -> None:
    from serving.launch import free_port

    assert (
        _run(
            served, "--endpoint", f"http://127.0.0.1:{free_port()}", "--endpoint-retries", "0", "--no-history"
        ).exit_code
        == 2
    )
    res = _run(served, "--endpoint", served["url"], "--model", "nope", "--no-history")
    assert res.exit_code == 2
    assert "serves no model matching 'nope'" in res.output


def _sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.integration
def test_watch_probes_the_live_endpoint_once_per_interval(served: dict) -> None:
    from prometheus_client import generate_latest

    from audit.policy import load_policy
    from audit.prometheus import AuditMetrics
    from audit.runner import AuditConfig
    from audit.watch import watch

    root: Path = served["root"]  # type: ignore[assignment]
    (root / "empty-registry").mkdir(exist_ok=True)
    config = AuditConfig(
        registry=root / "empty-registry",  # nothing to audit white-box: only the endpoint probe runs
        models=["all"],
        reference=root / "ref",
        policy=load_policy(root / "policy.yaml"),
        checks=["gaze", "shortcut"],
        history_path=None,
    )
    metrics = AuditMetrics()
    reports = []
    n = watch(
        config,
        metrics,
        interval_s=3600,
        poll_s=0.05,
        max_cycles=2,
        endpoint=served["url"],
        on_report=reports.append,
        out_dir=root / "watch",
    )
    assert n == 1  # second poll: same sha256, interval not over → no second probe
    (m,) = reports[0].models
    assert (m.mode, m.ref) == ("blackbox", "lr:1")
    text = generate_latest(metrics.registry).decode()
    nss = _sample(
        text,
        "mimicry_audit_probe_score",
        {"model": "lr", "version": "1", "method": "gradcam", "check": "gaze", "metric": "nss"},
    )
    assert nss == pytest.approx(m.result("gaze", "gradcam").summaries["nss"].mean)
    assert _sample(text, "mimicry_audit_score", {"model": "lr"}) is None  # white-box series untouched
    assert "mimicry_audit_probe_up 1.0" in text
    assert (root / "watch" / "probe-lr-1" / "report.json").is_file()
    # An unreachable endpoint: probe_up drops to 0 and the loop carries on.
    from serving.launch import free_port

    dead = dataclasses.replace(config, endpoint_retries=0)
    assert (
        watch(
            dead, metrics, interval_s=1, poll_s=0.05, max_cycles=1, endpoint=f"http://127.0.0.1:{free_port()}"
        )
        == 0
    )
    assert "mimicry_audit_probe_up 0.0" in generate_latest(metrics.registry).decode()
