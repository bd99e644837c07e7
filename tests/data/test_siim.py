"""SIIM-ACR train-rle.csv: relative, column-major RLE decoding / encoding (mimicry.data.siim)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mimicry.data import DatasetError
from mimicry.data.masks import MissingColumnsError, MissingDatasetFileError
from mimicry.data.siim import RleError, read_siim_masks, read_siim_rle, rle_decode, rle_encode

# A 5 x 4 mask (H = 5 rows, W = 4 columns). Column-major flat index = col * 5 + row:
#
#   row\col  0 1 2 3        flat indices set: (1,0)->1, (2,0)->2, (4,0)->4, (0,1)->5, (3,3)->18
#     0      . # . .        absolute runs: [1, 3) len 2; [4, 6) len 2 (crosses from column 0 into
#     1      # . . .        column 1); [18, 19) len 1
#     2      # . . .        relative starts: 1 (from 0); 4 - 3 = 1 (from the end of run 1);
#     3      . . . #        18 - 6 = 12 (from the end of run 2)
#     4      # . . .        => "1 2 1 2 12 1"
HAND_RLE = "1 2 1 2 12 1"


def hand_mask() -> np.ndarray:
    m = np.zeros((5, 4), dtype=bool)
    m[1, 0] = m[2, 0] = m[4, 0] = m[0, 1] = m[3, 3] = True
    return m


def test_decode_hand_example() -> None:
    np.testing.assert_array_equal(rle_decode(HAND_RLE, (5, 4)), hand_mask())


def test_encode_hand_example() -> None:
    assert rle_encode(hand_mask()) == HAND_RLE


def test_minus_one_is_empty_and_empty_mask_encodes_to_minus_one() -> None:
    np.testing.assert_array_equal(rle_decode("-1", (5, 4)), np.zeros((5, 4), dtype=bool))
    np.testing.assert_array_equal(rle_decode(" -1", (5, 4)), np.zeros((5, 4), dtype=bool))
    assert rle_encode(np.zeros((3, 7), dtype=bool)) == "-1"


def test_default_shape_is_1024_square_and_column_major() -> None:
    m = rle_decode(
        "1024 1",
    )
    assert m.shape == (1024, 1024)
    assert m.sum() == 1
    assert m[0, 1]  # flat index 1024 = first pixel of the second column, not of the second row
    m2 = rle_decode("0 2")
    assert m2[0, 0]
    assert m2[1, 0]
    assert m2.sum() == 2


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_round_trip_random_masks(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
    # canonical: maximal runs, so no zero gap except possibly before the first run
    values = [int(v) for v in rle.split()] if rle != "-1" else []
    assert all(v > 0 for v in values[2::2])


@pytest.mark.parametrize(
    ("rle", "match"),
    [
        ("1 2 3", "odd number"),
        ("18 3", "past the end"),  # run covers flat 18..20 of a 20-pixel image
        ("1 2 14 4", "past the end"),  # second run starts at 17, ends at 21 > 20
        ("1 x", "non-integer"),
        ("1.5 2", "non-integer"),
        ("-3 2", "negative"),
        ("1 0", "length"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_malformed_rle_raises_typed_error(rle: str, match: str) -> None:
    with pytest.raises(RleError, match=match) as info:
        rle_decode(rle, (5, 4))
    assert isinstance(info.value, DatasetError)
    assert isinstance(info.value, ValueError)


def test_run_ending_exactly_at_the_end_is_valid() -> None:
    m = rle_decode("17 3", (5, 4))
    assert m[2:, 3].all()
    assert m.sum() == 3


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_csv_real_header_with_leading_space_ors_rows(tmp_path: Path) -> None:
    # Real SIIM header "ImageId, EncodedPixels" and values with a leading space.
    csv = _write(
        tmp_path / "train-rle.csv",
        "ImageId, EncodedPixels\n"
        "img.a, 1 2 1 2\n"  # flat 1-2 and 4-5
        "img.b, -1\n"
        "img.a, 18 1\n"  # flat 18
        "img.a, 0 3\n"  # flat 0-2, overlaps the first row: OR, not XOR / sum
        "img.c, 5 1\n",
    )
    masks = read_siim_masks(csv, (5, 4))
    assert list(masks) == ["img.a", "img.b", "img.c"]
    expected_a = np.zeros(20, dtype=bool)
    expected_a[[0, 1, 2, 4, 5, 18]] = True
    np.testing.assert_array_equal(masks["img.a"], expected_a.reshape(4, 5).T)
    np.testing.assert_array_equal(masks["img.b"], np.zeros((5, 4), dtype=bool))
    expected_c = np.zeros((5, 4), dtype=bool)
    expected_c[0, 1] = True
    np.testing.assert_array_equal(masks["img.c"], expected_c)
    assert masks["img.a"].dtype == bool


def test_read_csv_header_without_space_and_rle_listing(tmp_path: Path) -> None:
    csv = _write(tmp_path / "rle.csv", "ImageId,EncodedPixels\nx,1 2 1 2 12 1\ny,-1\nx,-1\n")
    assert read_siim_rle(csv) == {"x": ["1 2 1 2 12 1", "-1"], "y": ["-1"]}
    np.testing.assert_array_equal(read_siim_masks(csv, (5, 4))["x"], hand_mask())


def test_read_csv_missing_column_lists_it(tmp_path: Path) -> None:
    csv = _write(tmp_path / "rle.csv", "ImageId,Pixels\nx,-1\n")
    with pytest.raises(MissingColumnsError, match="EncodedPixels") as info:
        read_siim_masks(csv, (5, 4))
    assert info.value.missing == ["EncodedPixels"]


def test_read_csv_malformed_row_names_file_not_image(tmp_path: Path) -> None:
    csv = _write(tmp_path / "rle.csv", "ImageId, EncodedPixels\nsecret-image-id, 1 2 3\n")
    with pytest.raises(RleError, match="odd number") as info:
        read_siim_masks(csv, (5, 4))
    assert "secret-image-id" not in str(info.value)
    assert info.value.path == csv
    assert info.value.column == "EncodedPixels"


def test_read_csv_empty_cell_is_an_error(tmp_path: Path) -> None:
    csv = _write(tmp_path / "rle.csv", "ImageId, EncodedPixels\nx,\n")
    with pytest.raises(RleError, match="empty EncodedPixels"):
        read_siim_rle(csv)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetFileError):
        read_siim_masks(tmp_path / "nope.csv")
