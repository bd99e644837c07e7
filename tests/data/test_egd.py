"""EGD reader (mimicry.data.egd) on tiny hand-made roots in the real MIMIC-CXR-EGD formats (see conftest)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from mimicry.data import (
    ANATOMY_NAMES,
    FIXATION_COLUMNS,
    MASTER_SHEET_COLUMNS,
    PHANTOM_EXTRA_COLUMNS,
    DatasetError,
    DatasetFormatError,
    EgdDataset,
    MissingColumnsError,
    MissingDatasetFileError,
    parse_anchor_age,
    patient_split,
)

from .conftest import (
    PHANTOM_EXTRAS,
    REAL_FIXATION_COLUMNS,
    REAL_MASTER_COLUMNS,
    CaseSpec,
    H,
    W,
    build_egd_root,
    rect,
)

ID0 = "24c7496c-d7635dfe-b8e0b87f-d818affc-78ff7cf4"
ID1 = "0a1b2c3d-4e5f6071-8293a4b5-c6d7e8f9-01234567"
ID2 = "deadbeef-01234567-89abcdef-fedcba98-76543210"
ID3 = "11111111-22222222-33333333-44444444-55555555"


def counts_case0() -> np.ndarray:
    """Hand-built count map of case 0: valid fixations (3,2), (7,10) twice, (19,15), (5,1)."""
    c = np.zeros((H, W))
    c[2, 3] = 1
    c[10, 7] = 2  # (7, 10) and (7.4, 10.4) rounded
    c[15, 19] = 1
    c[1, 5] = 1  # (4.5, 0.5) rounded half up
    return c


def reference_heatmap(counts: np.ndarray, sigma: float) -> np.ndarray:
    ref = gaussian_filter(counts, sigma=sigma, mode="constant", cval=0.0, truncate=4.0)
    return ref / ref.sum()


# ------------------------------------------------------------------------------------------- metadata


def test_column_constants_match_the_real_layout() -> None:
    assert list(MASTER_SHEET_COLUMNS) == REAL_MASTER_COLUMNS
    assert len(MASTER_SHEET_COLUMNS) == 59
    assert list(FIXATION_COLUMNS) == REAL_FIXATION_COLUMNS
    assert len(FIXATION_COLUMNS) == 37
    assert list(PHANTOM_EXTRA_COLUMNS) == PHANTOM_EXTRAS


def test_case_metadata(egd_root: Path) -> None:
    ds = EgdDataset(egd_root)
    assert len(ds) == 4
    cases = ds.cases
    assert [c.dicom_id for c in cases] == [ID0, ID1, ID2, ID3]
    assert [c.patient_id for c in cases] == ["15628804", "15628804", "17654321", "12345678"]
    assert [c.study_id for c in cases] == ["58573295", "51234567", "59876543", "55555555"]
    np.testing.assert_array_equal(
        np.stack([c.label for c in cases]),
        np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=np.float32),
    )
    assert cases[0].label.dtype == np.float32
    assert [c.label_index for c in cases] == [1, 0, 2, 2]
    assert [c.gender for c in cases] == ["F", "F", "M", "F"]
    assert [(c.age, c.age_bucket) for c in cases] == [
        (None, "20-30"),
        (None, "20-30"),
        (47, "40-50"),
        (None, "60-70"),
    ]
    assert all(c.split is None and c.site is None and c.marker_box is None for c in cases)
    assert cases[0].relative_path == f"files/p15/p15628804/s58573295/{ID0}.dcm"
    assert cases[0].path == egd_root / "files" / "p15" / "p15628804" / "s58573295" / f"{ID0}.dcm"
    assert ds.class_counts() == {"Normal": 1, "CHF": 1, "pneumonia": 2}
    assert ds.frame["dicom_id"].tolist() == [ID0, ID1, ID2, ID3]
    # the quoted comma in dx1 survives CSV parsing
    assert ds.frame.loc[0, "dx1"] == "Heart failure, unspecified"


def test_class_names_select_and_order_label_columns(egd_root: Path) -> None:
    ds = EgdDataset(egd_root, class_names=("pneumonia", "Normal", "CHF"))
    np.testing.assert_array_equal(ds.cases[0].label, np.array([0, 0, 1], dtype=np.float32))
    assert ds.class_counts() == {"pneumonia": 2, "Normal": 1, "CHF": 1}


def test_raw_fixations_grouped_by_dicom_in_file_order(egd_root: Path) -> None:
    ds = EgdDataset(egd_root)
    # rows of the four images are interleaved in fixations.csv; grouping keeps each image's order
    expected0 = np.array(
        [
            [3, 2, 0.25],
            [-1, -1, 0.10],
            [7, 10, 0.50],
            [7.4, 10.4, 0.20],
            [19, 15, 0.30],
            [20, 5, 0.10],
            [4.5, 0.5, 0.15],
        ]
    )
    np.testing.assert_array_equal(ds.raw_fixations(0), expected0)
    np.testing.assert_array_equal(ds.raw_fixations(1), np.array([[10, 8, 0.40], [-1, -1, 0.20]]))
    np.testing.assert_array_equal(ds.raw_fixations(-1), np.array([[0, 0, 0.30], [19, 0, 0.30]]))


def test_boxes_exact(egd_root: Path) -> None:
    ds = EgdDataset(egd_root)
    assert ds.boxes(0) == {
        "left lung": (11.0, 17.0, 2.0, 12.0),
        "right lung": (2.0, 8.0, 2.0, 12.0),
        "cardiac silhouette": (7.0, 13.0, 8.0, 13.0),
    }
    assert ds.boxes(1) == {"trachea": (9.0, 10.0, 0.0, 5.0)}
    assert ds.boxes(2) == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("20 - 30", (None, "20-30")), ("80 - 90", (None, "80-90")), ("47", (47, "40-50")), ("30", (30, "30-40")),
     ("", (None, None)), (None, (None, None)), ("> 89", (None, ">89"))],
)  # fmt: skip
def test_parse_anchor_age(value: object, expected: tuple[int | None, str | None]) -> None:
    assert parse_anchor_age(value) == expected


def test_heatmap_sigma_resolution(egd_root: Path, phantom_like_root: Path) -> None:
    assert EgdDataset(egd_root).heatmap_sigma_px == 150.0  # no phantom.json: the EGD paper's native sigma
    assert EgdDataset(phantom_like_root).heatmap_sigma_px == 0.8  # phantom.json's heatmap_sigma_px
    assert EgdDataset(phantom_like_root, heatmap_sigma_px=2.5).heatmap_sigma_px == 2.5  # explicit wins
    with pytest.raises(ValueError, match="heatmap_sigma_px"):
        EgdDataset(egd_root, heatmap_sigma_px=0.0)


def test_phantom_extras_parsed(phantom_like_root: Path) -> None:
    ds = EgdDataset(phantom_like_root)
    assert [c.split for c in ds.cases] == ["train", "train", "test", "train"]
    assert [c.site for c in ds.cases] == ["site_b", "site_a", "site_c", "site_c"]
    assert ds.cases[0].marker_box == (1.0, 3.0, 12.0, 14.0)
    assert ds.cases[3].marker_box == (17.0, 19.0, 14.0, 15.0)
    assert [c.dicom_id for c in ds.split("train").cases] == [ID0, ID1, ID3]
    assert [c.dicom_id for c in ds.split("test").cases] == [ID2]
    assert [c.dicom_id for c in EgdDataset(phantom_like_root, split="test").cases] == [ID2]
    assert ds.split("train").class_counts() == {"Normal": 1, "CHF": 1, "pneumonia": 1}
    assert len(ds) == 4  # split() returns a new dataset


# ------------------------------------------------------------------------------------------- samples


def test_sample_case0_exact(egd_root: Path) -> None:
    ds = EgdDataset(egd_root, heatmap_sigma_px=1.5)
    s = ds[0]
    assert s.info.dicom_id == ID0
    # image: native 16 x 20, float32 in [0, 1], monotone in the stored values (which increase in C order)
    assert s.image.shape == (H, W)
    assert s.image.dtype == np.float32
    assert 0.0 <= s.image.min() < s.image.max() <= 1.0
    assert (np.diff(s.image.ravel()) >= 0).all()
    # fixations after filtering (-1 row and x == W dropped), rounded, file order
    np.testing.assert_array_equal(
        s.fixations, np.array([[3, 2, 0.25], [7, 10, 0.50], [7, 10, 0.20], [19, 15, 0.30], [5, 1, 0.15]])
    )
    assert s.has_fixations
    expected_map = np.zeros((H, W), dtype=bool)
    expected_map[[2, 10, 15, 1], [3, 7, 19, 5]] = True
    np.testing.assert_array_equal(s.fixation_map, expected_map)
    assert s.heatmap.dtype == np.float32
    np.testing.assert_allclose(s.heatmap, reference_heatmap(counts_case0(), 1.5), rtol=1e-5, atol=1e-9)
    assert float(s.heatmap.sum()) == pytest.approx(1.0, abs=1e-5)
    # anatomy masks exact; patient's left lung on the image's right
    assert set(s.anatomy) == set(ANATOMY_NAMES)
    np.testing.assert_array_equal(s.anatomy["left_lung"], rect(2, 12, 11, 17))
    np.testing.assert_array_equal(s.anatomy["right_lung"], rect(2, 12, 2, 8))
    np.testing.assert_array_equal(s.anatomy["mediastinum"], rect(1, 13, 9, 10))
    np.testing.assert_array_equal(s.anatomy["aortic_knob"], rect(1, 2, 10, 11))
    assert s.anatomy["left_lung"].dtype == bool
    assert s.boxes["cardiac silhouette"] == (7.0, 13.0, 8.0, 13.0)
    assert s.finding_mask is None  # real-EGD-like root: no masks/ directory
    np.testing.assert_array_equal(s.label, np.array([0, 1, 0], dtype=np.float32))


def test_default_sigma_heatmap_matches_scipy_at_150px(egd_root: Path) -> None:
    s = EgdDataset(egd_root)[0]
    np.testing.assert_allclose(s.heatmap, reference_heatmap(counts_case0(), 150.0), rtol=1e-5)


def test_sample_without_fixations_on_the_image(egd_root: Path) -> None:
    s = EgdDataset(egd_root, heatmap_sigma_px=1.5)[2]
    assert not s.has_fixations
    assert s.fixations.shape == (0, 3)
    np.testing.assert_array_equal(s.heatmap, np.zeros((H, W), dtype=np.float32))
    assert not np.isnan(s.heatmap).any()
    assert not s.fixation_map.any()
    assert s.anatomy == {}
    assert s.boxes == {}


def test_partial_anatomy_and_corner_fixations(egd_root: Path) -> None:
    ds = EgdDataset(egd_root, heatmap_sigma_px=1.5)
    s1 = ds[1]
    assert set(s1.anatomy) == {"left_lung", "right_lung"}  # missing PNGs are absent, not empty
    np.testing.assert_array_equal(s1.anatomy["right_lung"], rect(3, 11, 3, 7))
    s3 = ds[3]
    counts = np.zeros((H, W))
    counts[0, 0] = counts[0, 19] = 1
    np.testing.assert_allclose(s3.heatmap, reference_heatmap(counts, 1.5), rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(s3.fixation_map, counts > 0)


def test_phantom_finding_masks_and_sigma(phantom_like_root: Path) -> None:
    ds = EgdDataset(phantom_like_root)
    s2, s3, s0 = ds[2], ds[3], ds[0]
    np.testing.assert_array_equal(s2.finding_mask, rect(3, 6, 12, 15))
    np.testing.assert_array_equal(s3.finding_mask, rect(9, 12, 2, 5) | rect(1, 2, 14, 15))
    np.testing.assert_array_equal(s0.finding_mask, np.zeros((H, W), dtype=bool))
    np.testing.assert_allclose(s0.heatmap, reference_heatmap(counts_case0(), 0.8), rtol=1e-5, atol=1e-9)


def test_iteration_len_and_index_errors(egd_root: Path) -> None:
    ds = EgdDataset(egd_root, heatmap_sigma_px=1.5)
    ids = [s.info.dicom_id for s in ds]
    assert ids == [ID0, ID1, ID2, ID3]
    assert ds[-4].info.dicom_id == ID0
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(IndexError):
        ds[-5]


def test_images_root_separate_from_root(tmp_path: Path, make_egd_root: Callable[..., Path]) -> None:
    images = tmp_path / "mimic-cxr"
    root = make_egd_root("egd-only", images_root=images)
    assert not (root / "files").exists()
    s = EgdDataset(root, images_root=images, heatmap_sigma_px=1.5)[0]
    assert s.image.shape == (H, W)
    assert s.info.path == images / f"files/p15/p15628804/s58573295/{ID0}.dcm"
    np.testing.assert_array_equal(s.anatomy["left_lung"], rect(2, 12, 11, 17))  # masks still from root
    # Without images_root the DICOMs are looked up under root: typed error, no identifiers in the message.
    with pytest.raises(MissingDatasetFileError) as info:
        EgdDataset(root)[0]
    message = str(info.value)
    assert "case #0" in message
    for secret in (ID0, "15628804", "58573295"):
        assert secret not in message
    assert info.value.path == root / f"files/p15/p15628804/s58573295/{ID0}.dcm"


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("dropped", [["CHF"], ["path", "patient_id"], ["dicom_id"]])
def test_missing_master_columns_are_all_named(make_egd_root: Callable[..., Path], dropped: list[str]) -> None:
    root = make_egd_root(drop_master_columns=dropped)
    with pytest.raises(MissingColumnsError) as info:
        EgdDataset(root)
    assert info.value.missing == dropped
    assert isinstance(info.value, DatasetFormatError)
    assert info.value.path == root / "master_sheet.csv"
    for col in dropped:
        assert repr(col) in str(info.value)


def test_missing_fixation_columns_are_named(make_egd_root: Callable[..., Path]) -> None:
    root = make_egd_root(drop_fixation_columns=["X_ORIGINAL", "FPOGD"])
    with pytest.raises(MissingColumnsError, match=r"fixations\.csv") as info:
        EgdDataset(root)
    assert info.value.missing == ["X_ORIGINAL", "FPOGD"]


def test_missing_bounding_box_column_is_named(egd_root: Path) -> None:
    path = egd_root / "bounding_boxes.csv"
    pd.read_csv(path).drop(columns=["y2"]).to_csv(path, index=False)
    with pytest.raises(MissingColumnsError, match="'y2'"):
        EgdDataset(egd_root)


@pytest.mark.parametrize("name", ["master_sheet.csv", "fixations.csv", "bounding_boxes.csv"])
def test_missing_files_are_typed(egd_root: Path, name: str) -> None:
    (egd_root / name).unlink()
    with pytest.raises(MissingDatasetFileError, match=name.split(".")[0]) as info:
        EgdDataset(egd_root)
    assert isinstance(info.value, DatasetError)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.path == egd_root / name


def test_missing_root_is_typed(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetFileError):
        EgdDataset(tmp_path / "nowhere")


def test_label_not_one_hot_is_a_format_error(egd_root: Path) -> None:
    path = egd_root / "master_sheet.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[1, "CHF"] = "1"  # row 2 is now Normal and CHF
    df.to_csv(path, index=False)
    with pytest.raises(DatasetFormatError, match="not one-hot in data row") as info:
        EgdDataset(egd_root)
    assert ID1 not in str(info.value)


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("path", "../../etc/x.dcm", "relative to the images root"),
        ("path", "/abs/x.dcm", "relative to the images root"),
        ("dicom_id", ID0, "duplicate dicom_id"),
        ("split", "", "empty 'split'"),
    ],
)
def test_bad_master_sheet_values(phantom_like_root: Path, column: str, value: str, match: str) -> None:
    path = phantom_like_root / "master_sheet.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[2, column] = value
    df.to_csv(path, index=False)
    with pytest.raises(DatasetFormatError, match=match) as info:
        EgdDataset(phantom_like_root)
    assert info.value.column == column
    assert "data row(s) 3" in str(info.value)


def test_non_numeric_fixation_coordinate_names_the_column(egd_root: Path) -> None:
    path = egd_root / "fixations.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[0, "Y_ORIGINAL"] = "abc"
    df.to_csv(path, index=False)
    with pytest.raises(DatasetFormatError, match="Y_ORIGINAL") as info:
        EgdDataset(egd_root)
    assert info.value.column == "Y_ORIGINAL"


def test_anatomy_mask_of_the_wrong_size_is_a_format_error(egd_root: Path) -> None:
    from PIL import Image

    png = egd_root / "audio_segmentation_transcripts" / ID0 / "left_lung.png"
    Image.fromarray(np.zeros((H + 1, W), dtype=np.uint8), mode="L").save(png)
    with pytest.raises(DatasetFormatError, match="anatomy mask 'left_lung' of case #0"):
        EgdDataset(egd_root)[0]


# ------------------------------------------------------------------------------------------- splits


def _many_patient_cases() -> list[CaseSpec]:
    """21 images of 9 patients (1 to 4 studies each), labels cycling."""
    cases = []
    studies_per_patient = [1, 2, 3, 4, 1, 2, 3, 4, 1]
    labels = ["Normal", "CHF", "pneumonia"]
    k = 0
    for p, n_studies in enumerate(studies_per_patient):
        for _ in range(n_studies):
            cases.append(
                CaseSpec(
                    dicom_id=f"{k:08x}-00000000-00000000-00000000-{p:08x}",
                    patient_id=f"1{p:07d}",
                    study_id=f"5{k:07d}",
                    label=labels[k % 3],
                    fixations=[(k % W, k % H, 0.1)],
                )
            )
            k += 1
    return cases


def test_patient_split_has_no_leakage_and_is_deterministic(make_egd_root: Callable[..., Path]) -> None:
    root = make_egd_root("many", cases=_many_patient_cases())
    ds = EgdDataset(root)
    assert len(ds) == 21
    train, test = ds.split("train"), ds.split("test")
    train_p = {c.patient_id for c in train.cases}
    test_p = {c.patient_id for c in test.cases}
    assert train_p.isdisjoint(test_p)
    assert train_p | test_p == {c.patient_id for c in ds.cases}
    assert len(test_p) == 2  # ceil(0.2 * 9 patients)
    assert sorted(c.dicom_id for c in train.cases + test.cases) == sorted(c.dicom_id for c in ds.cases)
    assert {c.split for c in train.cases} == {"train"}
    assert {c.split for c in test.cases} == {"test"}
    # deterministic: a fresh dataset (and the constructor's split=) gives the same assignment
    assert [c.dicom_id for c in EgdDataset(root, split="test").cases] == [c.dicom_id for c in test.cases]
    assert [c.dicom_id for c in EgdDataset(root).split("test").cases] == [c.dicom_id for c in test.cases]
    # a different seed / fraction is honoured
    test_half = EgdDataset(root, test_fraction=0.5).split("test")
    assert len({c.patient_id for c in test_half.cases}) == 5  # ceil(0.5 * 9)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        ds.split("val")


def test_patient_split_function_ignores_row_order_and_keeps_patients_whole() -> None:
    patients = [f"1{p:07d}" for p in range(10) for _ in range(p % 3 + 1)]
    df = pd.DataFrame({"patient_id": patients, "x": range(len(patients))})
    split = patient_split(df, test_fraction=0.3, seed=7)
    assert split.index.equals(df.index)
    assert set(split) == {"train", "test"}
    per_patient = df.assign(split=split).groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    assert df.assign(split=split).query("split == 'test'")["patient_id"].nunique() == 3
    shuffled = df.sample(frac=1.0, random_state=1)
    split_shuffled = patient_split(shuffled, test_fraction=0.3, seed=7)
    pd.testing.assert_series_equal(split_shuffled.loc[df.index], split)
    with pytest.raises(ValueError, match="at least 2"):
        patient_split(df[df.patient_id == patients[0]])
    with pytest.raises(ValueError, match="test_fraction"):
        patient_split(df, test_fraction=1.0)


# ------------------------------------------------------------------------------------------- phantoms


def test_phantom_round_trip(tmp_path: Path) -> None:
    """Generate 12 phantoms with the project's generator and read them all back through the EGD reader."""
    from skimage.measure import label as label_components

    from mimicry.data import rasterise_boxes, read_rsna_boxes, read_siim_masks
    from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset

    size = 64
    root = tmp_path / "phantoms"
    generate_phantom_dataset(root, PhantomConfig(n=12, size=size, seed=3))
    meta = json.loads((root / "phantom.json").read_text(encoding="utf-8"))
    ds = EgdDataset(root)
    assert len(ds) == 12
    assert ds.heatmap_sigma_px == pytest.approx(150.0 * size / 3000.0)
    assert meta["heatmap_sigma_px"] == pytest.approx(ds.heatmap_sigma_px)
    assert sum(ds.class_counts().values()) == 12
    assert {c.split for c in ds.cases} <= {"train", "test"}
    train_p = {c.patient_id for c in ds.split("train").cases}
    assert train_p.isdisjoint({c.patient_id for c in ds.split("test").cases})

    rle_masks = read_siim_masks(root / "train-rle.csv", (size, size))
    rsna = read_rsna_boxes(root / "stage_2_train_labels.csv")
    n_with_fixations = n_lung_pairs = n_boxed = 0
    for s in ds:
        info = s.info
        assert s.image.shape == (size, size)
        assert s.image.dtype == np.float32
        assert s.image.min() >= 0.0
        assert s.image.max() <= 1.0
        if s.has_fixations:
            n_with_fixations += 1
            assert float(s.heatmap.sum()) == pytest.approx(1.0, abs=1e-5)
        else:
            assert float(s.heatmap.sum()) == 0.0
        assert not np.isnan(s.heatmap).any()
        assert set(s.anatomy) <= set(ANATOMY_NAMES)
        if "left_lung" in s.anatomy and "right_lung" in s.anatomy:
            n_lung_pairs += 1
            # radiological convention: the patient's left lung is on the image's right
            assert (
                np.argwhere(s.anatomy["left_lung"])[:, 1].mean()
                > np.argwhere(s.anatomy["right_lung"])[:, 1].mean()
            )
        assert info.site is not None
        assert info.marker_box is not None
        x1, x2, y1, y2 = info.marker_box
        assert 0 <= x1 <= x2 < size
        assert 0 <= y1 <= y2 < size
        # finding mask == SIIM-style RLE decoded with our decoder
        assert s.finding_mask is not None
        np.testing.assert_array_equal(s.finding_mask, rle_masks[info.dicom_id])
        if info.label_index == 0:  # Normal: empty finding mask
            assert not s.finding_mask.any()
        # RSNA-style boxes: one per pneumonia opacity, each the inclusive bounding box of finding pixels
        boxes = rsna[info.dicom_id]
        if boxes:
            n_boxed += 1
            box_mask = rasterise_boxes(boxes, (size, size), source_shape=(size, size))
            assert (s.finding_mask <= box_mask).all()
            for b in boxes:
                inside = s.finding_mask[int(b.y) : int(b.y2) + 1, int(b.x) : int(b.x2) + 1]
                # tight: the box's first/last row and column each touch the finding
                assert inside[0].any()
                assert inside[-1].any()
                assert inside[:, 0].any()
                assert inside[:, -1].any()
            assert len(boxes) <= label_components(s.finding_mask).max()
        elif info.label_index == 2:
            pytest.fail("a pneumonia phantom has no RSNA box")
    assert n_with_fixations > len(ds) // 2
    assert n_lung_pairs > 0
    assert n_boxed > 0


def test_copy_of_root_reads_identically(egd_root: Path, tmp_path: Path) -> None:
    """The reader depends only on the files (no absolute paths baked into the CSVs)."""
    moved = tmp_path / "moved"
    shutil.copytree(egd_root, moved)
    a, b = EgdDataset(egd_root, heatmap_sigma_px=1.5), EgdDataset(moved, heatmap_sigma_px=1.5)
    np.testing.assert_array_equal(a[0].heatmap, b[0].heatmap)
    np.testing.assert_array_equal(a[0].image, b[0].image)
    assert b.cases[0].path.is_relative_to(moved)


def test_build_helper_round_trip_of_an_ad_hoc_case(tmp_path: Path) -> None:
    spec = CaseSpec(
        dicom_id="abcdef01-23456789-abcdef01-23456789-abcdef01",
        patient_id="19999999",
        study_id="50000001",
        label="Normal",
        fixations=[(5, 5, 0.2)],
    )
    ds = EgdDataset(build_egd_root(tmp_path / "one", [spec]), heatmap_sigma_px=1.0)
    s = ds[0]
    counts = np.zeros((H, W))
    counts[5, 5] = 1
    np.testing.assert_allclose(s.heatmap, reference_heatmap(counts, 1.0), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        ds.split("train")
