"""The service's edge in-process: public APIs only, default-deny authentication over every route (BentoML's
and the mounted FastAPI apps'), bounded metric labels, routing errors as problems, the request timeout, no
per-request objects left alive after the answer, per-instance STOW-RS limits, and /v1/models offering only
what /v1/explain can run."""

from __future__ import annotations

import gc
import io
import re
import uuid
from pathlib import Path

import pydicom
from prometheus_client import REGISTRY
from starlette.routing import BaseRoute, Mount, Route

from tests.serving.conftest import make_client

DICOM = {"content-type": "application/dicom"}
PROBLEM = "application/problem+json"
REPO = Path(__file__).resolve().parents[2]
OPEN = {"/healthz", "/livez", "/readyz", "/metrics", "/docs.json"}


def test_no_private_bentoml_api_in_the_product() -> None:
    offenders = []
    for package in ("serving", "mimicry", "audit", "training"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if re.search(r"bentoml\._internal|_bentoml_impl|_bentoml_sdk", text):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def _all_routes(app: object) -> list[tuple[str, set[str]]]:
    """(path template, methods) of every route of the served ASGI app, descending into mounted apps."""
    out: list[tuple[str, set[str]]] = []

    def walk(routes: list[BaseRoute], prefix: str) -> None:
        for r in routes:
            if isinstance(r, Route):
                out.append((prefix + r.path, set(r.methods or {"GET"}) - {"HEAD"}))
            elif isinstance(r, Mount):
                sub = getattr(r.app, "routes", None)
                if sub is None:  # a static-files or plain ASGI mount: probe one path below it
                    out.append((prefix + r.path.rstrip("/") + "/probe", {"GET"}))
                else:
                    walk(sub, prefix + r.path.rstrip("/"))

    walk(app.routes, "")  # type: ignore[attr-defined]
    return out


def test_every_route_but_the_open_ones_needs_the_token(serve_env) -> None:
    """Enumerates BentoML's routes and the mounted FastAPI apps' routes: a route added later cannot be
    left open by accident (BentoML's /schema.json and /v1/infer included)."""
    from serving.service import MimicryService

    app = MimicryService.to_asgi()
    routes = _all_routes(app)
    paths = {p for p, _ in routes}
    assert {"/v1/predict", "/v1/explain", "/v1/models", "/v1/infer", "/schema.json"} <= paths
    assert "/dicomweb/studies/{study}" in paths
    serve_env.setenv("MIMICRY_SERVE_API_TOKEN", "edge-token")
    checked = 0
    with make_client() as c:
        for template, methods in routes:
            path = re.sub(r"\{[^}]+\}", "1.2.3", template)
            for method in methods:
                r = c.request(method, path)
                if template in OPEN:
                    assert r.status_code != 401, (method, template)
                else:
                    assert r.status_code == 401, (method, template, r.status_code)
                    assert r.headers["content-type"] == PROBLEM
                    assert r.json()["code"] == "unauthorized"
                checked += 1
        assert c.get("/no/such/route").status_code == 401  # unknown paths too
        ok = c.get("/v1/models", headers={"authorization": "Bearer edge-token"})
        assert ok.status_code == 200
    assert checked >= 12


def test_unknown_paths_and_methods_are_problems(client) -> None:
    for path in ("/nope", "/dicomweb/studies/1.2/series/3", "/v1/predict/extra"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["code"] == "not_found"
    r = client.get("/v1/predict")
    assert (r.status_code, r.json()["code"], r.headers["allow"]) == (405, "method_not_allowed", "POST")
    assert r.headers["content-type"] == PROBLEM
    assert client.get("/docs.json").status_code == 200  # BentoML's own late routes are untouched


def test_models_offers_only_methods_explain_can_run(client, phantom_files) -> None:
    models = client.get("/v1/models").json()["models"]
    data = phantom_files[0].read_bytes()
    for entry in models:
        methods = entry["methods"]
        assert "gradcam" in methods
        assert not {"iba", "inverse_iba", "multilayer_iba"} & set(methods)  # need layer statistics
    for method in models[0]["methods"]:
        r = client.post(f"/v1/explain?method={method}&format=png&space=model", content=data, headers=DICOM)
        assert r.status_code == 200, (method, r.text)
    r = client.post("/v1/explain?method=iba", content=data, headers=DICOM)
    assert (r.status_code, r.json()["code"]) == (422, "unknown_method")


def _series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_random_path_scan_adds_a_bounded_number_of_series(client) -> None:
    rng = __import__("random").Random(7)
    study = "1.2.826.0.1.3680043.8.498." + str(rng.randrange(10**12))
    client.get("/v1/models")
    client.get("/metrics")
    before = _series(client.get("/metrics").text)
    paths = [f"/{uuid.UUID(int=rng.getrandbits(128))}" for _ in range(150)]
    paths += [f"/dicomweb/studies/{study}.{i}/series" for i in range(25)]
    paths += [f"/wp-admin/{i}.php?id={i}" for i in range(25)]
    for p in paths:
        assert client.get(p).status_code == 404
    text = client.get("/metrics").text
    after = _series(text)
    assert len(paths) == 200
    new = after - before
    combos = {
        (m.group(1), m.group(2)) for s in new if (m := re.search(r'endpoint="([^"]*)".*code="(\d+)"', s))
    }
    assert combos <= {("other", "404")}, sorted(new)  # at most one new label set: the scan's
    assert len(new) <= 25, len(new)  # one counter + one histogram (fixed buckets) + their _created
    assert study not in text
    assert "wp-admin" not in text
    labels = set(re.findall(r'endpoint="([^"]*)"', text))
    from serving.metrics import ENDPOINTS, OTHER

    assert labels <= {*ENDPOINTS, OTHER}
    assert REGISTRY.get_sample_value(
        "bentoml_service_request_total",
        {
            "endpoint": "other",
            "http_response_code": "404",
            "service_name": "mimicry",
            "service_version": "not available",
            "runner_name": "mimicry",
        },
    ) >= len(paths)


def test_request_timeout_is_a_problem_and_the_service_stays_up(serve_env, phantom_files) -> None:
    serve_env.setenv("MIMICRY_SERVE_REQUEST_TIMEOUT_S", "0.000001")
    with make_client() as c:
        r = c.post("/v1/predict", content=phantom_files[0].read_bytes(), headers=DICOM)
        assert r.status_code == 504
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["code"] == "request_timeout"
    serve_env.setenv("MIMICRY_SERVE_REQUEST_TIMEOUT_S", "600")
    with make_client() as c:
        assert c.post("/v1/predict", content=phantom_files[0].read_bytes(), headers=DICOM).status_code == 200


def _live_request_objects() -> dict[str, int]:
    """Objects that belong to one request: OpenTelemetry spans (they hold the URL), Starlette requests,
    ASGI HTTP scopes."""
    from opentelemetry.trace import Span
    from starlette.requests import Request

    gc.collect()
    counts = {"span": 0, "request": 0, "scope": 0}
    for obj in gc.get_objects():
        mro = type(obj).__mro__  # not isinstance: ABC hooks of unrelated objects in the heap may raise
        if Span in mro and type(obj).__name__ != "NonRecordingSpan":
            counts["span"] += 1
        elif Request in mro:
            counts["request"] += 1
        elif type(obj) is dict and obj.get("type") == "http" and "path" in obj and "asgi" in obj:
            counts["scope"] += 1
    return counts


def test_finished_requests_leave_no_request_objects_alive(client, phantom_files) -> None:
    """BentoML's per-request timer lives for traffic.timeout seconds: nothing of the request may hang on it
    (a regression retained one span + attributes per request: 10k requests = +11% RSS)."""
    data = phantom_files[0].read_bytes()
    for _ in range(5):  # warm-up: caches, lazily created metrics
        client.post("/v1/predict", content=data, headers=DICOM)
    base = _live_request_objects()
    n = 40
    for _ in range(n):
        assert client.post("/v1/predict", content=data, headers=DICOM).status_code == 200
        assert client.get("/v1/models").status_code == 200
    after = _live_request_objects()
    for kind in base:
        assert after[kind] - base[kind] < 5, (kind, base, after)


def _stow_body(parts: list[bytes], boundary: str = "edgeboundary") -> tuple[bytes, str]:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
    )
    return (
        body + f"--{boundary}--\r\n".encode(),
        f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


def test_stow_per_instance_limit_study_route_and_media_types(serve_env, phantom_files) -> None:
    small = phantom_files[0].read_bytes()
    serve_env.setenv("MIMICRY_SERVE_MAX_REQUEST_BYTES", str(len(small) + 10))
    big = phantom_files[1].read_bytes() + b"\x00" * (len(small) + 100)
    with make_client() as c:
        body, ctype = _stow_body([small, big, small])
        assert len(body) > len(small) + 10  # the whole request is over the limit; instances are judged alone
        r = c.post("/dicomweb/studies", content=body, headers={"content-type": ctype})
        assert r.status_code == 202, r.text
        out = r.json()
        assert len(out["00081199"]["Value"]) == 2
        assert [f["00081197"]["Value"] for f in out["00081198"]["Value"]] == [[0xA700]]
        study = str(pydicom.dcmread(io.BytesIO(small)).StudyInstanceUID)
        r = c.post(
            f"/dicomweb/studies/{study}", content=_stow_body([small])[0], headers={"content-type": ctype}
        )
        assert r.status_code == 200
        r = c.post(
            "/dicomweb/studies/1.2.3.4", content=_stow_body([small])[0], headers={"content-type": ctype}
        )
        assert r.status_code == 409
        failed = r.json()["00081198"]["Value"]
        assert failed[0]["00081197"]["Value"] == [0xA900]
        assert failed[0]["00081155"]["Value"] == [str(pydicom.dcmread(io.BytesIO(small)).SOPInstanceUID)]
        xml = ctype.replace("application/dicom", "application/dicom+xml")
        r = c.post("/dicomweb/studies", content=body, headers={"content-type": xml})
        assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type")
        unclosed = body[: -len("--edgeboundary--\r\n")]
        r = c.post("/dicomweb/studies", content=unclosed, headers={"content-type": ctype})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter")
        assert c.get("/readyz").status_code == 200


def test_micro_batcher_batches_concurrent_requests_and_drops_late_ones() -> None:
    import threading

    import anyio
    import numpy as np

    from serving.backends.protocol import BackendOutput
    from serving.runtime import MicroBatcher, OverloadedError

    sizes: list[int] = []
    gate = threading.Event()

    def run_batch(x: np.ndarray) -> BackendOutput:
        gate.wait(5)  # the first batch holds the backend while the others queue
        sizes.append(int(x.shape[0]))
        v = x.reshape(len(x), -1)[:, :1].astype(np.float32)
        return BackendOutput(v, v * 2, np.zeros((len(x), 1, 1, 1), np.float32))

    async def scenario() -> tuple[dict[int, float], list[int]]:
        batcher = MicroBatcher(run_batch, max_batch_size=4, max_latency_s=30.0)
        got: dict[int, float] = {}

        async def one(i: int) -> None:
            got[i] = float((await batcher.submit(np.full((1, 1, 2, 2), i, np.float32))).probs[0, 0])

        async with anyio.create_task_group() as tg:
            for i in range(9):
                tg.start_soon(one, i)
            await anyio.sleep(0.2)
            gate.set()
        late = MicroBatcher(run_batch, max_batch_size=4, max_latency_s=0.1)
        gate.clear()
        results: list[int] = []

        async def two() -> None:
            try:
                await late.submit(np.zeros((1, 1, 2, 2), np.float32))
                results.append(200)
            except OverloadedError:
                results.append(503)

        async with anyio.create_task_group() as tg:
            tg.start_soon(two)  # runs first and holds the backend
            await anyio.sleep(0.1)
            tg.start_soon(two)
            tg.start_soon(two)  # these two queue behind it for longer than 0.1 s
            await anyio.sleep(0.4)
            gate.set()
        return got, results

    got, results = anyio.run(scenario)
    assert got == {i: 2.0 * i for i in range(9)}  # every request got its own row
    assert sizes[:3] == [4, 4, 1]  # concurrent requests were batched up to max_batch_size
    assert sorted(results) == [200, 503, 503]  # queued past the 0.1 s budget: dropped
