"""Layer statistics for the IBA saliency methods in ``audit run`` (docs/audit.md, "IBA layer statistics";
Schulz et al. 2020, §3.1).

``iba``, ``inverse_iba`` and ``multilayer_iba`` need ``stats=``: the per-feature mean and standard deviation
``μ_R, σ_R`` of the bottleneck layer's output over data (:func:`mimicry.saliency.iba.estimate_layer_stats`).
:func:`method_kwargs` turns a policy's ``method_params`` entry into the keyword arguments of
:func:`mimicry.saliency.explain`, adding the statistics:

1. the model card's ``iba_stats`` when it holds :class:`~mimicry.saliency.iba.LayerStats` of the wanted layer
   (``LayerStats.to_dict`` form, or ``{"layers": [...]}``);
2. else a sidecar cache file (JSON, ``LayerStats.to_dict``) keyed by the model's sha256, the layer, the
   sample count and the training split's case keys, in ``<history>.iba-stats/`` next to the history (a file
   without the active-element fractions ``nonzero`` is re-estimated);
3. else estimated on the reference store's **training** split (the images the model would have seen; the
   scored test split stays unseen), preprocessed with the card's spec, and written to that cache.

Audit-only parameters, removed before the call: ``layer`` (``iba`` / ``inverse_iba``; default the card's
``cam_layer``), ``layers`` (``multilayer_iba``; default: the cam layer and up to two parameterised siblings
before it, e.g. ``block1, block2``), ``stats_samples`` (default ``min(1000, len(train split))``; the papers
use ≥ 1000), ``stats_split`` (default ``train``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.errors import ReferenceDataError
from audit.reference import ReferenceSet, case_key
from mimicry.data import DatasetError
from mimicry.io import atomic_write_text
from mimicry.preprocess import PreprocessSpec, preprocess
from mimicry.saliency.iba import PAPER_MIN_SAMPLES, LayerStats, estimate_layer_stats, layer_name

__all__ = [
    "AUDIT_ONLY_PARAMS",
    "IBA_MAP_VERSION",
    "IBA_METHODS",
    "IbaStatsProvider",
    "audit_only_params",
    "default_layers",
    "method_kwargs",
]

log = logging.getLogger(__name__)

#: Saliency methods that take ``stats=``.
IBA_METHODS = frozenset({"iba", "inverse_iba", "multilayer_iba"})
AUDIT_ONLY_PARAMS = ("layer", "layers", "stats_samples", "stats_split")
#: Part of the per-case score cache key of the IBA methods: 2 = the map of Schulz et al.'s reference code
#: (capacity of the last forward pass, active-element mask); scores cached under 1 are recomputed.
IBA_MAP_VERSION = 2


def audit_only_params(method: str) -> tuple[str, ...]:
    """The policy parameters of ``method`` that :func:`method_kwargs` consumes (none for non-IBA methods):
    ``layer`` for ``iba`` / ``inverse_iba``, ``layers`` for ``multilayer_iba``, and the statistics' sample
    count and split for all three."""
    if method not in IBA_METHODS:
        return ()
    return ("layers" if method == "multilayer_iba" else "layer", "stats_samples", "stats_split")


_BATCH = 16


def default_layers(model: torch.nn.Module, n: int = 3) -> list[str]:
    """The cam layer and up to ``n - 1`` parameterised siblings before it (forward order), qualified names."""
    cam = layer_name(model, None)
    parent_name, _, _ = cam.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    prefix = f"{parent_name}." if parent_name else ""
    names: list[str] = []
    for child, module in parent.named_children():
        if child == "classifier":
            continue
        if any(True for _ in module.parameters()) or f"{prefix}{child}" == cam:
            names.append(f"{prefix}{child}")
        if f"{prefix}{child}" == cam:
            break
    return names[-n:]


def _card_stats(card_stats: dict[str, Any] | None) -> dict[str, LayerStats]:
    if not card_stats:
        return {}
    entries = card_stats.get("layers", [card_stats])
    out: dict[str, LayerStats] = {}
    for e in entries if isinstance(entries, list) else []:
        try:
            s = LayerStats.from_dict(e)
        except (KeyError, TypeError, ValueError):
            continue
        out[s.layer] = s
    return out


class IbaStatsProvider:
    """Estimates (and caches) :class:`LayerStats` per (model sha256, layer) for one reference store.

    Args:
        reference: the audit's reference store (its ``full`` dataset's ``stats_split`` is used).
        cache_dir: sidecar directory (``None``: in-memory only).
    """

    def __init__(self, reference: ReferenceSet, cache_dir: Path | None) -> None:
        self.reference = reference
        self.cache_dir = cache_dir
        self._memory: dict[tuple[str, str, int, str], LayerStats] = {}
        self._lock = threading.Lock()

    def _split(self, name: str) -> Any:
        try:
            return self.reference.full.split(name)
        except DatasetError as exc:
            raise ReferenceDataError(f"IBA statistics need the {name!r} split: {exc}") from exc

    @staticmethod
    def _batches(dataset: Any, spec: PreprocessSpec, n: int) -> Iterator[torch.Tensor]:
        batch: list[np.ndarray] = []
        for i in range(min(n, len(dataset))):
            x, _ = preprocess(dataset.load_image(i), spec)
            batch.append(x)
            if len(batch) == _BATCH:
                yield torch.from_numpy(np.stack(batch))
                batch = []
        if batch:
            yield torch.from_numpy(np.stack(batch))

    def stats(
        self,
        model: torch.nn.Module,
        *,
        model_sha256: str,
        spec: PreprocessSpec,
        layer: str,
        n_samples: int | None = None,
        split: str = "train",
    ) -> LayerStats:
        """Statistics of ``layer`` (a qualified name) for the model identified by ``model_sha256``."""
        data = self._split(split)
        n = min(len(data), int(n_samples) if n_samples else PAPER_MIN_SAMPLES)
        if n < 2:
            raise ReferenceDataError(
                f"IBA statistics need ≥ 2 images in the {split!r} split, found {len(data)}"
            )
        keys = hashlib.sha256(
            "\n".join(case_key(data.cases[i].dicom_id) for i in range(n)).encode()
        ).hexdigest()[:16]
        mem_key = (model_sha256, layer, n, keys)
        with self._lock:
            if mem_key in self._memory:
                return self._memory[mem_key]
            path = None
            if self.cache_dir is not None:
                safe = layer.replace("/", "_")
                path = self.cache_dir / f"{model_sha256[:32]}-{safe}-{n}-{keys}.json"
                if path.is_file():
                    try:
                        s = LayerStats.from_dict(json.loads(path.read_text()))
                        if s.nonzero is not None:  # older files lack the active-element fractions
                            self._memory[mem_key] = s
                            return s
                    except (OSError, ValueError, KeyError):
                        log.warning("ignoring an unreadable IBA statistics cache file")
            s = estimate_layer_stats(model, layer, self._batches(data, spec, n), n)
            self._memory[mem_key] = s
            if path is not None:
                atomic_write_text(path, json.dumps(s.to_dict()))
            return s


def method_kwargs(
    method: str,
    params: dict[str, Any] | None,
    *,
    model: torch.nn.Module,
    model_sha256: str,
    spec: PreprocessSpec,
    provider: IbaStatsProvider | None,
    card_stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of :func:`mimicry.saliency.explain` for ``method`` on ``model`` (see module doc)."""
    p = dict(params or {})
    if method not in IBA_METHODS:
        return p
    audit_only = {k: p.pop(k) for k in AUDIT_ONLY_PARAMS if k in p}
    if p.get("stats") is not None:
        return p
    if method == "multilayer_iba":
        layers = list(audit_only.get("layers") or default_layers(model))
    else:
        layers = [layer_name(model, audit_only.get("layer"))]
    from_card = _card_stats(card_stats)
    found: list[LayerStats] = []
    for layer in layers:
        if layer in from_card:
            found.append(from_card[layer])
            continue
        if provider is None:
            raise ReferenceDataError(f"{method} needs layer statistics and no reference store is open")
        found.append(
            provider.stats(
                model,
                model_sha256=model_sha256,
                spec=spec,
                layer=layer,
                n_samples=audit_only.get("stats_samples"),
                split=str(audit_only.get("stats_split", "train")),
            )
        )
    p["stats"] = found if method == "multilayer_iba" else found[0]
    return p
