"""Fixtures: tiny MIMIC-CXR-EGD roots written in the real file formats.

A root holds ``master_sheet.csv`` (the exact real columns, optionally followed by the phantom extras),
``fixations.csv`` (the 37 real columns, rows of different images interleaved, ``-1`` rows included),
``bounding_boxes.csv`` (``dicom_id, bbox_name, x1, x2, y1, y2``), anatomy PNGs under
``audio_segmentation_transcripts/<dicom_id>/`` and 16 x 20 DX DICOMs written with pydicom under
``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm`` (in the root, or in a separate images root).

The expected values the tests assert are written out by hand in the test modules; the specs below are only
the *inputs*.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

H, W = 16, 20
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation

# Real EGD master_sheet.csv columns, copied from the dataset layout contract (kept literal on purpose so the
# reader's constant is checked against an independent copy).
REAL_MASTER_COLUMNS = [
    "dicom_id",
    "path",
    "study_id",
    "patient_id",
    "stay_id",
    "gender",
    "anchor_age",
    "image_top_pad",
    "image_bottom_pad",
    "image_left_pad",
    "image_right_pad",
    "dx1",
    "dx1_icd",
    "dx2",
    "dx2_icd",
    "dx3",
    "dx3_icd",
    "dx4",
    "dx4_icd",
    "dx5",
    "dx5_icd",
    "dx6",
    "dx6_icd",
    "dx7",
    "dx7_icd",
    "dx8",
    "dx8_icd",
    "dx9",
    "dx9_icd",
    "normal_reports",
    "Normal",
    "CHF",
    "pneumonia",
    "consolidation",
    "enlarged_cardiac_silhouette",
    "linear__patchy_atelectasis",
    "lobar__segmental_collapse",
    "not_otherwise_specified_opacity___pleural__parenchymal_opacity__",
    "pleural_effusion_or_thickening",
    "pulmonary_edema__hazy_opacity",
    "normal_anatomically",
    "elevated_hemidiaphragm",
    "hyperaeration",
    "vascular_redistribution",
    "atelectasis__chx",
    "cardiomegaly__chx",
    "consolidation__chx",
    "edema__chx",
    "enlarged_cardiomediastinum__chx",
    "fracture__chx",
    "lung_lesion__chx",
    "lung_opacity__chx",
    "no_finding__chx",
    "pleural_effusion__chx",
    "pleural_other__chx",
    "pneumonia__chx",
    "pneumothorax__chx",
    "support_devices__chx",
    "cxr_exam_indication",
]

REAL_FIXATION_COLUMNS = [
    "SESSION_ID",
    "MEDIA_ID",
    "DICOM_ID",
    "CNT",
    "Time (in secs)",
    "TIMETICK(f=10000000)",
    "FPOGX",
    "FPOGY",
    "FPOGS",
    "FPOGD",
    "FPOGID",
    "FPOGV",
    "BPOGX",
    "BPOGY",
    "BPOGV",
    "LPCX",
    "LPCY",
    "LPD",
    "LPS",
    "LPV",
    "RPCX",
    "RPCY",
    "RPD",
    "RPS",
    "RPV",
    "BKID",
    "BKDUR",
    "BKPMIN",
    "LPMM",
    "LPMMV",
    "RPMM",
    "RPMMV",
    "SACCADE_MAG",
    "SACCADE_DIR",
    "VID_FRAME",
    "X_ORIGINAL",
    "Y_ORIGINAL",
]

PHANTOM_EXTRAS = [
    "split",
    "site",
    "marker_x1",
    "marker_x2",
    "marker_y1",
    "marker_y2",
    "shortcut_corr",
    "shortcut_mode",
    "nuisance_border_corr",
    "nuisance_collimation_corr",
    "nuisance_texture_corr",
    "nuisance_border",
    "nuisance_collimation",
    "nuisance_texture",
]


def rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Bool H x W mask, True on rows r0..r1 and columns c0..c1 (inclusive)."""
    m = np.zeros((H, W), dtype=bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


@dataclass
class CaseSpec:
    """Inputs of one fixture image."""

    dicom_id: str
    patient_id: str
    study_id: str
    label: str
    gender: str = "F"
    anchor_age: str = "20 - 30"
    fixations: list[tuple[float, float, float]] = field(default_factory=list)  # (x, y, duration)
    anatomy: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: list[tuple[str, float, float, float, float]] = field(default_factory=list)  # name, x1, x2, y1, y2
    split: str = "train"
    site: str = "site_a"
    marker: tuple[int, int, int, int] = (1, 3, 12, 14)  # x1, x2, y1, y2
    finding: np.ndarray | None = None
    pixel_offset: int = 100

    @property
    def rel_path(self) -> str:
        return f"files/p{self.patient_id[:2]}/p{self.patient_id}/s{self.study_id}/{self.dicom_id}.dcm"


def default_cases() -> list[CaseSpec]:
    """Four images: two studies of one patient, one image without on-image fixations, partial anatomy."""
    return [
        CaseSpec(
            dicom_id="24c7496c-d7635dfe-b8e0b87f-d818affc-78ff7cf4",
            patient_id="15628804",
            study_id="58573295",
            label="CHF",
            fixations=[
                (3, 2, 0.25),
                (-1, -1, 0.10),  # off image: filtered
                (7, 10, 0.50),
                (7.4, 10.4, 0.20),  # rounds to (7, 10): that pixel counts 2
                (19, 15, 0.30),  # bottom-right corner pixel, valid
                (20, 5, 0.10),  # x == W: outside, filtered
                (4.5, 0.5, 0.15),  # rounds half up to (5, 1)
            ],
            anatomy={
                "left_lung": rect(2, 12, 11, 17),  # patient's left = image right
                "right_lung": rect(2, 12, 2, 8),
                "mediastinum": rect(1, 13, 9, 10),
                "aortic_knob": rect(1, 2, 10, 11),
            },
            boxes=[
                ("left lung", 11.0, 17.0, 2.0, 12.0),
                ("right lung", 2.0, 8.0, 2.0, 12.0),
                ("cardiac silhouette", 7.0, 13.0, 8.0, 13.0),
            ],
            split="train",
            site="site_b",
            marker=(1, 3, 12, 14),
            finding=np.zeros((H, W), dtype=bool),
            pixel_offset=100,
        ),
        CaseSpec(
            dicom_id="0a1b2c3d-4e5f6071-8293a4b5-c6d7e8f9-01234567",
            patient_id="15628804",  # same patient, second study
            study_id="51234567",
            label="Normal",
            fixations=[(10, 8, 0.40), (-1, -1, 0.20)],
            anatomy={"left_lung": rect(3, 11, 12, 16), "right_lung": rect(3, 11, 3, 7)},
            boxes=[("trachea", 9.0, 10.0, 0.0, 5.0)],
            split="train",
            site="site_a",
            marker=(16, 18, 1, 2),
            finding=np.zeros((H, W), dtype=bool),
            pixel_offset=200,
        ),
        CaseSpec(
            dicom_id="deadbeef-01234567-89abcdef-fedcba98-76543210",
            patient_id="17654321",
            study_id="59876543",
            label="pneumonia",
            gender="M",
            anchor_age="47",  # plain integer age is accepted too
            fixations=[(-1, -1, 0.30), (-1, -1, 0.10)],  # never on the image
            split="test",
            site="site_c",
            marker=(0, 2, 0, 1),
            finding=rect(3, 6, 12, 15),
            pixel_offset=300,
        ),
        CaseSpec(
            dicom_id="11111111-22222222-33333333-44444444-55555555",
            patient_id="12345678",
            study_id="55555555",
            label="pneumonia",
            anchor_age="60 - 70",
            fixations=[(0, 0, 0.30), (19, 0, 0.30)],
            split="train",
            site="site_c",
            marker=(17, 19, 14, 15),
            finding=rect(9, 12, 2, 5) | rect(1, 2, 14, 15),
            pixel_offset=400,
        ),
    ]


def write_dx_dicom(path: Path, pixels: np.ndarray, seed: str) -> None:
    """A minimal, valid DX (For Presentation) DICOM file: 12-bit MONOCHROME2, explicit VR little endian."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sop_uid = generate_uid(entropy_srcs=[seed, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientID = "ANON"
    ds.set_pixel_data(pixels.astype(np.uint16), photometric_interpretation="MONOCHROME2", bits_stored=12)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def case_pixels(spec: CaseSpec) -> np.ndarray:
    """Strictly increasing (in C order) 12-bit values: ``offset + 10 * flat_index``."""
    return (spec.pixel_offset + 10 * np.arange(H * W)).reshape(H, W).astype(np.uint16)


def _master_row(spec: CaseSpec, columns: Sequence[str], stay_id: str) -> dict[str, str]:
    row = dict.fromkeys(columns, "")
    row.update(
        {
            "dicom_id": spec.dicom_id,
            "path": spec.rel_path,
            "study_id": spec.study_id,
            "patient_id": spec.patient_id,
            "stay_id": stay_id,
            "gender": spec.gender,
            "anchor_age": spec.anchor_age,
            "image_top_pad": "86",
            "image_bottom_pad": "86",
            "image_left_pad": "448",
            "image_right_pad": "448",
            "dx1": "Heart failure, unspecified" if spec.label == "CHF" else "Pneumonia, unspecified organism",
            "dx1_icd": "I50.9" if spec.label == "CHF" else "J18.9",
            "normal_reports": "1" if spec.label == "Normal" else "0",
            "Normal": "1" if spec.label == "Normal" else "0",
            "CHF": "1" if spec.label == "CHF" else "0",
            "pneumonia": "1" if spec.label == "pneumonia" else "0",
            "cardiomegaly__chx": "1" if spec.label == "CHF" else "-1",
            "pneumonia__chx": "1" if spec.label == "pneumonia" else "",
            "cxr_exam_indication": "___ with dyspnea, evaluate for pneumonia, effusion",
        }
    )
    if "split" in row:
        x1, x2, y1, y2 = spec.marker
        row.update(
            {
                "split": spec.split,
                "site": spec.site,
                "marker_x1": str(x1),
                "marker_x2": str(x2),
                "marker_y1": str(y1),
                "marker_y2": str(y2),
                "shortcut_corr": "0.9",
                "shortcut_mode": "correlated" if spec.split == "train" else "reversed",
                "nuisance_border_corr": "0.65",
                "nuisance_collimation_corr": "0.6",
                "nuisance_texture_corr": "0.7",
                "nuisance_border": "0",
                "nuisance_collimation": "1",
                "nuisance_texture": "0",
            }
        )
    return row


def _fixation_rows(cases: Sequence[CaseSpec]) -> list[dict[str, str]]:
    """Rows of all images interleaved round-robin (file order within an image is kept)."""
    per_case = []
    for spec in cases:
        rows = []
        for cnt, (x, y, dur) in enumerate(spec.fixations):
            row = dict.fromkeys(REAL_FIXATION_COLUMNS, "0")
            row.update(
                {
                    "SESSION_ID": "1",
                    "MEDIA_ID": "7",
                    "DICOM_ID": spec.dicom_id,
                    "CNT": str(cnt),
                    "Time (in secs)": f"{0.5 * cnt:.3f}",
                    "TIMETICK(f=10000000)": str(5_000_000 * cnt),
                    "FPOGX": "0.5",
                    "FPOGY": "0.5",
                    "FPOGS": f"{0.5 * cnt:.3f}",
                    "FPOGD": f"{dur}",
                    "FPOGID": str(cnt + 1),
                    "FPOGV": "1",
                    "X_ORIGINAL": f"{x}",
                    "Y_ORIGINAL": f"{y}",
                }
            )
            rows.append(row)
        per_case.append(rows)
    out = []
    for k in range(max((len(r) for r in per_case), default=0)):
        out.extend(rows[k] for rows in per_case if k < len(rows))
    return out


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def build_egd_root(
    root: Path,
    cases: Sequence[CaseSpec],
    *,
    images_root: Path | None = None,
    phantom_extras: bool = False,
    phantom_sigma: float | None = None,
    drop_master_columns: Sequence[str] = (),
    drop_fixation_columns: Sequence[str] = (),
) -> Path:
    """Write an EGD-layout root; DICOMs go under ``images_root`` (default: ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    images_root = root if images_root is None else images_root
    columns = [*REAL_MASTER_COLUMNS, *(PHANTOM_EXTRAS if phantom_extras else [])]
    master_rows = [_master_row(s, columns, stay_id=str(30000000 + i)) for i, s in enumerate(cases)]
    _write_csv(root / "master_sheet.csv", [c for c in columns if c not in drop_master_columns], master_rows)
    _write_csv(
        root / "fixations.csv",
        [c for c in REAL_FIXATION_COLUMNS if c not in drop_fixation_columns],
        _fixation_rows(cases),
    )
    box_rows = [
        {"dicom_id": s.dicom_id, "bbox_name": n, "x1": x1, "x2": x2, "y1": y1, "y2": y2}
        for s in cases
        for (n, x1, x2, y1, y2) in s.boxes
    ]
    _write_csv(root / "bounding_boxes.csv", ["dicom_id", "bbox_name", "x1", "x2", "y1", "y2"], box_rows)
    for spec in cases:
        write_dx_dicom(images_root / spec.rel_path, case_pixels(spec), seed=spec.dicom_id)
        for name, mask in spec.anatomy.items():
            png = root / "audio_segmentation_transcripts" / spec.dicom_id / f"{name}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(png)
        if phantom_extras and spec.finding is not None:
            png = root / "masks" / spec.dicom_id / "finding.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.where(spec.finding, 255, 0).astype(np.uint8), mode="L").save(png)
    if phantom_extras:
        meta = {"generator_version": "test", "class_names": ["Normal", "CHF", "pneumonia"], "n": len(cases)}
        if phantom_sigma is not None:
            meta["heatmap_sigma_px"] = phantom_sigma
        (root / "phantom.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


@pytest.fixture
def egd_cases() -> list[CaseSpec]:
    return default_cases()


@pytest.fixture
def make_egd_root(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_egd_root(name="egd", cases=None, **build_egd_root_kwargs) -> root``."""

    def make(name: str = "egd", cases: Sequence[CaseSpec] | None = None, **kwargs: object) -> Path:
        return build_egd_root(tmp_path / name, default_cases() if cases is None else cases, **kwargs)

    return make


@pytest.fixture
def egd_root(make_egd_root: Callable[..., Path]) -> Path:
    """The four default cases in a plain (real-EGD-like) root: no phantom extras, images under the root."""
    return make_egd_root()


@pytest.fixture
def phantom_like_root(make_egd_root: Callable[..., Path]) -> Path:
    """The four default cases with the phantom extras (split/site/marker columns, phantom.json, masks/)."""
    return make_egd_root("phantom", phantom_extras=True, phantom_sigma=0.8)
