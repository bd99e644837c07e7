"""Phantom generator (mimicry.data.phantom): layout, DICOM, labels, anatomy, findings, gaze, shortcut, files.

Datasets are small (12-24 cases at 64-96 px) and generated once per module; shortcut statistics use the
metadata-only path (:func:`plan_cases`) on thousands of cases. Expected values are written out literally
(EGD column lists, ID patterns, tag values), and the RLE is decoded by a local decoder, not by the readers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from mimicry.data.phantom import (
    CLASS_NAMES,
    REVERSED_SITE_OF_CLASS,
    SITE_OF_CLASS,
    IncompleteDatasetError,
    OutputDirNotEmptyError,
    PhantomConfig,
    PhantomConfigError,
    generate_phantom_dataset,
    plan_cases,
    render_case,
    summarize_dataset,
)
from mimicry.data.phantom.anatomy import build_anatomy
from mimicry.data.phantom.contact_sheet import display_image
from mimicry.data.phantom.plan import case_rng
from mimicry.data.phantom.render import render_film

EGD_COLUMNS = [
    "dicom_id", "path", "study_id", "patient_id", "stay_id", "gender", "anchor_age", "image_top_pad",
    "image_bottom_pad", "image_left_pad", "image_right_pad", "dx1", "dx1_icd", "dx2", "dx2_icd", "dx3",
    "dx3_icd", "dx4", "dx4_icd", "dx5", "dx5_icd", "dx6", "dx6_icd", "dx7", "dx7_icd", "dx8", "dx8_icd",
    "dx9", "dx9_icd", "normal_reports", "Normal", "CHF", "pneumonia", "consolidation",
    "enlarged_cardiac_silhouette", "linear__patchy_atelectasis", "lobar__segmental_collapse",
    "not_otherwise_specified_opacity___pleural__parenchymal_opacity__", "pleural_effusion_or_thickening",
    "pulmonary_edema__hazy_opacity", "normal_anatomically", "elevated_hemidiaphragm", "hyperaeration",
    "vascular_redistribution", "atelectasis__chx", "cardiomegaly__chx", "consolidation__chx", "edema__chx",
    "enlarged_cardiomediastinum__chx", "fracture__chx", "lung_lesion__chx", "lung_opacity__chx",
    "no_finding__chx", "pleural_effusion__chx", "pleural_other__chx", "pneumonia__chx", "pneumothorax__chx",
    "support_devices__chx", "cxr_exam_indication",
]  # fmt: skip
EXTRA_COLUMNS = [
    "split", "site", "marker_x1", "marker_x2", "marker_y1", "marker_y2", "shortcut_corr", "shortcut_mode",
    "nuisance_border_corr", "nuisance_collimation_corr", "nuisance_texture_corr", "nuisance_border",
    "nuisance_collimation", "nuisance_texture",
]  # fmt: skip
FIXATION_COLUMNS = [
    "SESSION_ID", "MEDIA_ID", "DICOM_ID", "CNT", "Time (in secs)", "TIMETICK(f=10000000)", "FPOGX", "FPOGY",
    "FPOGS", "FPOGD", "FPOGID", "FPOGV", "BPOGX", "BPOGY", "BPOGV", "LPCX", "LPCY", "LPD", "LPS", "LPV",
    "RPCX", "RPCY", "RPD", "RPS", "RPV", "BKID", "BKDUR", "BKPMIN", "LPMM", "LPMMV", "RPMM", "RPMMV",
    "SACCADE_MAG", "SACCADE_DIR", "VID_FRAME", "X_ORIGINAL", "Y_ORIGINAL",
]  # fmt: skip
EGD_BOX_NAMES = {
    "cardiac silhouette", "left clavicle", "right clavicle", "left costophrenic angle",
    "right costophrenic angle", "left hilar structures", "right hilar structures", "left lung", "right lung",
    "left upper lung zone", "left mid lung zone", "left lower lung zone", "right upper lung zone",
    "right mid lung zone", "right lower lung zone", "upper mediastinum", "trachea",
}  # fmt: skip
COMPRESSED = {
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.1.99",
}
SIZE = 96
CONFIG = PhantomConfig(
    n=21, size=SIZE, seed=11, monochrome1_share=0.3, compressed_share=0.3, test_fraction=0.25
)


def read_sheet(root: Path) -> pd.DataFrame:
    return pd.read_csv(
        root / "master_sheet.csv",
        dtype={"dicom_id": str, "patient_id": str, "study_id": str, "stay_id": str},
        keep_default_na=False,
    )


def png(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "1"  # 1-bit greyscale PNG
    assert img.convert("L").getextrema() in ((0, 0), (0, 255), (255, 255))
    return np.asarray(img.convert("L")) > 0


def siim_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """SIIM relative RLE -> bool mask (column-major), written independently of the package."""
    h, w = shape
    flat = np.zeros(h * w, dtype=bool)
    if rle.strip() == "-1":
        return flat.reshape((h, w))
    vals = [int(t) for t in rle.split()]
    pos = 0
    for start, length in zip(vals[0::2], vals[1::2], strict=True):
        pos += start
        flat[pos : pos + length] = True
        pos += length
    return flat.reshape((w, h)).T


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "ds"
    generate_phantom_dataset(out, CONFIG)
    return out


@pytest.fixture(scope="module")
def sheet(root: Path) -> pd.DataFrame:
    df = read_sheet(root)
    labels = set(df[list(CLASS_NAMES)].astype(int).idxmax(axis=1))
    assert labels == set(CLASS_NAMES), "fixture must contain every class"
    return df


def labels_of(df: pd.DataFrame) -> pd.Series:
    return df[list(CLASS_NAMES)].astype(int).idxmax(axis=1)


# ------------------------------------------------------------------------------------------ layout


def test_master_sheet_columns_are_exactly_egd_then_extras(root: Path) -> None:
    header = (root / "master_sheet.csv").read_text().splitlines()[0]
    assert header.split(",") == EGD_COLUMNS + EXTRA_COLUMNS


def test_csv_headers(root: Path) -> None:
    assert (root / "fixations.csv").read_text().splitlines()[0].split(",") == FIXATION_COLUMNS
    assert (root / "bounding_boxes.csv").read_text().splitlines()[0] == "dicom_id,bbox_name,x1,x2,y1,y2"
    assert (root / "train-rle.csv").read_text().splitlines()[0] == "ImageId, EncodedPixels"
    assert (root / "stage_2_train_labels.csv").read_text().splitlines()[
        0
    ] == "patientId,x,y,width,height,Target"


def test_ids_and_paths_follow_the_egd_pattern(root: Path, sheet: pd.DataFrame) -> None:
    assert len(sheet) == CONFIG.n
    for rec in sheet.itertuples():
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", rec.dicom_id)
        assert re.fullmatch(r"1\d{7}", rec.patient_id)
        assert re.fullmatch(r"5\d{7}", rec.study_id)
        assert rec.path == f"files/p{rec.patient_id[:2]}/p{rec.patient_id}/s{rec.study_id}/{rec.dicom_id}.dcm"
        assert (root / rec.path).is_file()
        assert rec.gender in ("F", "M")
        assert re.fullmatch(r"\d0 - \d0", rec.anchor_age)
        for name in ("left_lung", "right_lung", "mediastinum", "aortic_knob"):
            assert png(root / "audio_segmentation_transcripts" / rec.dicom_id / f"{name}.png").shape == (
                SIZE,
                SIZE,
            )
        assert png(root / "masks" / rec.dicom_id / "finding.png").shape == (SIZE, SIZE)
    assert sheet["dicom_id"].is_unique
    assert sheet["study_id"].is_unique
    assert sheet["patient_id"].nunique() < len(sheet), "some patients must have several studies"


def test_letterbox_pads_fit_the_1920x1080_screen(sheet: pd.DataFrame) -> None:
    w = 1920 - sheet["image_left_pad"] - sheet["image_right_pad"]
    h = 1080 - sheet["image_top_pad"] - sheet["image_bottom_pad"]
    assert (w == h).all()  # square films keep their aspect ratio
    assert (sheet["image_left_pad"] > 0).all()


def test_labels_are_one_hot_and_consistent(sheet: pd.DataFrame) -> None:
    onehot = sheet[list(CLASS_NAMES)].astype(int)
    assert set(np.unique(onehot.to_numpy())) == {0, 1}
    assert (onehot.sum(axis=1) == 1).all()
    assert (sheet["normal_reports"].astype(int) == onehot["Normal"]).all()
    chf = onehot["CHF"] == 1
    assert (sheet.loc[chf, "enlarged_cardiac_silhouette"].astype(int) == 1).all()
    assert (sheet.loc[chf, "cardiomegaly__chx"].astype(str) == "1").all()
    assert (sheet.loc[onehot["pneumonia"] == 1, "consolidation"].astype(int) == 1).all()


def test_phantom_json_is_written_last_and_complete(root: Path) -> None:
    meta = json.loads((root / "phantom.json").read_text())
    assert meta["class_names"] == ["Normal", "CHF", "pneumonia"]
    assert meta["seed"] == 11
    assert meta["size"] == SIZE
    assert meta["n"] == 21
    assert meta["heatmap_sigma_px"] == pytest.approx(150 * SIZE / 3000)
    assert meta["config"]["shortcut_corr"] == 0.9
    assert meta["split_rates"]["train"]["shortcut_corr"] == 0.9
    assert meta["split_rates"]["test"]["shortcut_corr"] == pytest.approx(0.05)
    later = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_mtime_ns > (root / "phantom.json").stat().st_mtime_ns
    ]
    assert later == []


# ------------------------------------------------------------------------------------------- DICOM


def test_dicom_tags(root: Path, sheet: pd.DataFrame) -> None:
    for rec in sheet.itertuples():
        ds = pydicom.dcmread(root / rec.path)
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
        assert ds.Modality == "DX"
        assert ds.BodyPartExamined == "CHEST"
        assert ds.ViewPosition in ("PA", "AP")
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        assert ds.PatientID == rec.patient_id
        assert str(ds.PatientName).startswith("PHANTOM^")
        assert ds.PatientBirthDate
        assert ds.AccessionNumber
        assert ds.InstitutionName
        assert ds.StudyDate
        assert str(ds.ReferringPhysicianName).startswith("PHANTOM^")
        block = ds.private_block(0x0029, "MIMICRY PHANTOM")
        assert str(block[0x10].value).startswith("PHANTOM^")
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
            assert uid.startswith("2.25.")
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        width_mm = float(ds.ImagerPixelSpacing[1]) * ds.Columns
        assert 350.0 <= width_mm <= 430.0
        assert float(ds.PixelSpacing[0]) < float(ds.ImagerPixelSpacing[0])
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) in (
            (1.0, 0.0),
            (1.0, -1024.0),
            (2.0, 0.0),
        )
        arr = ds.pixel_array
        assert arr.shape == (SIZE, SIZE)
        assert arr.dtype == np.uint16
        assert int(arr.max()) <= 4095


def test_all_monochrome1_and_all_compressed_shares() -> None:
    config = PhantomConfig(n=8, size=64, seed=3, monochrome1_share=1.0, compressed_share=1.0)
    plans = plan_cases(config)
    assert {p.photometric for p in plans} == {"MONOCHROME1"}
    assert {p.transfer_syntax for p in plans} == COMPRESSED
    none = plan_cases(PhantomConfig(n=8, size=64, seed=3, monochrome1_share=0.0, compressed_share=0.0))
    assert {p.photometric for p in none} == {"MONOCHROME2"}
    assert {p.transfer_syntax for p in none} == {"1.2.840.10008.1.2.1"}


@pytest.fixture(scope="module")
def twin_roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same 8 cases written plain (MONOCHROME2, explicit VR LE) and all MONOCHROME1 + compressed."""
    base = tmp_path_factory.mktemp("twins")
    plain = generate_phantom_dataset(
        base / "plain", PhantomConfig(n=8, size=64, seed=5, monochrome1_share=0.0, compressed_share=0.0)
    )
    fancy = generate_phantom_dataset(
        base / "fancy", PhantomConfig(n=8, size=64, seed=5, monochrome1_share=1.0, compressed_share=1.0)
    )
    return Path(plain["root"]), Path(fancy["root"])


