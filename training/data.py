"""Training tensors from an EGD (or phantom) dataset: built once, cached, split train / val / test.

Spec (project issue, "Data"): every image is letterboxed with :func:`mimicry.preprocess.preprocess` at the
config's size (the one preprocessing contract shared with serving); the static EGD heatmap and the anatomy
masks go through :func:`mimicry.preprocess.letterbox` with the *same geometry* (same scale, same offset, zero
padding), so a pixel of the heatmap or mask lies on the same pixel of the model input. Heatmaps are
renormalised to sum 1 after resampling (all zeros when the image has no fixation); masks are thresholded at
0.5 after bilinear resampling. ``roi_mask`` is the union of ``data.roi_anatomy`` (lungs + mediastinum), the
region of interest of the mask-guided recipes (Viviano et al., ICLR 2021; docs/methods.md,
"Mask-guided training").

Splits: *train* and *val* come from the dataset's train split, val = ``data.val_fraction`` of its *patients*
(:func:`mimicry.data.patient_split`, ``data.split_seed``); rows whose ``split`` column says ``val`` /
``validation`` are used as val instead when present. *test* is the dataset's test split (for phantoms the
shortcut-reversed split).

Cache: ``<cache_dir>/egd-<key>.npz`` (``numpy.savez``, read with ``allow_pickle=False``), key = sha256 of the
dataset fingerprint, the preprocessing spec, class names, heatmap sigma and ROI anatomy. The fingerprint
(:func:`dataset_fingerprint`) is sha256 over ``master_sheet.csv`` + ``fixations.csv`` + ``phantom.json`` (if
present); it goes into the run's ``result.json`` and the model card.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

from mimicry.data import EgdDataset, patient_split
from mimicry.io import atomic_writer
from mimicry.preprocess import PreprocessSpec, letterbox, preprocess
from training.config import DataConfig, TrainConfig
from training.seeding import derive_seed, make_generator, seed_worker

__all__ = [
    "CACHE_FORMAT_VERSION",
    "Batch",
    "DataBundle",
    "DataError",
    "SplitTensors",
    "build_case_arrays",
    "dataset_fingerprint",
    "ensure_dataset",
    "load_or_build_arrays",
    "make_loader",
    "prepare_data",
]

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_FINGERPRINT_FILES = ("master_sheet.csv", "fixations.csv", "phantom.json")
_VAL_SPLIT_NAMES = ("val", "validation")
_ARRAY_KEYS = ("image", "label", "heatmap", "roi_mask", "has_roi", "has_heatmap")


class DataError(ValueError):
    """The configured data cannot be prepared (missing root, mismatched phantom, empty split, ...)."""


# --------------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Batch:
    """One mini-batch, at model resolution. What every recipe's ``training_step`` receives.

    Attributes:
        image: ``float32 [N, 1, S, S]`` preprocessed model input.
        label: ``int64 [N]`` class index.
        heatmap: ``float32 [N, 1, S, S]`` static EGD heatmap, sum 1 per sample (zeros without fixations).
        roi_mask: ``bool [N, 1, S, S]`` union of the ROI anatomy masks (lungs + mediastinum).
        has_mask: ``bool [N]`` whether the mask-guided recipes may use ``roi_mask`` for this sample
            (``data.masks_available`` of the training cases, chosen from the run seed).
        has_heatmap: ``bool [N]`` whether the image has at least one fixation.
        index: ``int64 [N]`` position of each sample in its split.
    """

    image: Tensor
    label: Tensor
    heatmap: Tensor
    roi_mask: Tensor
    has_mask: Tensor
    has_heatmap: Tensor
    index: Tensor

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``."""
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.label.shape[0])


