"""Configuration, constants and errors of the phantom benchmark generator.

Spec (docs/methods.md, "The phantom benchmark"): three classes, three
acquisition sites whose burned-in marker is the planted shortcut, three weak nuisance cues, a patient-level
train/test split in which the shortcut is correlated with the label in *train* and reversed or decorrelated in
*test*, a share of MONOCHROME1 films and a share of compressed transfer syntaxes.

Rates are *agreement rates* and mean the same thing everywhere they are recorded (``master_sheet.csv``,
``phantom.json``, summaries):

* ``shortcut_corr`` of a split = P(site == ``SITE_OF_CLASS[label]``) in that split. In train it is the
  configured rate; with ``test_shortcut="reversed"`` the test split draws the site from the cyclically shifted
  map :data:`REVERSED_SITE_OF_CLASS` with the configured rate, so its agreement with the canonical map is
  ``(1 - rate) / 2``; with ``"decorrelated"`` the site is uniform (agreement 1/3).
* ``nuisance_<cue>_corr`` of a split = P(cue present == (label == ``NUISANCE_CLASS[cue]``)). In train it is
  the
  configured rate r; the test split follows ``test_shortcut`` too (reversed: 1 - r, decorrelated: 0.5), so a
  model that leans on a nuisance cue is also caught on the test split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "CLASS_NAMES",
    "COMPRESSED_SYNTAXES",
    "GENERATOR_VERSION",
    "NUISANCE_CLASS",
    "NUISANCE_CUES",
    "REVERSED_SITE_OF_CLASS",
    "SCREEN_SIZE",
    "SITES",
    "SITE_OF_CLASS",
    "IncompleteDatasetError",
    "OutputDirNotEmptyError",
    "PhantomConfig",
    "PhantomConfigError",
    "PhantomError",
    "heatmap_sigma_px",
]

GENERATOR_VERSION = "1.3.0"
"""Bumped whenever the same seed would produce different bytes."""

CLASS_NAMES: tuple[str, ...] = ("Normal", "CHF", "pneumonia")
"""Class names in label-index order (EGD ``master_sheet.csv`` one-hot columns)."""

SITES: tuple[str, ...] = ("site_a", "site_b", "site_c")
"""Acquisition sites; each burns in its own marker (shape and corner)."""

SITE_OF_CLASS: dict[str, str] = {"Normal": "site_a", "CHF": "site_b", "pneumonia": "site_c"}
"""Canonical site of each class: the shortcut in the training split."""

REVERSED_SITE_OF_CLASS: dict[str, str] = {"Normal": "site_b", "CHF": "site_c", "pneumonia": "site_a"}
"""Site map of a *reversed* test split (cyclic shift: every class gets another class's site)."""

NUISANCE_CUES: tuple[str, ...] = ("border", "collimation", "texture")
"""Weak nuisance cues (``nuisance_<cue>`` columns of ``master_sheet.csv``)."""

NUISANCE_CLASS: dict[str, str] = {"border": "CHF", "collimation": "pneumonia", "texture": "Normal"}
"""Class each nuisance cue is (mildly) associated with."""

SCREEN_SIZE: tuple[int, int] = (1920, 1080)
"""(width, height) of the eye-tracking screen, px (EGD: 1920 x 1080)."""

COMPRESSED_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
)
"""Compressed transfer syntaxes pydicom 3 can *encode* here, used round-robin by case index."""

TestShortcut = Literal["reversed", "decorrelated"]


class PhantomError(Exception):
    """Base class of the phantom generator's errors."""


class PhantomConfigError(PhantomError, ValueError):
    """A :class:`PhantomConfig` value is out of range."""


class OutputDirNotEmptyError(PhantomError, FileExistsError):
    """The output directory is not empty and ``overwrite`` was not requested."""


class IncompleteDatasetError(PhantomError, FileNotFoundError):
    """A dataset directory lacks ``phantom.json`` (interrupted run) or one of its CSVs."""


def heatmap_sigma_px(size: int) -> float:
    """Static-heatmap Gaussian sigma for a phantom of ``size`` px: ``150 * size / 3000``.

    150 px is the EGD paper's sigma at MIMIC-CXR's ~3000 px native size (docs/methods.md, "Dataset formats").
    """
    return 150.0 * size / 3000.0