def test_monochrome1_and_compressed_twins_decode_and_display_the_same(twin_roots: tuple[Path, Path]) -> None:
    plain, fancy = twin_roots
    a, b = read_sheet(plain), read_sheet(fancy)
    assert list(a["dicom_id"]) == list(b["dicom_id"])
    seen = set()
    for pa, pb in zip(a["path"], b["path"], strict=True):
        da, db = pydicom.dcmread(plain / pa), pydicom.dcmread(fancy / pb)
        assert da.PhotometricInterpretation == "MONOCHROME2"
        assert db.PhotometricInterpretation == "MONOCHROME1"
        seen.add(str(db.file_meta.TransferSyntaxUID))
        # Lossless: the stored values are exactly inverted.
        np.testing.assert_array_equal(db.pixel_array.astype(int), 4095 - da.pixel_array.astype(int))
        np.testing.assert_allclose(display_image(db), display_image(da), atol=1e-9)
    assert seen == COMPRESSED


def test_read_dicom_round_trip_displays_monochrome1_and_compressed_like_plain(
    twin_roots: tuple[Path, Path],
) -> None:
    from mimicry.dicom import read_dicom

    plain, fancy = twin_roots
    for rel in read_sheet(plain)["path"]:
        xa, xb = read_dicom(plain / rel), read_dicom(fancy / rel)
        assert xa.meta.modality == "DX"
        assert xb.meta.photometric_interpretation == "MONOCHROME1"
        np.testing.assert_allclose(xb.pixels, xa.pixels, atol=1e-6)
        assert 0.2 < float(xa.pixels.mean()) < 0.8  # the window displays the film, not a blank frame