@dataclass(frozen=True)
class SplitTensors:
    """All tensors of one split (CPU). Field meanings as in :class:`Batch`; ``rows`` (``int64 [N]``) are
    the cases' master-sheet rows (positions in the full dataset), for audits and split checks."""

    image: Tensor
    label: Tensor
    heatmap: Tensor
    roi_mask: Tensor
    has_mask: Tensor
    has_heatmap: Tensor
    rows: Tensor

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def batch(self, index: Tensor | list[int] | slice) -> Batch:
        """The samples at ``index`` as a :class:`Batch`."""
        if isinstance(index, slice):
            idx = torch.arange(len(self))[index]
        else:
            idx = torch.as_tensor(index, dtype=torch.int64)
        return Batch(
            image=self.image[idx],
            label=self.label[idx],
            heatmap=self.heatmap[idx],
            roi_mask=self.roi_mask[idx],
            has_mask=self.has_mask[idx],
            has_heatmap=self.has_heatmap[idx],
            index=idx,
        )

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.label.numpy(), minlength=num_classes)


@dataclass(frozen=True)
class DataBundle:
    """The three splits of a run plus what identifies the data."""

    train: SplitTensors
    val: SplitTensors
    test: SplitTensors
    class_names: tuple[str, ...]
    fingerprint: str
    preprocessing: PreprocessSpec

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class _SplitDataset(Dataset[Batch]):
    """Map-style dataset whose items are whole batches (a ``BatchSampler`` supplies index lists)."""

    def __init__(self, split: SplitTensors) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: list[int]) -> Batch:  # type: ignore[override]
        return self.split.batch(index)


def make_loader(
    split: SplitTensors,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader[Batch]:
    """A ``DataLoader`` yielding :class:`Batch` objects.

    The shuffle order draws from a ``torch.Generator`` seeded with ``seed`` (required when ``shuffle``); the
    workers' base seed comes from a *separate* generator (``derive_seed(seed, "workers")``; with
    ``worker_init_fn`` = :func:`training.seeding.seed_worker`), so the order is a function of the seed alone
    and does not depend on ``num_workers``.

    With ``world_size > 1`` (data-parallel training, :mod:`training.distributed`) a
    ``DistributedSampler`` seeded with ``seed`` gives every rank the same shuffled order, of which rank
    ``rank`` takes every ``world_size``-th case (padded by repetition to equal length on every rank).
    """
    if world_size > 1:
        sampler: Any = DistributedSampler(
            range(len(split)),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=0 if seed is None else seed,
            drop_last=False,
        )
        if shuffle and seed is None:
            raise ValueError("a shuffled loader needs a seed")
    elif shuffle:
        if seed is None:
            raise ValueError("a shuffled loader needs a seed")
        sampler = RandomSampler(range(len(split)), generator=make_generator(seed))
    else:
        sampler = SequentialSampler(range(len(split)))
    worker_generator = make_generator(derive_seed(seed or 0, "workers")) if num_workers else None
    return DataLoader(
        _SplitDataset(split),
        batch_size=None,
        sampler=BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last),
        num_workers=num_workers,
        worker_init_fn=seed_worker if num_workers else None,
        generator=worker_generator,
    )


# --------------------------------------------------------------------------------------------- dataset


def dataset_fingerprint(root: str | Path) -> str:
    """sha256 (hex) over ``master_sheet.csv``, ``fixations.csv`` and ``phantom.json`` (if present).

    Each present file contributes ``name NUL length(8 bytes, big-endian) bytes``, in that fixed order, so
    the digest changes when any of them changes, appears or disappears.

    Raises:
        DataError: ``master_sheet.csv`` or ``fixations.csv`` is missing.
    """
    r = Path(root)
    h = hashlib.sha256()
    for name in _FINGERPRINT_FILES:
        path = r / name
        if not path.is_file():
            if name == "phantom.json":
                continue
            raise DataError(f"dataset root has no {name}")
        data = path.read_bytes()
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def ensure_dataset(data: DataConfig) -> Path:
    """The dataset root, generating a phantom there first when configured (``data.phantom``).

    A root that does not exist (or is an empty directory) is generated when ``data.phantom`` is set. A root
    that already holds a phantom must have been generated with the same settings.

    Raises:
        DataError: the root is missing and no phantom is configured, or the phantom settings disagree.
    """
    root = Path(data.root).expanduser().resolve()
    exists = root.is_dir() and any(root.iterdir())
    if not exists:
        if data.phantom is None:
            raise DataError(f"data.root {root} does not exist (set data.phantom to generate a phantom there)")
        from mimicry.data.phantom import generate_phantom_dataset

        log.info("generating a %d-case phantom dataset at %s", data.phantom.n, root)
        generate_phantom_dataset(root, data.phantom.to_phantom_config())
        return root
    if data.phantom is not None:
        meta_path = root / "phantom.json"
        if not meta_path.is_file():
            raise DataError("data.phantom is set but data.root holds a dataset without phantom.json")
        recorded = json.loads(meta_path.read_text(encoding="utf-8")).get("config", {})
        wanted = data.phantom.to_phantom_config().to_dict()
        differing = sorted(k for k in wanted if recorded.get(k) != wanted[k])
        if differing:
            raise DataError(
                f"the phantom at data.root was generated with other settings ({', '.join(differing)}); "
                "point data.root elsewhere or match data.phantom"
            )
    return root


