"""Training tensors: splits by patient, one letterbox geometry for image / heatmap / masks, the cache,
``masks_available``, the dataset fingerprint and phantom generation."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import training.data as tdata
from mimicry.data import EgdDataset
from mimicry.preprocess import PreprocessSpec, letterbox, preprocess
from tests.training import PHANTOM_N, cache_dir, make_config, phantom_root
from training.data import DataError, dataset_fingerprint, ensure_dataset, make_loader, prepare_data


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phantom_root(tmp_path_factory)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cache_dir(tmp_path_factory)


def test_splits_follow_the_dataset_and_hold_out_whole_patients(phantom: Path, cache: Path) -> None:
    bundle = prepare_data(make_config(phantom, cache))
    sheet = pd.read_csv(phantom / "master_sheet.csv", dtype=str)
    test_rows = np.flatnonzero(sheet["split"].str.strip().to_numpy() == "test")
    assert sorted(bundle.test.rows.tolist()) == test_rows.tolist()
    train_rows, val_rows = bundle.train.rows.numpy(), bundle.val.rows.numpy()
    assert sorted([*train_rows, *val_rows, *test_rows]) == list(range(PHANTOM_N))
    patients = sheet["patient_id"].to_numpy()
    assert not set(patients[train_rows]) & set(patients[val_rows])  # by patient
    n_patients = len(set(patients[train_rows]) | set(patients[val_rows]))
    assert len(set(patients[val_rows])) == int(
        np.ceil(0.2 * n_patients)
    )  # GroupShuffleSplit, 20% of patients
    onehot = sheet[["Normal", "CHF", "pneumonia"]].astype(int).to_numpy()
    assert bundle.train.label.tolist() == onehot[train_rows].argmax(axis=1).tolist()
    assert bundle.fingerprint == dataset_fingerprint(phantom)


def test_tensors_match_the_preprocessing_contract(phantom: Path, cache: Path) -> None:
    cfg = make_config(phantom, cache)
    bundle = prepare_data(cfg)
    ds = EgdDataset(phantom)
    spec = PreprocessSpec(size=32)
    for split in (bundle.train, bundle.test):
        i = 3
        sample = ds[int(split.rows[i])]
        x, _ = preprocess(sample.image, spec)
        assert torch.equal(split.image[i], torch.from_numpy(x))
        heat, _ = letterbox(sample.heatmap, 32, 0.0)
        assert torch.allclose(split.heatmap[i, 0], torch.from_numpy(heat / heat.sum()), atol=1e-7)
        union = sample.anatomy["left_lung"] | sample.anatomy["right_lung"] | sample.anatomy["mediastinum"]
        roi, _ = letterbox(union.astype(np.float32), 32, 0.0)
        assert torch.equal(split.roi_mask[i, 0], torch.from_numpy(roi >= 0.5))
    sums = bundle.train.heatmap.sum(dim=(1, 2, 3))
    assert torch.allclose(sums[bundle.train.has_heatmap], torch.ones(int(bundle.train.has_heatmap.sum())))
    assert bundle.train.image.shape == (len(bundle.train), 1, 32, 32)
    assert bundle.train.roi_mask.dtype == torch.bool
    assert bundle.train.roi_mask.any()


@dataclass
class _Info:
    label_index: int


@dataclass
class _Sample:
    image: np.ndarray
    heatmap: np.ndarray
    anatomy: dict[str, np.ndarray]
    info: _Info
    has_fixations: bool = True


class _FakeDataset:
    """One 20×40 (wide) image whose bright block, heatmap mass and lung mask all sit at the same pixels."""

    def __init__(self) -> None:
        image = np.zeros((20, 40), np.float32)
        image[4:12, 28:36] = 1.0
        heat = np.zeros((20, 40), np.float32)
        heat[4:12, 28:36] = 1.0 / 64
        mask = image > 0
        empty = np.zeros_like(mask)
        self.sample = _Sample(
            image, heat, {"left_lung": mask, "right_lung": empty, "mediastinum": empty}, _Info(2)
        )

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> _Sample:
        return self.sample


def test_heatmap_and_masks_share_the_images_letterbox_geometry() -> None:
    arrays = tdata.build_case_arrays(
        _FakeDataset(),  # type: ignore[arg-type]
        PreprocessSpec(size=16, pad_value=0.0, mean=0.0, std=1.0),
        ("left_lung", "right_lung", "mediastinum"),
    )
    # 20×40 → scale 0.4 → 8×16 centred in 16×16 at rows 4..11. The block (rows 4-11, cols 28-35) covers
    # scaled rows 1.6..4.8 and cols 11.2..14.4; the pixels more than half covered are rows 4 + 2..4 = 6..8
    # and cols 11..13.
    bright = arrays["image"][0, 0] > 0.5
    heat = arrays["heatmap"][0, 0]
    roi = arrays["roi_mask"][0, 0]
    rows, cols = np.nonzero(bright)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 8, 11, 13)
    assert np.array_equal(roi, bright)
    image = arrays["image"][0, 0]  # mean 0, std 1: the letterboxed pixels themselves
    # Same geometry and resampling: the heatmap (block / 64 before) is the letterboxed image, renormalised.
    np.testing.assert_allclose(heat, image / image.sum(), rtol=0, atol=1e-7)
    assert arrays["image"][0, 0, :4].max() == 0.0
    assert arrays["image"][0, 0, 12:].max() == 0.0
    assert arrays["label"].tolist() == [2]
    assert arrays["has_roi"].tolist() == [True]


def test_masks_available_is_a_seeded_fraction_of_training_cases(phantom: Path, cache: Path) -> None:
    half = prepare_data(make_config(phantom, cache, data={"masks_available": 0.5}))
    again = prepare_data(make_config(phantom, cache, data={"masks_available": 0.5}))
    other = prepare_data(make_config(phantom, cache, data={"masks_available": 0.5}, seed=1))
    n_train = len(half.train)
    assert int(half.train.has_mask.sum()) == round(0.5 * n_train)
    assert torch.equal(half.train.has_mask, again.train.has_mask)
    assert not torch.equal(half.train.has_mask, other.train.has_mask)
    assert bool(half.val.has_mask.all())
    assert bool(half.test.has_mask.all())
    none = prepare_data(make_config(phantom, cache, data={"masks_available": 0.0}))
    assert not bool(none.train.has_mask.any())


def test_tensors_are_cached_and_keyed_by_preprocessing(
    phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(phantom, tmp_path / "cache")
    first = prepare_data(cfg)
    files = list((tmp_path / "cache").glob("egd-*.npz"))
    assert len(files) == 1

    def _no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(tdata, "build_case_arrays", _no_rebuild)
    second = prepare_data(cfg)
    assert torch.equal(first.train.image, second.train.image)
    assert torch.equal(first.test.heatmap, second.test.heatmap)
    monkeypatch.undo()
    prepare_data(make_config(phantom, tmp_path / "cache", size=48))
    assert len(list((tmp_path / "cache").glob("egd-*.npz"))) == 2


def test_fingerprint_covers_the_csvs_and_phantom_json(phantom: Path, tmp_path: Path) -> None:
    for name in ("master_sheet.csv", "fixations.csv", "phantom.json"):
        shutil.copy(phantom / name, tmp_path / name)
    base = dataset_fingerprint(tmp_path)
    assert base == dataset_fingerprint(phantom)
    assert len(base) == 64
    with (tmp_path / "fixations.csv").open("a", encoding="utf-8") as fh:
        fh.write("\n")
    changed = dataset_fingerprint(tmp_path)
    assert changed != base
    (tmp_path / "phantom.json").unlink()
    assert dataset_fingerprint(tmp_path) not in (base, changed)
    (tmp_path / "master_sheet.csv").unlink()
    with pytest.raises(DataError, match=r"master_sheet\.csv"):
        dataset_fingerprint(tmp_path)


def test_phantom_is_generated_when_missing_and_must_match(tmp_path: Path) -> None:
    root = tmp_path / "new-phantom"
    cfg = make_config(root, data={"phantom": {"n": 12, "size": 32, "seed": 3}})
    assert ensure_dataset(cfg.data) == root.resolve()
    assert (root / "phantom.json").is_file()
    assert (root / "master_sheet.csv").is_file()
    assert ensure_dataset(cfg.data) == root.resolve()  # present and matching: no regeneration
    other = make_config(root, data={"phantom": {"n": 12, "size": 32, "seed": 4}})
    with pytest.raises(DataError, match=r"other settings \(seed\)"):
        ensure_dataset(other.data)
    with pytest.raises(DataError, match="does not exist"):
        ensure_dataset(make_config(tmp_path / "nowhere").data)


def test_loader_order_is_a_function_of_the_seed(phantom: Path, cache: Path) -> None:
    split = prepare_data(make_config(phantom, cache)).train

    def order(seed: int) -> list[int]:
        return [i for b in make_loader(split, 5, shuffle=True, seed=seed) for i in b.index.tolist()]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(len(split)))
    batches = list(make_loader(split, 5, shuffle=False))
    assert [len(b) for b in batches] == [5] * (len(split) // 5) + ([len(split) % 5] if len(split) % 5 else [])
    assert torch.equal(batches[0].image, split.image[:5])


def test_worker_processes_do_not_change_the_batches() -> None:
    from tests.training import easy_bundle

    split = easy_bundle().train
    inline = list(make_loader(split, 5, shuffle=True, seed=7))
    workers = list(make_loader(split, 5, shuffle=True, seed=7, num_workers=2))
    assert [b.index.tolist() for b in workers] == [b.index.tolist() for b in inline]
    assert all(torch.equal(a.image, b.image) for a, b in zip(inline, workers, strict=True))