def test_render_case_matches_written_pixels(twin_roots: tuple[Path, Path]) -> None:
    plain, _ = twin_roots
    config = PhantomConfig(n=8, size=64, seed=5, monochrome1_share=0.0, compressed_share=0.0)
    case = render_case(config, 3)
    ds = pydicom.dcmread(plain / case.plan.path)
    np.testing.assert_array_equal(ds.pixel_array, case.film.pixels)


# ---------------------------------------------------------------------------------- anatomy, findings


def boxes_of(root: Path) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    df = pd.read_csv(root / "bounding_boxes.csv", dtype={"dicom_id": str})
    out: dict[str, dict[str, tuple[float, float, float, float]]] = {}
    for r in df.itertuples():
        out.setdefault(r.dicom_id, {})[r.bbox_name] = (r.x1, r.x2, r.y1, r.y2)
    return out


def test_bounding_boxes_match_masks_and_radiological_convention(root: Path, sheet: pd.DataFrame) -> None:
    text = (root / "bounding_boxes.csv").read_text().splitlines()[1]
    assert re.fullmatch(r"[0-9a-f-]+,[a-z ]+,\d+\.0,\d+\.0,\d+\.0,\d+\.0", text)
    boxes = boxes_of(root)
    for did in sheet["dicom_id"]:
        b = boxes[did]
        assert set(b) == EGD_BOX_NAMES
        for x1, x2, y1, y2 in b.values():
            assert 0 <= x1 <= x2 <= SIZE - 1
            assert 0 <= y1 <= y2 <= SIZE - 1
        seg = root / "audio_segmentation_transcripts" / did
        for side in ("left", "right"):
            ys, xs = np.nonzero(png(seg / f"{side}_lung.png"))
            assert b[f"{side} lung"] == (xs.min(), xs.max(), ys.min(), ys.max())
        # Patient's left lung on the image right; heart mostly to the image right.
        assert b["left lung"][0] > SIZE / 2 > b["right lung"][1]
        hx1, hx2 = b["cardiac silhouette"][:2]
        mid = (b["right lung"][1] + b["left lung"][0]) / 2
        assert hx2 - mid > mid - hx1
        med = png(seg / "mediastinum.png")
        assert not (med & png(seg / "left_lung.png")).any()