def _letterbox_like(array: np.ndarray, size: int) -> np.ndarray:
    """Letterbox an auxiliary map with the image's geometry (same scale and offset, zero padding)."""
    out, _ = letterbox(np.asarray(array, dtype=np.float32), size, 0.0)
    return out


def build_case_arrays(
    dataset: EgdDataset, spec: PreprocessSpec, roi_anatomy: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Arrays of every case of ``dataset`` in its order (module docstring for the resampling rules).

    Returns:
        ``image`` f32 [N,1,S,S]; ``label`` i64 [N]; ``heatmap`` f32 [N,1,S,S] (sum 1 or all 0); ``roi_mask``
        bool [N,1,S,S]; ``has_roi`` bool [N] (every ROI anatomy mask exists); ``has_heatmap`` bool [N].
    """
    n, s = len(dataset), spec.size
    out = {
        "image": np.zeros((n, 1, s, s), np.float32),
        "label": np.zeros(n, np.int64),
        "heatmap": np.zeros((n, 1, s, s), np.float32),
        "roi_mask": np.zeros((n, 1, s, s), bool),
        "has_roi": np.zeros(n, bool),
        "has_heatmap": np.zeros(n, bool),
    }
    for i in range(n):
        sample = dataset[i]
        # Heatmap and masks have the image's shape, so letterbox() fits them with the image's geometry.
        x, _ = preprocess(sample.image, spec)
        out["image"][i] = x
        out["label"][i] = sample.info.label_index
        heat = _letterbox_like(sample.heatmap, s)
        total = float(heat.sum())
        if sample.has_fixations and total > 0:
            out["heatmap"][i, 0] = heat / total
            out["has_heatmap"][i] = True
        present = [sample.anatomy[name] for name in roi_anatomy if name in sample.anatomy]
        if len(present) == len(roi_anatomy):
            union = np.logical_or.reduce(present)
            out["roi_mask"][i, 0] = _letterbox_like(union, s) >= 0.5
            out["has_roi"][i] = True
    return out


def _cache_key(fingerprint: str, spec: PreprocessSpec, dataset: EgdDataset, roi: tuple[str, ...]) -> str:
    blob = json.dumps(
        {
            "format": CACHE_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "preprocessing": spec.model_dump(mode="json"),
            "class_names": list(dataset.class_names),
            "heatmap_sigma_px": dataset.heatmap_sigma_px,
            "roi_anatomy": list(roi),
            "images_root": str(dataset.images_root.resolve()),
        },
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()


def _order_digest(dataset: EgdDataset) -> str:
    """sha256 of the case order (hashed identifiers: the cache never stores them in clear)."""
    return hashlib.sha256("\n".join(c.dicom_id for c in dataset.cases).encode()).hexdigest()


def load_or_build_arrays(
    dataset: EgdDataset,
    spec: PreprocessSpec,
    roi_anatomy: tuple[str, ...],
    *,
    fingerprint: str,
    cache_dir: Path | None,
) -> dict[str, np.ndarray]:
    """:func:`build_case_arrays`, cached as ``.npz`` in ``cache_dir`` (``None``: no cache).

    A cache file whose case order or keys do not match is rebuilt. Writes are atomic (temporary file +
    ``os.replace``), so concurrent runs never read a half-written cache.
    """
    if cache_dir is None:
        return build_case_arrays(dataset, spec, roi_anatomy)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"egd-{_cache_key(fingerprint, spec, dataset, roi_anatomy)[:32]}.npz"
    order = _order_digest(dataset)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                if str(npz["order_digest"]) == order and all(k in npz for k in _ARRAY_KEYS):
                    log.debug("tensor cache hit: %s", path.name)
                    return {k: npz[k] for k in _ARRAY_KEYS}
        except (OSError, ValueError, KeyError):
            log.warning("unreadable tensor cache %s: rebuilding", path.name)
    arrays = build_case_arrays(dataset, spec, roi_anatomy)
    with atomic_writer(path) as fh:
        np.savez(fh, order_digest=np.array(order), **arrays)
    return arrays


def _split(arrays: dict[str, np.ndarray], rows: np.ndarray, has_mask: np.ndarray) -> SplitTensors:
    return SplitTensors(
        image=torch.from_numpy(np.ascontiguousarray(arrays["image"][rows])),
        label=torch.from_numpy(np.ascontiguousarray(arrays["label"][rows])),
        heatmap=torch.from_numpy(np.ascontiguousarray(arrays["heatmap"][rows])),
        roi_mask=torch.from_numpy(np.ascontiguousarray(arrays["roi_mask"][rows])),
        has_mask=torch.from_numpy(np.ascontiguousarray(has_mask)),
        has_heatmap=torch.from_numpy(np.ascontiguousarray(arrays["has_heatmap"][rows])),
        rows=torch.from_numpy(np.array(rows, dtype=np.int64)),
    )


def prepare_data(config: TrainConfig) -> DataBundle:
    """Everything :func:`training.loop.train` needs from the data section of ``config``.

    Raises:
        DataError: a split is empty or the validation split cannot be drawn (fewer than 2 patients).
    """
    data = config.data
    root = ensure_dataset(data)
    spec = config.preprocessing.to_spec()
    dataset = EgdDataset(
        root,
        images_root=data.images_root,
        class_names=data.class_names,
        heatmap_sigma_px=data.heatmap_sigma_px,
        test_fraction=data.test_fraction,
        split_seed=data.split_seed,
    )
    fingerprint = dataset_fingerprint(root)
    cache_dir = Path(data.cache_dir) if data.cache_dir is not None else Path(".mimicry") / "cache"
    arrays = load_or_build_arrays(
        dataset, spec, data.roi_anatomy, fingerprint=fingerprint, cache_dir=cache_dir
    )

    frame = dataset.frame.reset_index(drop=True)  # the full dataset: position == master-sheet row
    train_all = dataset.split("train").frame.index.to_numpy()
    test_rows = dataset.split("test").frame.index.to_numpy()
    val_marked = np.zeros(0, np.int64)
    if "split" in frame.columns:
        val_marked = np.flatnonzero(frame["split"].isin(_VAL_SPLIT_NAMES).to_numpy())
    if val_marked.size:
        train_rows, val_rows = train_all, val_marked
    else:
        if frame.iloc[train_all]["patient_id"].nunique() < 2:
            raise DataError("the training split needs at least 2 patients to hold out a validation split")
        inner = patient_split(frame.iloc[train_all], test_fraction=data.val_fraction, seed=data.split_seed)
        is_val = (inner == "test").to_numpy()
        train_rows, val_rows = train_all[~is_val], train_all[is_val]
    for name, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
        if rows.size == 0:
            raise DataError(f"the {name} split is empty")

    # has_mask: a seeded choice of round(masks_available * n_train) training cases (that have an ROI).
    n_train = train_rows.size
    k = round(data.masks_available * n_train)
    chosen = np.zeros(n_train, bool)
    chosen[np.random.default_rng(derive_seed(config.seed, "masks")).permutation(n_train)[:k]] = True
    train_mask = chosen & arrays["has_roi"][train_rows]
    return DataBundle(
        train=_split(arrays, train_rows, train_mask),
        val=_split(arrays, val_rows, arrays["has_roi"][val_rows]),
        test=_split(arrays, test_rows, arrays["has_roi"][test_rows]),
        class_names=tuple(data.class_names),
        fingerprint=fingerprint,
        preprocessing=spec,
    )
