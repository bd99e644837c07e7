"""Helpers of the PACS tests: free ports, a pynetdicom Storage SCP that records what it receives, a real
Orthanc started on 127.0.0.1 with its own directories and stopped by PID, and DICOM sources."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RecordingScp:
    """A pynetdicom Storage SCP of every storage SOP class (``received``: SOP Instance UID → dataset)."""

    port: int
    received: dict[str, Dataset] = field(default_factory=dict)
    server: Any = None

    def start(self) -> RecordingScp:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title="RECORDER")
        ae.supported_contexts = AllStoragePresentationContexts

        def store(event: Any) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received[str(ds.SOPInstanceUID)] = ds
            return 0x0000

        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)]
        )
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    proc: subprocess.Popen[bytes]
    aet: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=300)


@contextmanager
def run_orthanc(
    root: Path, modalities: dict[str, list[Any]], *, dicomweb_servers: dict[str, Any] | None = None
) -> Iterator[Orthanc]:
    """Orthanc on 127.0.0.1 (free ports, own storage/index, DICOMweb plugin), stopped by PID.

    ``dicomweb_servers``: the plugin's ``DicomWeb.Servers`` (remote DICOMweb services Orthanc can send a
    study to with ``POST /dicom-web/servers/{name}/stow``)."""
    # The README test command installs both (scripts/system-deps.sh): missing is a broken set-up, not a skip.
    assert ORTHANC is not None, "Orthanc (Debian package orthanc) is missing: run scripts/system-deps.sh"
    assert Path(DICOMWEB_PLUGIN).exists(), "orthanc-dicomweb is missing: run scripts/system-deps.sh"
    http_port, dicom_port = free_port(), free_port()
    (root / "storage").mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "mimicry-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": modalities,
        "DicomScuTimeout": 300,
        "Plugins": [DICOMWEB_PLUGIN] if os.path.exists(DICOMWEB_PLUGIN) else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": dicomweb_servers or {}},
        "HttpTimeout": 300,
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(root / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    orthanc = Orthanc(http_port, dicom_port, proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "orthanc.log").read_text()[-2000:]
            try:
                if httpx.get(f"{orthanc.url}/system", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Orthanc did not start"
            time.sleep(0.2)
        yield orthanc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def full_size(source: Dataset, rows: int = 3000, cols: int = 2500, *, htj2k: bool = False) -> Dataset:
    """A copy of ``source``'s header on a ``rows x cols``, 12-bit image: a new instance of a new series of
    the same study (a full-size radiograph, 15 MB of pixel data; ``htj2k``: encoded HTJ2K lossless by
    OpenJPH through imagecodecs)."""
    ds = copy.deepcopy(source)
    yy, xx = np.mgrid[0:rows, 0:cols]
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    pixels = ((yy * 7 + xx * 3) % 4096).astype(np.uint16)
    if htj2k:
        import imagecodecs
        from pydicom.encaps import encapsulate
        from pydicom.uid import HTJ2KLossless

        ds.PixelData = encapsulate([imagecodecs.htj2k_encode(pixels, reversible=True)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    else:
        ds.PixelData = pixels.tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def referenced_sources(srs: list[Any], segs: list[Any]) -> tuple[set[str], set[str]]:
    """The source SOP Instance UIDs the result objects reference: the SRs' evidence sequence (TID 1500's
    Current Requested Procedure Evidence) and the Segmentations' Referenced Series / Instance."""
    sr_refs = {
        str(
            sr.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID
        )
        for sr in srs
    }
    seg_refs = {
        str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
        for seg in segs
    }
    return sr_refs, seg_refs
