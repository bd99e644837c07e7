"""The serving adapter of the result objects: the UID secret from the settings makes every worker file a
result in the same study/series/instance, the HTTP Secondary Capture keeps its de-identified placement when
called with a salt, and both pass dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mimicry.dicom import remap_uid
from serving.results import results_policy
from serving.secondary_capture import secondary_capture
from serving.settings import ServeSettings


def _errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is missing: run scripts/system-deps.sh")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("Error")]


def test_uid_secret_is_shared_by_workers(phantom_files, tmp_path: Path) -> None:
    data = phantom_files[0].read_bytes()
    src = pydicom.dcmread(io.BytesIO(data))
    rgb = np.zeros((int(src.Rows), int(src.Columns), 3), np.uint8)
    # two worker processes: different (random) ingest salts, one configured secret
    workers = [ServeSettings(uid_secret="from-a-secret") for _ in range(2)]
    assert workers[0].ingest.uid_salt.get_secret_value() != workers[1].ingest.uid_salt.get_secret_value()
    out = [
        pydicom.dcmread(io.BytesIO(secondary_capture(data, rgb, description="d", policy=results_policy(w))))
        for w in workers
    ]
    assert out[0].SOPInstanceUID == out[1].SOPInstanceUID
    assert out[0].SeriesInstanceUID == out[1].SeriesInstanceUID
    assert out[0].StudyInstanceUID == src.StudyInstanceUID  # the original study by default
    path = tmp_path / "sc.dcm"
    path.write_bytes(secondary_capture(data, rgb, description="d", policy=results_policy(workers[0])))
    assert _errors(path) == []


def test_deidentified_placement_and_legacy_salt(phantom_files, tmp_path: Path) -> None:
    data = phantom_files[1].read_bytes()
    src = pydicom.dcmread(io.BytesIO(data))
    rgb = np.zeros((int(src.Rows), int(src.Columns), 3), np.uint8)
    settings = ServeSettings(uid_secret="k", results_study="deidentified")
    by_settings = secondary_capture(data, rgb, description="d", policy=results_policy(settings))
    by_salt = secondary_capture(data, rgb, description="d", salt="k")
    for blob in (by_settings, by_salt):
        sc = pydicom.dcmread(io.BytesIO(blob))
        assert sc.StudyInstanceUID == remap_uid(str(src.StudyInstanceUID), salt="k")
        assert sc.PatientIdentityRemoved == "YES"
        assert str(src.PatientName).encode() not in blob
    path = tmp_path / "sc.dcm"
    path.write_bytes(by_salt)
    assert _errors(path) == []
    with pytest.raises(ValueError, match="policy or a salt"):
        secondary_capture(data, rgb, description="d")
