"""Model-parameter randomisation sanity checks on the torch twin (Adebayo et al. 2018; Arun et al. 2021).

* **Cascading** randomisation: re-initialise the classification path top-down and cumulatively — the logits
  (the linear head) first, then each block below it — and compare each stage's map with the trained model's
  map by SSIM (scikit-image defaults, explicit ``data_range``) and Spearman rank correlation.
* **Independent** randomisation: re-initialise one stage at a time, the others keeping their trained weights.
* **Degradation threshold**: mean SSIM between the trained model's maps of random pairs of *different*
  images (Arun et al. use 50 pairs). A method PASSes the cascading test when the fully randomised SSIM falls
  below it (Arun et al., Table 2, "Randomization").

Re-initialisation (as in CheXplain-IBA; docs/audit.md, "Randomisation"): convolutions ``xavier_uniform_``,
linear layers ``normal_(0, 0.05)``, biases zero; other parameterised layers (normalisation)
``reset_parameters()``. Seeded: stage ``i`` draws from ``torch.Generator().manual_seed(seed + i)`` (one
generator for all the modules of the stage, so ensemble members get different draws).

**Stages** (:func:`randomisation_stages`) are derived from the model, never from its attribute names alone:

1. *Dependence*: a parameter belongs to the classification path when it is on the autograd graph of the
   logits (``torch.autograd.grad(model(x).sum(), params, allow_unused=True)`` is not ``None`` for it, on a
   copy in eval mode). A UNet's decoder and segmentation head never reach the logits and are excluded
   (``details["excluded"]`` names them); so is anything else the logits do not read.
2. *Blocks*: the model's ``cam_layer`` is one block; every sibling of the cam layer and of each of its
   ancestors that holds a dependent parameter is another (UNet: ``classifier``, ``encoder.stages.<i>``,
   ``encoder.stem``; a model without a ``cam_layer``: its top-level children). While there are fewer than
   :data:`MIN_STAGES` blocks, the one with the most dependent parameters that has at least two dependent
   children is split into them (DenseNet, whose ``cam_layer`` is the whole ``backbone``: ``norm5``,
   ``denseblock4``, ``transition3`` … ``conv0``).
3. *Order*: top-down = reverse order of the blocks' first call in the logits' forward pass (the head first).

An :class:`~mimicry.models.Ensemble` gets its first member's stages, and stage ``i`` re-initialises that block
in *every* member at once (``Stage.modules`` lists one module per member); members must share stages.

SSIM ``data_range = 1.0``: every map is min-max scaled to [0, 1] (Arun et al.'s post-processing); the
authors' old scikit-image used 2 for float images (docs/audit.md) — the policy can set it.

Quantus's ``MPRT`` (tested as an oracle) randomises every module that has ``reset_parameters`` in
definition order, on or off the classification path, with ``reset_parameters()`` draws: on a model whose
modules all feed the logits and with its draws passed as ``reinit``, it gives the same per-stage scores.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.checks.base import BootstrapSettings, CheckResult
from audit.errors import CheckInputError
from audit.metrics import spearman, ssim
from mimicry.models.base import ModelContractError

__all__ = [
    "MIN_STAGES",
    "Explainer",
    "Reinit",
    "Stage",
    "cascading_randomisation",
    "degradation_threshold",
    "excluded_modules",
    "independent_randomisation",
    "randomisation_stages",
    "reinitialise",
    "reinitialise_stage",
]

#: ``explainer(model, x[N,1,S,S], targets[N]) -> maps float32[N,S,S]`` in [0, 1].
Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], np.ndarray]
#: ``reinit(modules, seed)`` re-initialises one stage's modules in place (default :func:`reinitialise_stage`).
Reinit = Callable[[Sequence[nn.Module], int], None]

#: A model with fewer blocks than this has its largest splittable block split (module docstring, step 2).
MIN_STAGES = 4
#: Side of the probe image used to trace the logits' dependence when no input is given.
_PROBE_SIZE = 64


@dataclass(frozen=True)
class Stage:
    """One randomisation stage.

    Attributes:
        name: the block's dotted name (member-relative for an ensemble); metrics are ``ssim@<name>``.
        modules: dotted paths of the modules re-initialised at this stage (one per ensemble member).
        n_params: number of parameters re-initialised (all members together).
    """

    name: str
    modules: tuple[str, ...]
    n_params: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "modules": list(self.modules), "n_params": self.n_params}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _within(name: str, unit: str) -> bool:
    return unit == "" or name == unit or name.startswith(unit + ".")


def _cam_layer_name(model: nn.Module) -> str | None:
    try:
        cam = model.cam_layer  # type: ignore[attr-defined]
    except (AttributeError, ModelContractError):  # a plain module; an Ensemble (no single cam layer)
        return None
    if not isinstance(cam, nn.Module):
        return None
    for name, m in model.named_modules():
        if m is cam:
            return name
    return None


def _trace(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """On a copy in eval mode: ``(dependent, first_call, excluded)`` — the modules holding parameters on the
    autograd graph of ``model(x)`` (name → number of those parameters), the index of every module's first
    call in that forward pass, and the outermost modules holding parameters none of which reach the logits."""
    work = copy.deepcopy(model).eval()
    owners: list[tuple[str, nn.Parameter]] = []
    for mname, m in work.named_modules():
        for p in m.parameters(recurse=False):
            p.requires_grad_(True)
            owners.append((mname, p))
    first_call: dict[str, int] = {}

    def called(name: str) -> Callable[[nn.Module, Any], None]:
        def hook(_m: nn.Module, _inputs: Any) -> None:
            first_call.setdefault(name, len(first_call))

        return hook

    hooks = [m.register_forward_pre_hook(called(name)) for name, m in work.named_modules()]
    try:
        with torch.enable_grad():
            out = work(x)
            grads: Sequence[torch.Tensor | None] = (
                torch.autograd.grad(out.sum(), [p for _, p in owners], allow_unused=True)
                if out.requires_grad and owners
                else [None] * len(owners)
            )
    finally:
        for h in hooks:
            h.remove()
    dependent: dict[str, int] = {}
    for (mname, p), g in zip(owners, grads, strict=True):
        if g is not None:
            dependent[mname] = dependent.get(mname, 0) + p.numel()
    excluded: list[str] = []
    for name, m in work.named_modules():
        if any(_within(name, e) for e in excluded) or not any(True for _ in m.parameters()):
            continue
        if not any(_within(d, name) for d in dependent):
            excluded.append(name)
    return dependent, first_call, excluded


def _blocks(model: nn.Module, dependent: dict[str, int], first_call: dict[str, int]) -> list[tuple[str, int]]:
    """``(block name, dependent parameters)`` top-down for one (non-ensemble) model."""
    if "" in dependent:
        raise CheckInputError("parameters held directly by the root module: stages need submodules")

    def weight(unit: str) -> int:
        return sum(n for d, n in dependent.items() if _within(d, unit))

    def dep_children(unit: str) -> list[str]:
        mod = model.get_submodule(unit)
        return [_join(unit, c) for c, _ in mod.named_children() if weight(_join(unit, c)) > 0]

    cam = _cam_layer_name(model)
    if cam:
        parts = cam.split(".")
        path = [".".join(parts[:i]) for i in range(len(parts) + 1)]
        units = [cam] + [c for anc in path[:-1] for c in dep_children(anc) if c not in path]
    else:
        units = dep_children("")
    while len(units) < MIN_STAGES:
        splittable = [u for u in units if len(dep_children(u)) >= 2]
        if not splittable:
            break
        big = max(splittable, key=weight)
        i = units.index(big)
        units[i : i + 1] = dep_children(big)
    units = [u for u in units if weight(u) > 0]  # a parameter-free cam layer is no stage
    missing = [d for d in dependent if not any(_within(d, u) for u in units)]
    if missing:  # pragma: no cover - every dependent module lies under the root's children
        raise CheckInputError(f"modules on the classification path outside every stage: {missing}")
    never = len(first_call) + 1  # modules whose parameters are used without calling them: the top
    units.sort(key=lambda u: first_call.get(u, never), reverse=True)
    return [(u, weight(u)) for u in units]


def _probe(model: nn.Module, x: torch.Tensor | None) -> torch.Tensor:
    if x is not None:
        return x[:1].detach()
    channels = int(getattr(model, "in_channels", 1))
    return torch.randn(1, channels, _PROBE_SIZE, _PROBE_SIZE, generator=torch.Generator().manual_seed(0))


def randomisation_stages(model: nn.Module, x: torch.Tensor | None = None) -> list[Stage]:
    """The stages on the classification path, top-down (see the module docstring).

    Args:
        model: a classifier (not modified: the trace runs on a copy).
        x: an input batch to trace the forward pass with (its first image; ``None``: a seeded 64×64 probe).

    Raises:
        CheckInputError: no parameter reaches the logits, or ensemble members whose stages differ.
    """
    from mimicry.models import Ensemble

    probe = _probe(model, x)
    members = list(model.submodels) if isinstance(model, Ensemble) else [model]
    prefixes = [f"submodels.{i}" for i in range(len(members))] if isinstance(model, Ensemble) else [""]
    per_member = []
    for member in members:
        dependent, first_call, _ = _trace(member, probe)
        per_member.append(_blocks(member, dependent, first_call))
    names = [[n for n, _ in blocks] for blocks in per_member]
    if any(n != names[0] for n in names):
        raise CheckInputError("ensemble members have different randomisation stages")
    if not names[0]:
        raise CheckInputError("no parameter of the model reaches its logits: nothing to randomise")
    return [
        Stage(
            name,
            tuple(_join(p, name) for p in prefixes),
            sum(blocks[i][1] for blocks in per_member),
        )
        for i, name in enumerate(names[0])
    ]


def excluded_modules(model: nn.Module, x: torch.Tensor | None = None) -> list[str]:
    """The outermost parameterised modules none of whose parameters reach the logits (UNet: ``decoder``,
    ``head``; for an ensemble, every member's)."""
    return _trace(model, _probe(model, x))[2]


def _init_module(m: nn.Module, gen: torch.Generator) -> None:
    if isinstance(m, nn.modules.conv._ConvNd):
        nn.init.xavier_uniform_(m.weight, generator=gen)
        if m.bias is not None:
            m.bias.zero_()
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.05, generator=gen)
        if m.bias is not None:
            m.bias.zero_()
    elif any(True for _ in m.parameters(recurse=False)) and hasattr(m, "reset_parameters"):
        m.reset_parameters()


