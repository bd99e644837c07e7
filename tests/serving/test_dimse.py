"""The DICOM listener (:mod:`serving.dimse`) against implementations we did not write: pynetdicom and dcmtk
(``echoscu``/``storescu``) as SCUs, and a real Orthanc on 127.0.0.1 as both the sender (REST
``/modalities/{id}/store``) and the results destination: the Structured Report and the saliency Segmentation
must be found back in the source's study in Orthanc, referencing the source, for a phantom and for a
full-size (3000 x 2500, 12-bit) radiograph."""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE

from mimicry.dicom.results import to_part10
from serving.dimse import DimseListener, echo, serve_dimse
from serving.settings import DimseSettings, ServeSettings
from tests.serving.pacs_helpers import free_port, referenced_sources, run_orthanc

SECRET = "test-uid-secret"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _settings(registry_dir: Path, spool: Path, push: dict) -> ServeSettings:
    return ServeSettings(
        registry=registry_dir,
        models=["cxr-toy"],
        uid_secret=SECRET,
        dimse={"port": free_port(), "max_concurrent": 1, "wait_s": 120},
        push={"spool_dir": spool, "backoff_s": 0.1, "max_backoff_s": 1.0, **push},
    )


def _full_size(source: Path) -> Dataset:
    """The phantom's header on a 3000 x 2500, 12-bit image (a new series of the same study)."""
    ds = pydicom.dcmread(source)
    ds = copy.deepcopy(ds)
    rows, cols = 3000, 2500
    yy, xx = np.mgrid[0:rows, 0:cols]
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = ((yy * 7 + xx * 3) % 4096).astype(np.uint16).tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture
def listener_no_push(registry_dir: Path, tmp_path: Path) -> Iterator[DimseListener]:
    listener = serve_dimse(_settings(registry_dir, tmp_path / "spool", {"kind": "none"}), block=False)
    try:
        yield listener
    finally:
        listener.shutdown()


def test_echo_store_and_refusals_with_pynetdicom(listener_no_push: DimseListener, phantom_files) -> None:
    port = listener_no_push.port
    ae = AE(ae_title="SCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", ExplicitVRLittleEndian)  # DX for presentation
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", HTJ2KLossless)  # CR in HTJ2K (the reader decodes)
    assoc = ae.associate("127.0.0.1", port, ae_title="MIMICRY")
    assert assoc.is_established
    try:
        accepted = {c.abstract_syntax for c in assoc.accepted_contexts}
        rejected = {c.abstract_syntax for c in assoc.rejected_contexts}
        assert CTImageStorage in rejected  # other SOP classes are refused at negotiation
        assert "1.2.840.10008.5.1.4.1.1.1.1" in accepted
        htj2k = [c for c in assoc.accepted_contexts if c.abstract_syntax == "1.2.840.10008.5.1.4.1.1.1"]
        assert [c.transfer_syntax[0] for c in htj2k] == [HTJ2KLossless]
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(pydicom.dcmread(phantom_files[0])).Status == 0x0000
        broken = pydicom.dcmread(phantom_files[1])
        broken.Rows = 0  # the ingest refuses it: Cannot understand, and the listener stays up
        status = assoc.send_c_store(broken)
        assert status.Status == 0xC000
        assert "invalid_geometry" in status.ErrorComment
        assert assoc.send_c_store(pydicom.dcmread(phantom_files[2])).Status == 0x0000
    finally:
        assoc.release()
    # the container health check: a C-ECHO of the listener as its settings name it
    assert echo(listener_no_push.settings)
    assert not echo(listener_no_push.settings.model_copy(update={"dimse": DimseSettings(port=free_port())}))


def test_dcmtk_echoscu_and_storescu(listener_no_push: DimseListener, phantom_files) -> None:
    for tool in ("echoscu", "storescu"):  # dcmtk, installed by scripts/system-deps.sh: fail, never skip
        assert shutil.which(tool), f"{tool} (Debian package dcmtk) is missing: run scripts/system-deps.sh"
    port = str(listener_no_push.port)
    echo = subprocess.run(["echoscu", "-aec", "MIMICRY", "127.0.0.1", port], capture_output=True, timeout=60)
    assert echo.returncode == 0, echo.stderr
    store = subprocess.run(
        ["storescu", "-aec", "MIMICRY", "127.0.0.1", port, str(phantom_files[0])],
        capture_output=True,
        timeout=120,
    )
    assert store.returncode == 0, store.stderr
    assert b"Error" not in store.stderr