def test_cardiothoracic_ratio_separates_chf(root: Path, sheet: pd.DataFrame) -> None:
    boxes = boxes_of(root)
    for did, label in zip(sheet["dicom_id"], labels_of(sheet), strict=True):
        b = boxes[did]
        heart = b["cardiac silhouette"][1] - b["cardiac silhouette"][0] + 1
        thorax = b["left lung"][1] - b["right lung"][0] + 1
        ctr = heart / thorax
        if label == "CHF":
            assert ctr > 0.5, (label, ctr)
        else:
            assert ctr < 0.5, (label, ctr)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_cardiothoracic_ratio_holds_at_small_sizes(size: int) -> None:
    for i in range(40):
        chf = build_anatomy(np.random.default_rng(i), size, "CHF")
        normal = build_anatomy(np.random.default_rng(1000 + i), size, "Normal")
        assert chf.ctr() > 0.5
        assert normal.ctr() < 0.5


def test_finding_masks_by_class(root: Path, sheet: pd.DataFrame) -> None:
    for did, label in zip(sheet["dicom_id"], labels_of(sheet), strict=True):
        finding = png(root / "masks" / did / "finding.png")
        seg = root / "audio_segmentation_transcripts" / did
        lungs = png(seg / "left_lung.png") | png(seg / "right_lung.png")
        if label == "Normal":
            assert not finding.any()
        else:
            assert finding.sum() >= 10
            assert not (finding & ~lungs).any()


