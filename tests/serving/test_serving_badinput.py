"""Bad-input sweep in-process with every modality accepted, so that pydicom's whole test corpus reaches the
decoders (JPEG, JPEG-LS, JPEG 2000, RLE, deflate, big endian, colour, multi-frame, broken files): every
answer is exactly what :func:`mimicry.dicom.read_dicom` decides, as an RFC 9457 problem, never a 5xx
(docs/serving.md, "Error codes"). The real-server sweep with the default CR/DX allow-list is in
``test_serving_server.py``."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

from pydicom.data import get_testdata_files

from mimicry.dicom import DicomIngestError, read_dicom
from mimicry.settings import IngestSettings
from tests.serving.conftest import make_client


def test_every_pydicom_file_any_modality(serve_env, phantom_files) -> None:
    serve_env.setenv("MIMICRY_SERVE_INGEST__ALLOW_ANY_MODALITY", "true")
    ingest = IngestSettings(allow_any_modality=True, uid_salt="test-salt")
    files = [Path(f) for f in get_testdata_files() if Path(f).is_file()]
    outcomes: Counter[tuple[int, str | None]] = Counter()
    with make_client() as client, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            data = f.read_bytes()
            try:
                read_dicom(data, settings=ingest)
                expected: tuple[int, str | None] = (200, None)
            except DicomIngestError as exc:
                expected = (exc.http_status, exc.code)
            r = client.post("/v1/predict", content=data, headers={"content-type": "application/dicom"})
            got = (r.status_code, r.json().get("code") if r.status_code != 200 else None)
            assert got == expected, f.name
            if r.status_code == 200:
                assert r.json()["predicted_class"] in ("Normal", "CHF", "pneumonia")
            else:
                assert r.headers["content-type"] == "application/problem+json"
            outcomes[got] += 1
        assert client.get("/readyz").status_code == 200
        ok = client.post(
            "/v1/predict",
            content=phantom_files[0].read_bytes(),
            headers={"content-type": "application/dicom"},
        )
        assert ok.status_code == 200
    # pydicom 3.0.2's corpus (176 files), outcome by outcome
    assert outcomes == {
        (200, None): 53,
        (422, "no_pixel_data"): 67,
        (422, "colour_image"): 33,
        (422, "multi_frame"): 3,
        (400, "not_dicom"): 13,
        (400, "unreadable"): 3,
        (400, "invalid_geometry"): 2,
        (400, "truncated"): 2,
    }