def test_orthanc_round_trip(registry_dir: Path, phantom_files, tmp_path: Path) -> None:
    mimicry_port = free_port()
    with run_orthanc(tmp_path / "orthanc", {"mimicry": ["MIMICRY", "127.0.0.1", mimicry_port]}) as orthanc:
        settings = _settings(
            registry_dir,
            tmp_path / "spool",
            {"kind": "dimse", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
        )
        settings.dimse.port = mimicry_port
        listener = serve_dimse(settings, block=False)
        try:
            big = _full_size(phantom_files[0])
            sources = [pydicom.dcmread(phantom_files[0]), big]
            with orthanc.client() as http:
                ids = []
                for ds in sources:
                    r = http.post("/instances", content=to_part10(ds))
                    assert r.status_code == 200, r.text
                    ids.append(r.json()["ID"])
                assert http.post("/modalities/mimicry/echo", json={}).status_code == 200
                r = http.post("/modalities/mimicry/store", json={"Resources": ids, "Synchronous": True})
                assert r.status_code == 200, r.text
                assert listener.push is not None
                assert listener.push.wait_empty(120)
                study = next(
                    s
                    for s in http.get("/studies", params={"expand": ""}).json()
                    if s["MainDicomTags"]["StudyInstanceUID"] == str(sources[0].StudyInstanceUID)
                )
                found: dict[str, list[Dataset]] = {}
                for inst in http.get(f"/studies/{study['ID']}/instances").json():
                    data = http.get(f"/instances/{inst['ID']}/file").content
                    ds = pydicom.dcmread(io.BytesIO(data))
                    found.setdefault(str(ds.SOPClassUID), []).append(ds)
        finally:
            listener.shutdown()
    srcs = {str(s.SOPInstanceUID) for s in sources}
    srs, segs = found.get(COMPREHENSIVE_3D_SR, []), found.get(SegmentationStorage, [])
    assert ComprehensiveSRStorage not in found
    assert len(srs) == 2
    assert len(segs) == 2
    sr_refs, seg_refs = referenced_sources(srs, segs)
    assert sr_refs == srcs
    assert seg_refs == srcs
    big_seg = next(s for s in segs if (s.Rows, s.Columns) == (3000, 2500))
    assert big_seg.StudyInstanceUID == sources[0].StudyInstanceUID
    # the objects as the PACS stored them are valid (dciodvfy) and read back in highdicom
    small_sr = next(sr for sr in srs if _refers_to(sr, sources[0]))
    small_seg = next(s for s in segs if (s.Rows, s.Columns) == (sources[0].Rows, sources[0].Columns))
    for name, ds in (("sr", small_sr), ("seg", small_seg)):
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        proc = subprocess.run(
            ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        errors = [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("Error")]
        assert errors == [], errors
    group = hd.sr.Comprehensive3DSR.from_dataset(small_sr).content.get_image_measurement_groups()[0]
    probs = {m.name.meaning.removeprefix("Probability of "): m.value for m in group.get_measurements()}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert group.finding_type.value == max(probs, key=probs.get)  # the Finding is the most probable class
    algo = _texts(small_sr.ContentSequence, "Algorithm Parameters")
    assert any(p.startswith("sha256=") and len(p) == 7 + 64 for p in algo)


def _refers_to(sr: Dataset, source: Dataset) -> bool:
    ev = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    return str(ev.ReferencedSOPInstanceUID) == str(source.SOPInstanceUID)


def _texts(items: pydicom.Sequence, meaning: str) -> list[str]:
    out = []
    for item in items:
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeMeaning == meaning:
            out.append(str(item.TextValue))
        if "ContentSequence" in item:
            out += _texts(item.ContentSequence, meaning)
    return out