def test_pneumonia_opacity_is_drawn_where_the_mask_is(twin_roots: tuple[Path, Path]) -> None:
    config = PhantomConfig(n=30, size=96, seed=2)
    plans = [p for p in plan_cases(config) if p.label == "pneumonia"][:4]
    assert plans
    for plan in plans:
        film = render_film(plan, config)
        lungs = film.anatomy.lungs()
        lab, _ = ndimage.label(film.finding)
        for k in range(1, lab.max() + 1):
            comp = lab == k
            ring = (
                ndimage.binary_dilation(comp, iterations=6)
                & ~ndimage.binary_dilation(comp, iterations=2)
                & lungs
            )
            assert film.pixels[comp].mean() > film.pixels[ring].mean() + 100


def test_marker_is_bright_and_clear_of_the_lungs(root: Path, sheet: pd.DataFrame) -> None:
    for rec in sheet.itertuples():
        x1, x2, y1, y2 = rec.marker_x1, rec.marker_x2, rec.marker_y1, rec.marker_y2
        seg = root / "audio_segmentation_transcripts" / rec.dicom_id
        lungs = png(seg / "left_lung.png") | png(seg / "right_lung.png")
        assert not lungs[y1 : y2 + 1, x1 : x2 + 1].any()
        ds = pydicom.dcmread(root / rec.path)
        shown = display_image(ds)
        assert shown[y1 : y2 + 1, x1 : x2 + 1].max() == pytest.approx(1.0)
        corner = {"site_a": (True, True), "site_b": (True, False), "site_c": (False, True)}[rec.site]
        assert (y2 < SIZE / 2) == corner[0]
        assert (x2 < SIZE / 2) == corner[1]


def test_nuisance_cues_change_the_pixels() -> None:
    config = PhantomConfig(n=6, size=96, seed=4)
    plan = plan_cases(config)[0]
    off = {"border": False, "collimation": False, "texture": False}
    base = render_film(plan.__class__(**{**plan.__dict__, "nuisance": off}), config).pixels.astype(float)
    border = render_film(plan.__class__(**{**plan.__dict__, "nuisance": {**off, "border": True}}), config)
    frame = np.ones((96, 96), bool)
    frame[2:-2, 2:-2] = False
    assert border.pixels[frame].mean() > base[frame].mean() + 200
    coll = render_film(plan.__class__(**{**plan.__dict__, "nuisance": {**off, "collimation": True}}), config)
    assert coll.pixels[:, :2].mean() > base[:, :2].mean() + 500
    tex = render_film(plan.__class__(**{**plan.__dict__, "nuisance": {**off, "texture": True}}), config)
    spectrum = np.abs(np.fft.rfft((tex.pixels.astype(float) - base).mean(axis=0)))
    assert spectrum[20:].max() > 5 * np.median(spectrum[1:])


