"""Results pushed back (:mod:`serving.push`): a destination outage spools, recovery delivers, nothing is lost.
The destination is a pynetdicom Storage SCP (C-STORE) started on 127.0.0.1; the counters are read from the
prometheus-client registry."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from prometheus_client import REGISTRY
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from mimicry.dicom.results import to_part10
from serving.push import DimseDestination, PushQueue, QueueFull
from tests.serving.pacs_helpers import RecordingScp, free_port


def _object(uid: str | None = None) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid() if uid is None else uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(16, dtype=np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return to_part10(ds)


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"destination": "dimse"}) or 0.0


def test_outage_spools_then_delivers_everything(tmp_path) -> None:
    port = free_port()  # nothing listens there yet: the destination is down
    dest = DimseDestination("RECORDER", "127.0.0.1", port, timeout_s=5)
    queue = PushQueue(dest, tmp_path / "spool", attempts=2, backoff_s=0.05, max_backoff_s=0.2)
    objects = [_object() for _ in range(3)]
    failed0, sent0 = _metric("mimicry_push_failed_total"), _metric("mimicry_push_sent_total")
    queue.put(objects)
    assert queue.drain() == 0  # one round while the destination is down
    assert len(queue.pending()) == 3
    assert _metric("mimicry_push_queued") == 3
    assert _metric("mimicry_push_failed_total") == failed0 + 2  # both attempts of the oldest object
    # a restarted process picks the spool up: a new queue on the same directory, destination back up
    scp = RecordingScp(port).start()
    try:
        again = PushQueue(dest, tmp_path / "spool", attempts=2, backoff_s=0.05, max_backoff_s=0.2).start()
        assert again.wait_empty(30)
        again.stop()
    finally:
        scp.stop()
    want = {str(pydicom.dcmread(io.BytesIO(o)).SOPInstanceUID) for o in objects}
    assert set(scp.received) == want
    assert _metric("mimicry_push_sent_total") == sent0 + 3
    assert _metric("mimicry_push_queued") == 0


def test_background_thread_resends_after_recovery(tmp_path) -> None:
    port = free_port()
    dest = DimseDestination("RECORDER", "127.0.0.1", port, timeout_s=5)
    queue = PushQueue(dest, tmp_path / "spool", attempts=1, backoff_s=0.05, max_backoff_s=0.2).start()
    try:
        queue.put([_object(), _object()])
        assert not queue.wait_empty(0.5)  # down: still spooled
        scp = RecordingScp(port).start()
        try:
            assert queue.wait_empty(30)
        finally:
            scp.stop()
    finally:
        queue.stop()
    assert len(scp.received) == 2


def test_spool_is_bounded_all_or_nothing_and_idempotent(tmp_path) -> None:
    dest = DimseDestination("RECORDER", "127.0.0.1", free_port(), timeout_s=2)
    queue = PushQueue(dest, tmp_path / "spool", max_queued=2)
    queue.put([_object("1.2.3.4")])
    queue.put([_object("1.2.3.4")])  # the same result again replaces it
    assert len(queue.pending()) == 1
    with pytest.raises(QueueFull):
        queue.put([_object(), _object()])
    assert len(queue.pending()) == 1
    with pytest.raises(ValueError, match="SOP Instance UID"):
        queue.put([_object("1.2/../3")])


def test_stow_rs_push_into_orthanc_dicomweb(tmp_path, phantom_files) -> None:
    """The STOW-RS destination (dicomweb-client) delivers a Structured Report to Orthanc's DICOMweb."""
    from mimicry.dicom.results import AiAlgorithm, AiFindings, UidPolicy, build_sr
    from serving.push import StowDestination
    from tests.serving.pacs_helpers import DICOMWEB_PLUGIN, run_orthanc

    if not Path(DICOMWEB_PLUGIN).exists():
        pytest.fail("orthanc-dicomweb missing: run scripts/system-deps.sh")
    source = pydicom.dcmread(phantom_files[0])
    sr = build_sr(
        source,
        AiFindings(("a", "b"), (0.3, 0.7), 1),
        AiAlgorithm("cxr-toy", "1", "ef" * 32),
        UidPolicy(secret="k"),
    )
    with run_orthanc(tmp_path / "orthanc", {}) as orthanc:
        dest = StowDestination(f"{orthanc.url}/dicom-web", timeout_s=30)
        queue = PushQueue(dest, tmp_path / "spool", attempts=2, backoff_s=0.05)
        queue.put([to_part10(sr)])
        assert queue.drain() == 1
        with orthanc.client() as http:
            found = http.post(
                "/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sr.SOPInstanceUID}}
            )
            assert len(found.json()) == 1
            tags = http.get(f"/instances/{found.json()[0]}/simplified-tags").json()
    assert tags["StudyInstanceUID"] == str(source.StudyInstanceUID)
    assert REGISTRY.get_sample_value("mimicry_push_sent_total", {"destination": "stow"}) >= 1
