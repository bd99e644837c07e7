"""Independent reference implementations the metric tests compare with: pysaliency (MIT / Tübingen saliency
benchmark metrics) and Quantus (localisation and robustness metrics).

pysaliency 0.2.22 imports ``pkg_resources`` at package import time, for its MATLAB-model and data-set
download modules only (never used here); setuptools ≥ 81 no longer ships that module. :func:`pysaliency`
therefore provides a stand-in that raises if anything calls it, for the duration of the import only, and
removes it again so no other test sees it. The metric and ROC code under test is pysaliency's own.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np

__all__ = ["PysaliencyMaps", "pysaliency", "quantus"]


def pysaliency() -> Any:
    if "pysaliency" in sys.modules:
        return sys.modules["pysaliency"]
    added = False
    try:
        import pkg_resources  # noqa: F401
    except ModuleNotFoundError:
        stub = types.ModuleType("pkg_resources")

        def _unavailable(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("pkg_resources is not installed (stand-in used while importing pysaliency)")

        stub.resource_string = _unavailable  # type: ignore[attr-defined]
        stub.resource_listdir = _unavailable  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stub
        added = True
    try:
        import pysaliency as ps
    finally:
        if added:
            del sys.modules["pkg_resources"]
    return ps


def quantus() -> Any:
    import quantus as q

    return q


def stimuli_and_fixations(shapes: list[tuple[int, int]], fixations: list[np.ndarray]) -> tuple[Any, Any]:
    """pysaliency ``Stimuli`` (image ``n`` is a constant ``n`` so a model can find its map) and
    ``Fixations`` (one fixation per non-zero pixel of each binary map)."""
    ps = pysaliency()
    stimuli = ps.Stimuli([np.full((h, w, 3), n, np.uint8) for n, (h, w) in enumerate(shapes)])
    xs: list[float] = []
    ys: list[float] = []
    ns: list[int] = []
    for n, f in enumerate(fixations):
        r, c = np.nonzero(f)
        ys.extend(r.tolist())
        xs.extend(c.tolist())
        ns.extend([n] * r.size)
    k = len(xs)
    empty = np.full((k, 0), np.nan)
    fix = ps.Fixations(
        np.array(xs, float),
        np.array(ys, float),
        np.zeros(k),
        empty,
        empty,
        empty,
        np.array(ns),
        np.zeros(k, int),
    )
    return stimuli, fix


def PysaliencyMaps(maps: list[np.ndarray]) -> Any:
    """A pysaliency ``SaliencyMapModel`` returning ``maps[n]`` for stimulus ``n``."""
    ps = pysaliency()

    class _Maps(ps.SaliencyMapModel):
        def __init__(self) -> None:
            super().__init__(caching=False)

        def _saliency_map(self, stimulus: np.ndarray) -> np.ndarray:
            return np.asarray(maps[int(stimulus[0, 0, 0])], dtype=np.float64)

    return _Maps()