# ------------------------------------------------------------------------------------------- gaze


def test_fixations_look_at_anatomy_and_findings_never_the_marker(root: Path, sheet: pd.DataFrame) -> None:
    fix = pd.read_csv(root / "fixations.csv", dtype={"DICOM_ID": str})
    assert set(fix["DICOM_ID"]) == set(sheet["dicom_id"])
    off = (fix["X_ORIGINAL"] == -1) & (fix["Y_ORIGINAL"] == -1)
    assert off.any()
    inside = total = 0
    on_finding = in_lung_elsewhere = finding_px = lung_px = 0
    for rec, label in zip(sheet.itertuples(), labels_of(sheet), strict=True):
        f = fix[(fix["DICOM_ID"] == rec.dicom_id) & ~off]
        assert 20 <= len(f) <= 80
        x, y = f["X_ORIGINAL"].to_numpy(), f["Y_ORIGINAL"].to_numpy()
        assert ((x >= 0) & (x < SIZE) & (y >= 0) & (y < SIZE)).all()
        in_marker = (x >= rec.marker_x1) & (x <= rec.marker_x2) & (y >= rec.marker_y1) & (y <= rec.marker_y2)
        assert not in_marker.any()
        seg = root / "audio_segmentation_transcripts" / rec.dicom_id
        lungs = png(seg / "left_lung.png") | png(seg / "right_lung.png")
        anatomy = lungs | png(seg / "mediastinum.png")
        inside += int(ndimage.binary_dilation(anatomy, iterations=2)[y, x].sum())
        total += len(x)
        if label == "pneumonia":
            finding = png(root / "masks" / rec.dicom_id / "finding.png")
            on_finding += int(finding[y, x].sum())
            in_lung_elsewhere += int((lungs & ~finding)[y, x].sum())
            finding_px += int(finding.sum())
            lung_px += int((lungs & ~finding).sum())
    assert inside / total >= 0.85
    assert on_finding / finding_px > 3 * in_lung_elsewhere / lung_px  # fixations per pixel


def test_fixation_columns_are_consistent(root: Path, sheet: pd.DataFrame) -> None:
    fix = pd.read_csv(root / "fixations.csv", dtype={"DICOM_ID": str})
    pads = sheet.set_index("dicom_id")[
        ["image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad"]
    ]
    f = fix.join(pads, on="DICOM_ID")
    on = f["X_ORIGINAL"] >= 0
    dw = 1920 - f["image_left_pad"] - f["image_right_pad"]
    dh = 1080 - f["image_top_pad"] - f["image_bottom_pad"]
    x = np.floor((f["FPOGX"] * 1920 - f["image_left_pad"]) * SIZE / dw)
    y = np.floor((f["FPOGY"] * 1080 - f["image_top_pad"]) * SIZE / dh)
    np.testing.assert_array_equal(x[on].astype(int), f.loc[on, "X_ORIGINAL"])
    np.testing.assert_array_equal(y[on].astype(int), f.loc[on, "Y_ORIGINAL"])
    assert ((x[~on] < 0) | (x[~on] >= SIZE) | (y[~on] < 0) | (y[~on] >= SIZE)).all()
    np.testing.assert_allclose(f["Time (in secs)"], f["FPOGS"] + f["FPOGD"], atol=2e-5)
    assert (f["FPOGD"] > 0.05).all()
    assert (f["FPOGV"] == 1).all()
    for _, g in f.groupby("DICOM_ID"):
        assert (np.diff(g["FPOGS"]) > 0).all()
        assert list(g["FPOGID"]) == list(range(1, len(g) + 1))
        sx, sy = g["FPOGX"].to_numpy() * 1920, g["FPOGY"].to_numpy() * 1080
        np.testing.assert_allclose(
            g["SACCADE_MAG"].to_numpy()[1:], np.hypot(np.diff(sx), np.diff(sy)), atol=1e-4
        )


