"""RSNA stage_2_train_labels.csv reader and inclusive box rasterisation (mimicry.data.rsna)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimicry.data.masks import (
    DatasetFormatError,
    MissingColumnsError,
    MissingDatasetFileError,
    box_mask,
    read_mask_png,
    write_mask_png,
)
from mimicry.data.rsna import Box, rasterise_boxes, read_rsna_boxes

LABELS = (
    "patientId,x,y,width,height,Target\n"
    "0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0\n"
    "00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1\n"
    "00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1\n"
    "00704310-78a8-4b38-8475-49f4573b2dbb,2.0,1.0,3.0,2.0,1\n"
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stage_2_train_labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_read_boxes_groups_rows_and_target_zero_is_empty(tmp_path: Path) -> None:
    boxes = read_rsna_boxes(_write(tmp_path, LABELS))
    assert boxes == {
        "0004cfab-14fd-4e49-80ba-63a80b6bddd6": [],
        "00436515-870c-4b36-a041-de91049b9ab4": [
            Box(264.0, 152.0, 213.0, 379.0),
            Box(562.0, 152.0, 256.0, 453.0),
        ],
        "00704310-78a8-4b38-8475-49f4573b2dbb": [Box(2.0, 1.0, 3.0, 2.0)],
    }


def test_inclusive_box_covers_width_by_height_pixels() -> None:
    # x=2, y=1, width=3, height=2 covers columns 2, 3, 4 (= x .. x + width - 1) and rows 1, 2.
    box = Box(x=2, y=1, width=3, height=2)
    assert (box.x2, box.y2) == (4.0, 2.0)
    assert box.as_x1x2y1y2() == (2.0, 4.0, 1.0, 2.0)
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(rasterise_boxes([box], (4, 6), source_shape=(4, 6)), expected)


def _covered(mask: np.ndarray) -> tuple[list[int], list[int]]:
    rows = np.flatnonzero(mask.any(axis=1)).tolist()
    cols = np.flatnonzero(mask.any(axis=0)).tolist()
    assert mask.sum() == len(rows) * len(cols)  # a single box rasterises to a full rectangle
    return rows, cols


def test_scaling_1024_to_256_edge_on_a_pixel_boundary() -> None:
    # Factor 1/4: target pixel j covers source [4j, 4j + 4). Box x=4, width=4 covers source columns 4..7,
    # exactly target column 1; y=8, height=4 covers source rows 8..11 = target row 2.
    assert _covered(rasterise_boxes([Box(4, 8, 4, 4)], (256, 256))) == ([2], [1])
    # One more source pixel (columns 4..8, rows 8..12) reaches into target column 2 / row 3.
    assert _covered(rasterise_boxes([Box(4, 8, 5, 5)], (256, 256))) == ([2, 3], [1, 2])
    # A single source pixel inside a target pixel: x=3 -> [0.75, 1.0) -> target column 0 only.
    assert _covered(rasterise_boxes([Box(3, 1022, 1, 2)], (256, 256))) == ([255], [0])
    # The real example box: source columns 264..476 -> [66, 119.25) -> 66..119; rows 152..530 -> 38..132.
    rows, cols = _covered(rasterise_boxes([Box(264.0, 152.0, 213.0, 379.0)], (256, 256)))
    assert (cols[0], cols[-1], rows[0], rows[-1]) == (66, 119, 38, 132)


def test_scaling_to_a_non_divisor_size_is_exact_at_boundaries() -> None:
    # 1024 -> 300: source column 512 starts exactly at target 150, the box [512, 1024) ends at 300.
    assert _covered(rasterise_boxes([Box(512, 0, 512, 1024)], (300, 300)))[1] == list(range(150, 300))
    # Source [0, 512) ends exactly at target 150: column 150 must stay off.
    assert _covered(rasterise_boxes([Box(0, 0, 512, 1)], (300, 300)))[1] == list(range(150))


def test_identity_scale_for_phantom_sized_sources_and_union() -> None:
    mask = rasterise_boxes([Box(0, 0, 2, 1), Box(5, 3, 1, 1)], (4, 6), source_shape=(4, 6))
    expected = np.zeros((4, 6), dtype=bool)
    expected[0, 0:2] = True
    expected[3, 5] = True
    np.testing.assert_array_equal(mask, expected)


def test_boxes_are_clipped_to_the_image_and_empty_list_gives_empty_mask() -> None:
    mask = rasterise_boxes([Box(4, -2, 10, 4)], (4, 6), source_shape=(4, 6))
    expected = np.zeros((4, 6), dtype=bool)
    expected[0:2, 4:6] = True
    np.testing.assert_array_equal(mask, expected)
    assert not rasterise_boxes([], (4, 6)).any()
    assert not box_mask(3, 2, 0, 1, (4, 6)).any()  # x2 < x1: degenerate


def test_missing_columns_are_all_listed(tmp_path: Path) -> None:
    with pytest.raises(MissingColumnsError) as info:
        read_rsna_boxes(_write(tmp_path, "patientId,x,y,w,h,Target\na,,,,,0\n"))
    assert info.value.missing == ["width", "height"]
    assert "width" in str(info.value)
    assert "height" in str(info.value)


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ("secret-id,1,2,,4,1", "width"),
        ("secret-id,1,2,3,4,2", "Target"),
        ("secret-id,one,2,3,4,1", "x"),
        ("secret-id,1,2,0,4,1", "width"),
    ],
)
def test_malformed_rows_name_the_column_not_the_image(tmp_path: Path, row: str, column: str) -> None:
    with pytest.raises(DatasetFormatError) as info:
        read_rsna_boxes(_write(tmp_path, f"patientId,x,y,width,height,Target\n{row}\n"))
    assert info.value.column == column
    assert "secret-id" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetFileError):
        read_rsna_boxes(tmp_path / "absent.csv")


def test_mask_png_round_trip_is_8bit_0_255(tmp_path: Path) -> None:
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:6] = True
    path = tmp_path / "m" / "finding.png"
    write_mask_png(path, mask)
    with Image.open(path) as img:
        assert img.mode == "L"
        assert sorted(np.unique(np.asarray(img)).tolist()) == [0, 255]
    np.testing.assert_array_equal(read_mask_png(path), mask)