@dataclass(frozen=True)
class PhantomConfig:
    """Parameters of a phantom dataset (all recorded in ``phantom.json``).

    Attributes:
        n: number of cases (one DICOM per study).
        size: image side in pixels (square films).
        seed: master seed; case ``i`` draws from
            ``numpy.random.default_rng(SeedSequence(seed, spawn_key=(stream, i)))``.
        shortcut_corr: train-split agreement rate between site marker and label (module docstring).
        test_fraction: share of *cases* in the test split (whole patients are assigned, so it is approximate).
        test_shortcut: ``"reversed"`` or ``"decorrelated"``: how the test split treats site and nuisance cues.
        monochrome1_share: share of films stored as MONOCHROME1 (inverted values, same display).
        compressed_share: share of films written with a compressed transfer syntax (RLE, JPEG-LS,
            JPEG 2000 lossless, deflate; round-robin by case index).
        nuisance_border_corr, nuisance_collimation_corr, nuisance_texture_corr: train-split agreement rates
            of the nuisance cues.
        ap_share: share of AP (rather than PA) views; independent of the label.
        rescale_share: share of films with a non-identity modality rescale (slope 1, intercept -1024 or
            slope 2, intercept 0); the rest use 1 / 0.
        class_weights: relative class frequencies (Normal, CHF, pneumonia).
    """

    n: int = 600
    size: int = 256
    seed: int = 0
    shortcut_corr: float = 0.9
    test_fraction: float = 0.2
    test_shortcut: TestShortcut = "reversed"
    monochrome1_share: float = 0.1
    compressed_share: float = 0.1
    nuisance_border_corr: float = 0.65
    nuisance_collimation_corr: float = 0.6
    nuisance_texture_corr: float = 0.7
    ap_share: float = 0.2
    rescale_share: float = 0.2
    class_weights: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise PhantomConfigError(f"n must be a positive integer, got {self.n!r}")
        if not isinstance(self.size, int) or not 32 <= self.size <= 4096:
            raise PhantomConfigError(f"size must be an integer in [32, 4096], got {self.size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise PhantomConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.test_shortcut not in ("reversed", "decorrelated"):
            raise PhantomConfigError(
                f"test_shortcut must be 'reversed' or 'decorrelated', got {self.test_shortcut!r}"
            )
        for name in (
            "shortcut_corr",
            "monochrome1_share",
            "compressed_share",
            "nuisance_border_corr",
            "nuisance_collimation_corr",
            "nuisance_texture_corr",
            "ap_share",
            "rescale_share",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise PhantomConfigError(f"{name} must be a number in [0, 1], got {value!r}")
        if not isinstance(self.test_fraction, int | float) or not 0.0 <= self.test_fraction < 1.0:
            raise PhantomConfigError(f"test_fraction must be in [0, 1), got {self.test_fraction!r}")
        weights = tuple(float(w) for w in self.class_weights)
        if len(weights) != len(CLASS_NAMES) or any(not math.isfinite(w) or w < 0 for w in weights):
            raise PhantomConfigError("class_weights must be three finite non-negative numbers")
        if sum(weights) <= 0:
            raise PhantomConfigError("class_weights must not all be zero")
        object.__setattr__(self, "class_weights", weights)

    def nuisance_corr(self, cue: str) -> float:
        """Configured train-split agreement rate of nuisance ``cue`` (one of :data:`NUISANCE_CUES`)."""
        return float(getattr(self, f"nuisance_{cue}_corr"))

    def split_rates(self, split: str) -> dict[str, float]:
        """Agreement rates of a split: ``shortcut_corr`` and ``nuisance_<cue>_corr`` (module docstring)."""
        if split == "train":
            rates = {"shortcut_corr": float(self.shortcut_corr)}
            rates.update({f"nuisance_{c}_corr": self.nuisance_corr(c) for c in NUISANCE_CUES})
        elif split == "test" and self.test_shortcut == "reversed":
            rates = {"shortcut_corr": (1.0 - float(self.shortcut_corr)) / 2.0}
            rates.update({f"nuisance_{c}_corr": 1.0 - self.nuisance_corr(c) for c in NUISANCE_CUES})
        elif split == "test":
            rates = {"shortcut_corr": 1.0 / len(SITES)}
            rates.update({f"nuisance_{c}_corr": 0.5 for c in NUISANCE_CUES})
        else:
            raise PhantomConfigError(f"split must be 'train' or 'test', got {split!r}")
        return rates

    def shortcut_mode(self, split: str) -> str:
        """``correlated`` for train, else the configured ``test_shortcut``."""
        return "correlated" if split == "train" else str(self.test_shortcut)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        data = asdict(self)
        data["class_weights"] = list(self.class_weights)
        return data
