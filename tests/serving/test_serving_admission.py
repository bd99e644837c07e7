"""The prediction path's reduced JPEG 2000 decode, and admission control (decode slots + bounded queue).

Reduced decode: the oracle of the full-decode prediction is pydicom's own decode (pylibjpeg-openjpeg) of the
film, scaled to display units, letterboxed, and run through ONNX Runtime directly on the registry's
``model.onnx``; the service's ``/v1/predict`` must match it within the reduced path's stated tolerance, and
``mimicry_decodes_total{level}`` must show that the reduced level was decoded.

Admission: the first request is held *inside* the decode by a fake ``pipeline.ingest`` that waits on an
event (no sleeps, no timing): with one decode slot and no queue place, a second request is refused with
503 ``overloaded`` + ``Retry-After``; with one queue place, the second waits and succeeds, a third is refused.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pydicom
import pytest
from starlette.testclient import TestClient

from mimicry.dicom.read import resolution_level
from mimicry.preprocess import letterbox, normalise
from mimicry.registry import Registry
from serving import pipeline
from serving.runtime import active_runtime
from tests.dicom.test_read_reduced import _film
from tests.registry import SIZE
from tests.serving.conftest import make_client

DICOM = {"Content-Type": "application/dicom"}


def _decodes(client: TestClient, level: int) -> float:
    text = client.get("/metrics").text
    m = re.search(rf'^mimicry_decodes_total\{{level="{level}"\}} ([0-9.e+-]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def j2k_film() -> bytes:
    return _film(512, 400)  # 12-bit, JPEG 2000 lossless (pylibjpeg-openjpeg)


def _oracle_probs(registry_dir: Path, film: bytes) -> np.ndarray:
    """Full decode by pydicom, display units (no VOI/rescale: stored / (2^12 - 1)), the card's letterbox and
    normalisation, ONNX Runtime on the registry's graph."""
    reg = Registry(registry_dir)
    card = reg.card("cxr-toy")
    ds = pydicom.dcmread(io.BytesIO(film))
    pixels = ds.pixel_array.astype(np.float32) / 4095.0
    boxed, _ = letterbox(pixels, card.preprocessing.size, card.preprocessing.pad_value)
    x = normalise(boxed, card.preprocessing)[None, None].astype(np.float32)
    session = ort.InferenceSession(str(reg.load_onnx_path("cxr-toy")), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probs"], {session.get_inputs()[0].name: x})
    return np.asarray(probs[0], dtype=np.float64)


def test_predict_decodes_jpeg2000_reduced_and_matches_the_full_decode(
    client: TestClient, registry_dir: Path, j2k_film: bytes
) -> None:
    level = 3  # decode_side = 2 * 32 = 64 and 512 / 2**3 = 64 >= 64 > 32
    assert resolution_level((512, 400), 2 * SIZE) == level
    reduced_before, full_before = _decodes(client, level), _decodes(client, 0)
    r = client.post("/v1/predict", content=j2k_film, headers=DICOM)
    assert r.status_code == 200, r.text
    assert _decodes(client, level) == reduced_before + 1
    assert _decodes(client, 0) == full_before
    got = np.array([r.json()["probabilities"][k] for k in r.json()["class_names"]])
    expected = _oracle_probs(registry_dir, j2k_film)
    # the reduced path's input tolerance (display units: mean < 0.002, max < 0.05 after the letterbox,
    # tests/dicom/test_read_reduced.py) moves this model's probabilities by far less than 0.01
    np.testing.assert_allclose(got, expected, atol=0.01)
    assert int(np.argmax(got)) == int(np.argmax(expected))
    # explanations keep the full decode (their maps are on the native grid)
    e = client.post("/v1/explain?format=json&space=source", content=j2k_film, headers=DICOM)
    assert e.status_code == 200, e.text
    assert e.json()["map"]["shape"] == [512, 400]
    assert _decodes(client, 0) == full_before + 1


class _HeldDecode:
    """A ``pipeline.ingest`` that blocks the first call inside the decode until :meth:`release`."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.entered = threading.Event()
        self.released = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            self.entered.set()
            assert self.released.wait(60), "the test never released the held decode"
        return self.real(*args, **kwargs)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[_HeldDecode]:
    hook = _HeldDecode(pipeline.ingest)
    monkeypatch.setattr(pipeline, "ingest", hook)
    yield hook
    hook.release()


def _wait_admitted(n: int) -> None:
    """Until ``n`` requests hold an admission place (an event-driven condition, bounded for safety)."""
    done = threading.Event()
    for _ in range(6000):
        rt = active_runtime()
        if rt is not None and rt.admission.admitted >= n:
            return
        done.wait(0.01)
    raise AssertionError(f"{n} requests were never admitted")


def _assert_overloaded(r: Any) -> None:
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["code"] == "overloaded"


def test_admission_refuses_beyond_one_decode_and_no_queue(
    serve_env: pytest.MonkeyPatch, held: _HeldDecode, phantom_files: list[Path]
) -> None:
    serve_env.setenv("MIMICRY_SERVE_MAX_CONCURRENT_DECODES", "1")
    serve_env.setenv("MIMICRY_SERVE_MAX_QUEUED", "0")
    body = phantom_files[0].read_bytes()
    with make_client() as c, ThreadPoolExecutor(2) as pool:
        first: Future[Any] = pool.submit(c.post, "/v1/predict", content=body, headers=DICOM)
        assert held.entered.wait(60)
        _assert_overloaded(c.post("/v1/predict", content=body, headers=DICOM))
        _assert_overloaded(c.post("/v1/explain?format=json", content=body, headers=DICOM))
        assert held.calls == 1  # the refused requests were never decoded
        held.release()
        assert first.result(60).status_code == 200
        # the place is free again
        assert c.post("/v1/predict", content=body, headers=DICOM).status_code == 200
        assert c.get("/readyz").status_code == 200


def test_admission_queues_up_to_max_queued(
    serve_env: pytest.MonkeyPatch, held: _HeldDecode, phantom_files: list[Path]
) -> None:
    serve_env.setenv("MIMICRY_SERVE_MAX_CONCURRENT_DECODES", "1")
    serve_env.setenv("MIMICRY_SERVE_MAX_QUEUED", "1")
    body = phantom_files[0].read_bytes()
    with make_client() as c, ThreadPoolExecutor(2) as pool:
        first: Future[Any] = pool.submit(c.post, "/v1/predict", content=body, headers=DICOM)
        assert held.entered.wait(60)
        second: Future[Any] = pool.submit(c.post, "/v1/predict", content=body, headers=DICOM)
        _wait_admitted(2)  # the second holds the queue place, waiting for the decode slot
        assert held.calls == 1
        _assert_overloaded(c.post("/v1/predict", content=body, headers=DICOM))
        held.release()
        assert first.result(60).status_code == 200
        assert second.result(60).status_code == 200
        assert held.calls == 2