# ---------------------------------------------------------------------------------------- SIIM / RSNA


def test_siim_rle_and_rsna_boxes_match_the_finding_masks(root: Path, sheet: pd.DataFrame) -> None:
    rle_lines = (root / "train-rle.csv").read_text().splitlines()[1:]
    rle: dict[str, list[str]] = {}
    for line in rle_lines:
        image_id, enc = line.split(", ", 1)
        rle.setdefault(image_id, []).append(enc)
    rsna = pd.read_csv(root / "stage_2_train_labels.csv", dtype={"patientId": str})
    assert set(rle) == set(sheet["dicom_id"]) == set(rsna["patientId"])
    for did, label in zip(sheet["dicom_id"], labels_of(sheet), strict=True):
        finding = png(root / "masks" / did / "finding.png")
        decoded = [siim_decode(e, (SIZE, SIZE)) for e in rle[did]]
        np.testing.assert_array_equal(np.logical_or.reduce(decoded), finding)
        lab, n = ndimage.label(finding)
        rows = rsna[rsna["patientId"] == did]
        if label == "Normal":
            assert rle[did] == ["-1"]
        else:
            assert len(rle[did]) == n  # one row per connected component
        if label == "pneumonia":
            assert (rows["Target"] == 1).all()
            assert len(rows) == n
            got = sorted((int(r.x), int(r.y), int(r.width), int(r.height)) for r in rows.itertuples())
            want = []
            for k in range(1, n + 1):
                ys, xs = np.nonzero(lab == k)
                want.append((xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
            assert got == sorted(want)
        else:
            assert len(rows) == 1
            assert int(rows["Target"].iloc[0]) == 0
            assert rows["x"].isna().all()


# ---------------------------------------------------------------------------------------- shortcut


def test_shortcut_and_nuisance_rates_follow_the_configuration() -> None:
    config = PhantomConfig(n=4000, seed=1)
    plans = plan_cases(config)
    train = [p for p in plans if p.split == "train"]
    test = [p for p in plans if p.split == "test"]
    assert len(test) / len(plans) == pytest.approx(0.2, abs=0.005)
    assert not {p.patient_id for p in train} & {p.patient_id for p in test}
    assert np.mean([p.shortcut_agrees for p in train]) == pytest.approx(0.9, abs=0.025)
    assert np.mean([p.shortcut_agrees for p in test]) == pytest.approx(0.05, abs=0.03)
    assert np.mean([p.site == REVERSED_SITE_OF_CLASS[p.label] for p in test]) == pytest.approx(0.9, abs=0.04)
    for cue, cls in (("border", "CHF"), ("collimation", "pneumonia"), ("texture", "Normal")):
        rate = config.nuisance_corr(cue)
        agree_train = np.mean([p.nuisance[cue] == (p.label == cls) for p in train])
        agree_test = np.mean([p.nuisance[cue] == (p.label == cls) for p in test])
        assert agree_train == pytest.approx(rate, abs=0.035)
        assert agree_test == pytest.approx(1 - rate, abs=0.06)
    assert {p.rates["shortcut_corr"] for p in train} == {0.9}
    assert {p.shortcut_mode for p in test} == {"reversed"}


def test_decorrelated_test_split() -> None:
    config = PhantomConfig(n=3000, seed=2, test_shortcut="decorrelated", shortcut_corr=0.8)
    plans = plan_cases(config)
    train = [p for p in plans if p.split == "train"]
    test = [p for p in plans if p.split == "test"]
    assert np.mean([p.shortcut_agrees for p in train]) == pytest.approx(0.8, abs=0.03)
    assert np.mean([p.shortcut_agrees for p in test]) == pytest.approx(1 / 3, abs=0.06)
    assert all(p.rates["shortcut_corr"] == pytest.approx(1 / 3) for p in test)
    assert {p.shortcut_mode for p in test} == {"decorrelated"}


def test_master_sheet_records_rates_and_sites(sheet: pd.DataFrame) -> None:
    labels = labels_of(sheet)
    train = sheet["split"] == "train"
    assert set(sheet["split"]) == {"train", "test"}
    assert (sheet.loc[train, "shortcut_corr"] == 0.9).all()
    np.testing.assert_allclose(sheet.loc[~train, "shortcut_corr"], 0.05)
    assert (sheet.loc[train, "shortcut_mode"] == "correlated").all()
    assert (sheet.loc[~train, "shortcut_mode"] == "reversed").all()
    assert (sheet.loc[train, "nuisance_texture_corr"] == 0.7).all()
    np.testing.assert_allclose(sheet.loc[~train, "nuisance_texture_corr"], 0.3)
    assert set(sheet["site"]) <= {"site_a", "site_b", "site_c"}
    canonical = labels.map(SITE_OF_CLASS)
    assert (sheet.loc[train, "site"] == canonical[train]).mean() > 0.6


# ------------------------------------------------------------------------------------ determinism, I/O


def test_same_seed_gives_identical_bytes_and_pixels_whatever_the_workers(tmp_path: Path) -> None:
    config = PhantomConfig(n=8, size=64, seed=9, compressed_share=0.5, monochrome1_share=0.5)
    generate_phantom_dataset(tmp_path / "a", config)
    generate_phantom_dataset(tmp_path / "b", config, workers=2)
    for name in (
        "master_sheet.csv",
        "fixations.csv",
        "bounding_boxes.csv",
        "train-rle.csv",
        "stage_2_train_labels.csv",
        "phantom.json",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for dcm in (tmp_path / "a").rglob("*.dcm"):
        other = tmp_path / "b" / dcm.relative_to(tmp_path / "a")
        np.testing.assert_array_equal(pydicom.dcmread(dcm).pixel_array, pydicom.dcmread(other).pixel_array)
        # the whole file, UIDs included: a seed reproduces the dataset byte for byte
        assert dcm.read_bytes() == other.read_bytes(), dcm.name
    generate_phantom_dataset(
        tmp_path / "c", PhantomConfig(n=8, size=64, seed=10, compressed_share=0.5, monochrome1_share=0.5)
    )
    assert (tmp_path / "a" / "master_sheet.csv").read_bytes() != (
        tmp_path / "c" / "master_sheet.csv"
    ).read_bytes()


def test_cases_do_not_depend_on_generation_order() -> None:
    config = PhantomConfig(n=6, size=64, seed=8)
    forward = [render_case(config, i).film.pixels for i in range(6)]
    backward = [render_case(config, i).film.pixels for i in reversed(range(6))][::-1]
    for a, b in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(a, b)
    a, b = case_rng(8, 2, 0).random(4), case_rng(8, 2, 1).random(4)
    assert not np.array_equal(a, b)


def test_refuses_a_non_empty_directory_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    config = PhantomConfig(n=3, size=48, seed=1)
    with pytest.raises(OutputDirNotEmptyError):
        generate_phantom_dataset(out, config)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    generate_phantom_dataset(out, config, overwrite=True)
    generate_phantom_dataset(out, PhantomConfig(n=2, size=48, seed=2), overwrite=True)
    assert (out / "keep.txt").read_text() == "user file"
    assert len(read_sheet(out)) == 2
    assert len(list((out / "files").rglob("*.dcm"))) == 2  # the first run's files are gone


def test_interrupted_run_is_detected(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    summary = generate_phantom_dataset(out, PhantomConfig(n=4, size=48, seed=1))
    assert summarize_dataset(out)["class_counts"] == summary["class_counts"]
    (out / "phantom.json").unlink()
    with pytest.raises(IncompleteDatasetError):
        summarize_dataset(out)


def test_config_validation() -> None:
    with pytest.raises(PhantomConfigError):
        PhantomConfig(shortcut_corr=1.5)
    with pytest.raises(PhantomConfigError):
        PhantomConfig(test_shortcut="flipped")  # type: ignore[arg-type]
    with pytest.raises(PhantomConfigError):
        PhantomConfig(size=16)
    with pytest.raises(PhantomConfigError):
        PhantomConfig(test_fraction=1.0)
