"""Dataset readers: MIMIC-CXR eye-gaze (EGD) and its phantoms, SIIM-ACR RLE masks, RSNA pneumonia boxes.

One code path reads the real MIMIC-CXR-EGD layout and the project's synthetic phantom datasets written in the
same layout (docs/methods.md, "The phantom benchmark" and "Dataset formats"). The phantom
generator lives in :mod:`mimicry.data.phantom` and is not imported here.
"""

from mimicry.data.egd import (
    ANATOMY_NAMES,
    BOUNDING_BOX_COLUMNS,
    DEFAULT_CLASS_NAMES,
    FIXATION_COLUMNS,
    MASTER_SHEET_COLUMNS,
    PHANTOM_EXTRA_COLUMNS,
    EgdCaseInfo,
    EgdDataset,
    EgdSample,
    parse_anchor_age,
)
from mimicry.data.heatmap import (
    DEFAULT_HEATMAP_SIGMA_PX,
    binary_fixation_map,
    fixation_count_map,
    static_heatmap,
    valid_fixations,
)
from mimicry.data.masks import (
    DatasetError,
    DatasetFormatError,
    MissingColumnsError,
    MissingDatasetFileError,
    box_mask,
    boxes_mask,
    read_mask_png,
    write_mask_png,
)
from mimicry.data.rsna import RSNA_SHAPE, Box, rasterise_boxes, read_rsna_boxes
from mimicry.data.siim import SIIM_SHAPE, RleError, read_siim_masks, read_siim_rle, rle_decode, rle_encode
from mimicry.data.split import patient_split

__all__ = [
    "ANATOMY_NAMES",
    "BOUNDING_BOX_COLUMNS",
    "DEFAULT_CLASS_NAMES",
    "DEFAULT_HEATMAP_SIGMA_PX",
    "FIXATION_COLUMNS",
    "MASTER_SHEET_COLUMNS",
    "PHANTOM_EXTRA_COLUMNS",
    "RSNA_SHAPE",
    "SIIM_SHAPE",
    "Box",
    "DatasetError",
    "DatasetFormatError",
    "EgdCaseInfo",
    "EgdDataset",
    "EgdSample",
    "MissingColumnsError",
    "MissingDatasetFileError",
    "RleError",
    "binary_fixation_map",
    "box_mask",
    "boxes_mask",
    "fixation_count_map",
    "parse_anchor_age",
    "patient_split",
    "rasterise_boxes",
    "read_mask_png",
    "read_rsna_boxes",
    "read_siim_masks",
    "read_siim_rle",
    "rle_decode",
    "rle_encode",
    "static_heatmap",
    "valid_fixations",
    "write_mask_png",
]