def reinitialise_stage(modules: Sequence[nn.Module], seed: int) -> None:
    """Re-initialise every parameter of ``modules`` in place from one generator seeded with ``seed`` (conv
    xavier-uniform, linear N(0, 0.05), zero biases, ``reset_parameters()`` for other layers)."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in modules:
            for m in module.modules():
                _init_module(m, gen)


def reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise every parameter of ``module`` in place (:func:`reinitialise_stage` of one module)."""
    reinitialise_stage([module], seed)


def _pairwise(a: np.ndarray, b: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    s = np.atleast_1d(np.asarray(ssim(a, b, data_range=data_range), dtype=np.float64))
    r = np.atleast_1d(np.asarray(spearman(a, b), dtype=np.float64))
    return s, r


def _run(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    explainer: Explainer,
    *,
    cumulative: bool,
    check: str,
    method: str,
    keys: Sequence[str],
    seed: int,
    data_range: float,
    original: np.ndarray | None,
    class_names: Sequence[str],
    bootstrap: BootstrapSettings | None,
    reinit: Reinit | None,
) -> CheckResult:
    if x.ndim != 4 or x.shape[0] != len(keys) or targets.shape[0] != len(keys):
        raise CheckInputError("x must be [N,1,S,S] with one target and one key per image")
    stages = randomisation_stages(model, x)
    base = explainer(model, x, targets) if original is None else original
    draw = reinit or reinitialise_stage
    result = CheckResult(check, method)
    curve_ssim: list[float] = []
    curve_rho: list[float] = []
    work = copy.deepcopy(model).eval()
    for i, stage in enumerate(stages):
        if not cumulative:
            work = copy.deepcopy(model).eval()
        draw([work.get_submodule(m) for m in stage.modules], seed + i)
        maps = explainer(work, x, targets)
        s, r = _pairwise(maps, base, data_range)
        for j, k in enumerate(keys):
            t = int(targets[j])
            cls = class_names[t] if t < len(class_names) else str(t)
            result.add_case(k, {f"ssim@{stage.name}": s[j], f"spearman@{stage.name}": r[j]}, cls)
        curve_ssim.append(_nanmean(s))
        curve_rho.append(_nanmean(r))
    names = [s.name for s in stages]
    last = names[-1]
    if cumulative:
        result.values["ssim_full"] = dict(result.values[f"ssim@{last}"])
        result.values["spearman_full"] = dict(result.values[f"spearman@{last}"])
    else:
        ssim_keys = [f"ssim@{s}" for s in names]
        result.values["ssim_max"] = {k: _nanmax([result.values[m][k] for m in ssim_keys]) for k in keys}
    result.details = {
        "stages": names,
        "stage_modules": {s.name: list(s.modules) for s in stages},
        "stage_params": {s.name: s.n_params for s in stages},
        "excluded": excluded_modules(model, x),
        "curve": {"ssim": curve_ssim, "spearman": curve_rho},
    }
    return result.summarise(bootstrap)


def cascading_randomisation(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    explainer: Explainer,
    *,
    method: str,
    keys: Sequence[str],
    seed: int = 0,
    data_range: float = 1.0,
    original: np.ndarray | None = None,
    threshold: tuple[float, float] | None = None,
    class_names: Sequence[str] = (),
    bootstrap: BootstrapSettings | None = None,
    reinit: Reinit | None = None,
) -> CheckResult:
    """Cascading (top-down, cumulative) randomisation of ``model`` (a copy; the model is not modified).

    Per case and stage: ``ssim@<stage>`` and ``spearman@<stage>`` to the trained model's map, and
    ``ssim_full`` / ``spearman_full`` after the last stage. ``threshold`` = ``(ssim, spearman)`` degradation
    thresholds (:func:`degradation_threshold`) are stored as ``baselines["degradation_threshold"]``.
    ``details``: ``stages`` (names, top-down), ``stage_modules`` (the modules each stage re-initialises),
    ``stage_params``, ``excluded`` (parameterised modules off the classification path, never randomised) and
    ``curve`` (the mean per stage: the randomisation curve). ``reinit(modules, seed)`` replaces the
    re-initialisation (default :func:`reinitialise_stage`).
    """
    result = _run(
        model,
        x,
        targets,
        explainer,
        cumulative=True,
        check="cascading_randomisation",
        method=method,
        keys=keys,
        seed=seed,
        data_range=data_range,
        original=original,
        class_names=class_names,
        bootstrap=bootstrap,
        reinit=reinit,
    )
    if threshold is not None:
        result.baselines["degradation_threshold"] = {"ssim_full": threshold[0], "spearman_full": threshold[1]}
    return result


def independent_randomisation(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    explainer: Explainer,
    *,
    method: str,
    keys: Sequence[str],
    seed: int = 0,
    data_range: float = 1.0,
    original: np.ndarray | None = None,
    threshold: tuple[float, float] | None = None,
    class_names: Sequence[str] = (),
    bootstrap: BootstrapSettings | None = None,
    reinit: Reinit | None = None,
) -> CheckResult:
    """Independent randomisation: one stage at a time; per case ``ssim@<stage>``, ``spearman@<stage>`` and
    ``ssim_max`` (the highest SSIM over stages: the stage the map is least sensitive to)."""
    result = _run(
        model,
        x,
        targets,
        explainer,
        cumulative=False,
        check="independent_randomisation",
        method=method,
        keys=keys,
        seed=seed,
        data_range=data_range,
        original=original,
        class_names=class_names,
        bootstrap=bootstrap,
        reinit=reinit,
    )
    if threshold is not None:
        result.baselines["degradation_threshold"] = {"ssim_max": threshold[0]}
    return result


def degradation_threshold(
    maps: np.ndarray, *, n_pairs: int = 50, seed: int = 0, data_range: float = 1.0
) -> tuple[float, float]:
    """Mean SSIM and mean Spearman between maps of ``n_pairs`` random pairs of *different* images.

    Pairs ``(i, j)``, ``i != j``, drawn uniformly with ``numpy.random.default_rng(seed)`` (with replacement
    across pairs: fewer than 50 distinct pairs exist for fewer than 11 images).

    Raises:
        CheckInputError: fewer than two maps.
    """
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim != 3 or m.shape[0] < 2:
        raise CheckInputError("the degradation threshold needs at least two maps N×H×W")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, m.shape[0], size=n_pairs)
    j = (i + rng.integers(1, m.shape[0], size=n_pairs)) % m.shape[0]  # j != i, uniform over the others
    s, r = _pairwise(m[i], m[j], data_range)
    return _nanmean(s), _nanmean(r)


def _nanmax(values: list[float]) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else float("nan")


def _nanmean(a: np.ndarray) -> float:
    """Mean of the finite values (NaN when there is none), without numpy's empty-slice warning."""
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")
