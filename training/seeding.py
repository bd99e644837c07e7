"""Seeding and determinism: python, numpy, torch, DataLoader workers and generators, RNG state capture.

Every random stream of a run is derived from the run seed with :func:`derive_seed` (numpy ``SeedSequence``
over the seed and a tag), so streams are independent and a change to one (e.g. adding a member) does not
shift another:

* ``derive_seed(seed, "member", i)``   initial weights of classifier ``i`` (ensembles: one per member);
* ``derive_seed(seed, "data", s, e)``  the shuffle order of data stream ``s`` in epoch ``e``;
* ``derive_seed(seed, "train")``       python / numpy / torch global RNGs during training (dropout, ...);
* ``derive_seed(seed, "masks")``       which training cases have ``has_mask``.

Deriving the data order from ``(seed, stream, epoch)`` makes a resumed run replay exactly the order of an
uninterrupted one; the global RNG states are saved in every checkpoint (:func:`capture_rng_state`).
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = [
    "capture_rng_state",
    "derive_seed",
    "determinism",
    "make_generator",
    "restore_rng_state",
    "seed_everything",
    "seed_worker",
]


def derive_seed(seed: int, tag: str, *indices: int) -> int:
    """A 63-bit seed for the stream ``(tag, *indices)`` of run ``seed`` (numpy ``SeedSequence``)."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(tag.encode("utf-8")), *(int(i) for i in indices)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's legacy global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - libraries draw from the legacy global RNG
    torch.manual_seed(seed)


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (DataLoader shuffling, worker base seeds)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed.

    torch seeds each worker with ``base_seed + worker_id`` (``base_seed`` drawn from the loader's
    generator); numpy and ``random`` are not seeded by torch, so do it here (PyTorch "Reproducibility" notes).
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)  # noqa: NPY002 - the legacy global RNG is what workers share
    random.seed(worker_seed)


@contextmanager
def determinism(mode: str, num_threads: int | None = None) -> Iterator[None]:
    """Apply the run's determinism settings, restoring the previous global torch settings on exit.

    ``mode``: ``"strict"`` → ``torch.use_deterministic_algorithms(True, warn_only=False)`` (an op without a
    deterministic implementation raises); ``"warn"`` → ``warn_only=True``; ``"off"`` leaves torch alone.
    cuDNN benchmarking is disabled and ``CUBLAS_WORKSPACE_CONFIG`` set (needed for deterministic cuBLAS).
    ``num_threads`` fixes torch's intra-op thread count (bit-identical CPU results need the same count).
    """
    prev_enabled = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    prev_bench = torch.backends.cudnn.benchmark
    prev_cudnn_det = torch.backends.cudnn.deterministic
    try:
        if mode != "off":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=(mode == "warn"))
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        yield
    finally:
        torch.use_deterministic_algorithms(prev_enabled, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench
        torch.backends.cudnn.deterministic = prev_cudnn_det
        if num_threads is not None:
            torch.set_num_threads(prev_threads)


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Global RNG states as (tensors for safetensors, JSON scalars); no pickle involved.

    Tensors: ``rng.torch_cpu`` (uint8), ``rng.cuda.<i>`` (uint8, per device), ``rng.numpy_keys``
    (uint32[624]). JSON: python ``random`` state (version, 625 ints, gauss) and numpy's position / gaussian
    cache.
    """
    tensors: dict[str, torch.Tensor] = {"rng.torch_cpu": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state.clone()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]  # noqa: NPY002
    tensors["rng.numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    version, internal, gauss = random.getstate()
    scalars = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": name,
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    return tensors, scalars


def restore_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(tensors["rng.torch_cpu"].to(torch.uint8))
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k].to(torch.uint8) for k in cuda])
    py = scalars["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss"]))
    npy = scalars["numpy"]
    keys = tensors["rng.numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002 - restoring the legacy global RNG
        (str(npy["name"]), keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
    )
