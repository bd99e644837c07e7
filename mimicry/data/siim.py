"""SIIM-ACR pneumothorax ``train-rle.csv``: relative run-length decoding and encoding.

Format (docs/methods.md, "Dataset formats"; SIIM-ACR Kaggle ``mask_functions.py``): the CSV has columns
``ImageId`` and `` EncodedPixels`` (the real header has a leading space, ``ImageId, EncodedPixels``). An
encoding is whitespace-separated integers ``start_1 len_1 start_2 len_2 ...`` over the image flattened in
**column-major** order (flat index ``col * H + row``), with *relative* starts::

    pos = 0
    for start, length in pairs:
        pos += start
        mask[pos:pos + length] = 1
        pos += length

then ``mask.reshape(W, H).T`` (equivalently ``reshape((H, W), order="F")``). ``-1`` means an empty mask
(no pneumothorax). An image may have several rows (one per component); they are OR-ed.

The phantom datasets write the same file with ``ImageId`` = DICOM id at the phantom image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mimicry.data.masks import DatasetFormatError, MissingDatasetFileError, require_columns

__all__ = ["SIIM_SHAPE", "RleError", "read_siim_masks", "read_siim_rle", "rle_decode", "rle_encode"]

SIIM_SHAPE = (1024, 1024)
"""(H, W) of the SIIM-ACR images."""

EMPTY_RLE = "-1"


class RleError(DatasetFormatError):
    """Malformed run-length encoding (odd token count, non-integers, negative values, run past the end)."""


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive (H, W), got {shape}")
    return h, w


def rle_decode(rle: str, shape: tuple[int, int] = SIIM_SHAPE) -> np.ndarray:
    """Decode one SIIM relative RLE string into a bool ``H x W`` mask.

    Args:
        rle: ``"-1"`` (empty) or ``"start len start len ..."`` with relative starts (module docstring).
            Surrounding whitespace is ignored.
        shape: ``(H, W)`` of the image; the flat index runs down columns (column-major).

    Raises:
        RleError: empty string, non-integer tokens, an odd number of tokens, a negative start, a length < 1,
            or a run past the end of the image.
    """
    h, w = _check_shape(shape)
    text = str(rle).strip()
    if text == EMPTY_RLE:
        return np.zeros((h, w), dtype=bool)
    tokens = text.split()
    if not tokens:
        raise RleError("RLE string is empty (SIIM writes '-1' for an empty mask)")
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError as exc:
        raise RleError("RLE string has a non-integer token") from exc
    if values.size % 2:
        raise RleError(f"RLE string has an odd number of tokens ({values.size}); expected start/length pairs")
    starts_rel, lengths = values[0::2], values[1::2]
    if (starts_rel < 0).any():
        raise RleError("RLE has a negative start offset")
    if (lengths < 1).any():
        raise RleError("RLE has a run length < 1")
    # Absolute start of run i = sum of relative starts up to i + sum of lengths before i.
    starts = np.cumsum(starts_rel) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    ends = starts + lengths
    n = h * w
    if ends[-1] > n:
        raise RleError(f"RLE run ends at flat index {int(ends[-1])}, past the end of a {h}x{w} image ({n})")
    delta = np.zeros(n + 1, dtype=np.int32)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    flat = np.cumsum(delta[:-1]) > 0
    return flat.reshape((w, h)).T.copy()


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask in SIIM's relative column-major RLE; ``"-1"`` when the mask is empty.

    Inverse of :func:`rle_decode`: ``rle_decode(rle_encode(m), m.shape)`` equals ``m.astype(bool)``. Runs are
    maximal (adjacent foreground pixels in column-major order form one run), so the encoding is canonical.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    flat = m.astype(bool).T.ravel()  # column-major flattening (== ravel(order="F"))
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    if edges.size == 0:
        return EMPTY_RLE
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    gaps = starts - np.concatenate(([0], ends[:-1]))
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2], pairs[1::2] = gaps, lengths
    return " ".join(map(str, pairs.tolist()))


def read_siim_rle(csv_path: Path | str) -> dict[str, list[str]]:
    """Read ``train-rle.csv`` without decoding: ``ImageId -> [rle, ...]`` in file order.

    Cheap even for the full SIIM set (decoding all 12k 1024x1024 masks at once would take ~12 GB); decode
    one image with ``rle_decode`` per string and OR the results, or use :func:`read_siim_masks`.

    Accepts the real header ``ImageId, EncodedPixels`` (leading space) and ``ImageId,EncodedPixels``.

    Raises:
        MissingDatasetFileError: the file does not exist.
        MissingColumnsError: ``ImageId`` or ``EncodedPixels`` is missing.
        RleError: an ``EncodedPixels`` cell is empty.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise MissingDatasetFileError("SIIM train-rle.csv not found", path=path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetFormatError("SIIM train-rle.csv is not a readable CSV", path=path) from exc
    df.columns = [str(c).strip() for c in df.columns]
    require_columns(df.columns, ["ImageId", "EncodedPixels"], "SIIM train-rle.csv", path)
    ids = df["ImageId"].str.strip()
    rles = df["EncodedPixels"].str.strip()
    if (rles == "").any():
        raise RleError("SIIM train-rle.csv: empty EncodedPixels cell", path=path, column="EncodedPixels")
    if (ids == "").any():
        raise DatasetFormatError("SIIM train-rle.csv: empty ImageId cell", path=path, column="ImageId")
    out: dict[str, list[str]] = {}
    for image_id, rle in zip(ids.tolist(), rles.tolist(), strict=True):
        out.setdefault(image_id, []).append(rle)
    return out


def read_siim_masks(csv_path: Path | str, shape: tuple[int, int] = SIIM_SHAPE) -> dict[str, np.ndarray]:
    """Read ``train-rle.csv`` into ``ImageId -> bool H x W`` mask, OR-ing an image's rows.

    An image whose only row is ``-1`` maps to an all-False mask. Memory is ``H * W`` bytes per image: for
    the full SIIM set prefer :func:`read_siim_rle` plus per-image decoding.

    Raises:
        the errors of :func:`read_siim_rle`; :class:`RleError` (with the file as ``path``; the message does
        not name the image) when one encoding is malformed.
    """
    path = Path(csv_path)
    h, w = _check_shape(shape)
    out: dict[str, np.ndarray] = {}
    for row_no, (image_id, rles) in enumerate(read_siim_rle(path).items()):
        mask = np.zeros((h, w), dtype=bool)
        for rle in rles:
            try:
                mask |= rle_decode(rle, (h, w))
            except RleError as exc:
                raise RleError(
                    f"SIIM train-rle.csv: malformed EncodedPixels for image #{row_no} in file order: {exc}",
                    path=path,
                    column="EncodedPixels",
                ) from exc
        out[image_id] = mask
    return out
