"""The saliency method registry and the one entry point, :func:`explain`.

Every method is a small :class:`SaliencyMethod` subclass registered under a name with
:func:`register_method`; it declares its paper defaults in ``defaults`` and implements
``attribute(model, x, target, **params) -> Tensor[N, C, H, W]`` (raw attributions at input resolution).
:func:`explain_raw` validates the request, resolves the target, merges the defaults, and runs the method
with the model in eval mode (restoring the caller's train/eval mode and every parameter's
``requires_grad`` afterwards, also on errors). :func:`explain` adds the shared, explicit post-processing
(:class:`~mimicry.saliency.postprocess.PostProcess`, Arun et al.'s convention by default).

Conventions shared by all methods:

* ``x`` is ``float32[N, 1, H, W]`` in model-input units (after :mod:`mimicry.preprocess`), on any device;
  everything runs on ``x.device``.
* ``target``: an ``int`` (same class for every sample), a sequence of ints (one per sample), a 1-D integer
  tensor, or ``None`` (= the predicted class, argmax of the logits).
* Gradient methods explain the target *logit* (the pre-softmax class score, as in Simonyan et al. 2014 and
  Selvaraju et al. 2017); occlusion explains the target *probability* (Zeiler & Fergus 2014), so that it runs
  unchanged against the probability output of ONNX Runtime / Triton.
* ``batch_size`` bounds how many images go through the model in one forward/backward pass; ``seed`` makes
  stochastic methods deterministic (global RNGs are restored afterwards).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimicry.models.base import CamClassifier
from mimicry.saliency.errors import (
    InvalidTargetError,
    SaliencyError,
    UnknownMethodError,
    UnknownParameterError,
)
from mimicry.saliency.postprocess import PostProcess

__all__ = [
    "SaliencyMethod",
    "Target",
    "attribution_mode",
    "explain",
    "explain_raw",
    "get_method",
    "grad_input",
    "iter_chunks",
    "list_methods",
    "register_method",
    "resolve_baseline",
    "resolve_target",
    "seeded",
    "upsample",
]

Target = int | Sequence[int] | Tensor | None

_REGISTRY: dict[str, type[SaliencyMethod]] = {}

M = TypeVar("M", bound="type[SaliencyMethod]")


class SaliencyMethod(ABC):
    """One attribution method. Subclasses set ``defaults`` and implement :meth:`attribute`.

    Attributes:
        name: Registry name (set by :func:`register_method`).
        defaults: Every accepted parameter with its default (the paper's, documented in the subclass
            docstring). :func:`explain_raw` refuses parameters not listed here.
        postprocess: The :class:`PostProcess` that :func:`explain` applies when the caller passes none.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    postprocess: ClassVar[PostProcess] = PostProcess()

    @abstractmethod
    def attribute(self, model: CamClassifier, x: Tensor, target: Tensor, **params: Any) -> Tensor:
        """Raw attributions ``[N, C, H, W]`` for ``x[N, C, H, W]`` and ``target`` (long ``[N]``)."""


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`SaliencyMethod` subclass under ``name``."""

    def decorator(cls: M) -> M:
        if name in _REGISTRY:
            raise SaliencyError(f"saliency method {name!r} is already registered")
        if not (isinstance(cls, type) and issubclass(cls, SaliencyMethod)):
            raise SaliencyError(f"{cls!r} is not a SaliencyMethod subclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> SaliencyMethod:
    """A fresh instance of the method registered under ``name``.

    Raises:
        UnknownMethodError: if there is none.
    """
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise UnknownMethodError(
            f"unknown saliency method {name!r}; registered: {', '.join(_REGISTRY)}"
        ) from None


# --------------------------------------------------------------------------------------------- helpers


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    """Slices ``[0, size), [size, 2·size), …`` covering ``range(n)`` (``size`` clamped to ≥ 1)."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@contextlib.contextmanager
def attribution_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode; restore its train/eval mode and parameters' ``requires_grad`` after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's (CPU, and ``device``'s CUDA) and NumPy's global RNGs; restore their states afterwards.

    captum draws SmoothGrad noise with ``torch.normal`` and GradientSHAP interpolation points with
    ``np.random.uniform`` from the global generators, so both are forked. ``seed=None`` leaves them alone.
    """
    if seed is None:
        yield
        return
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if (device.type == "cuda")
        else []
    )
    np_state = np.random.get_state()  # noqa: NPY002 - captum draws from the legacy global RNG
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(int(seed))
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(int(seed))
        np.random.seed(int(seed) % 2**32)  # noqa: NPY002 - idem
        try:
            yield
        finally:
            np.random.set_state(np_state)  # noqa: NPY002 - idem


def resolve_target(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    """``target`` → long tensor ``[N]`` on ``x.device`` (``None`` → predicted class).

    Raises:
        InvalidTargetError: wrong length, non-integer, or a class outside ``[0, K)``.
    """
    n = x.shape[0]
    if target is None:
        with torch.no_grad():
            return model(x).argmax(dim=1)
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise InvalidTargetError("target tensor must hold integers")
        t = target.reshape(-1).to(device=x.device, dtype=torch.long)
        if t.numel() == 1 and n != 1:
            t = t.expand(n)
    elif isinstance(target, int | np.integer):
        t = torch.full((n,), int(target), dtype=torch.long, device=x.device)
    else:
        values = list(target)
        if not all(isinstance(v, int | np.integer) for v in values):
            raise InvalidTargetError("target must be an int, a sequence of ints, an integer tensor or None")
        t = torch.tensor([int(v) for v in values], dtype=torch.long, device=x.device)
    if t.shape != (n,):
        raise InvalidTargetError(f"{t.numel()} targets for a batch of {n}")
    k = getattr(getattr(model, "classifier", None), "out_features", None)
    if t.numel() and (int(t.min()) < 0 or (k is not None and int(t.max()) >= k)):
        raise InvalidTargetError(f"target classes must lie in [0, {k})")
    return t.clone()


def resolve_baseline(model: nn.Module, x: Tensor, baseline: float | str | Tensor | np.ndarray) -> Tensor:
    """A baseline/reference image for ``x``: ``"black"`` → ``model.black_level`` everywhere, a float →
    that constant, or a tensor/array broadcastable to ``x`` (``[H, W]``, ``[1, 1, H, W]``, ``[N, 1, H, W]``).
    Returns ``[N, C, H, W]`` on ``x.device`` in ``x.dtype``."""
    if isinstance(baseline, str):
        if baseline != "black":
            raise SaliencyError(f"baseline must be 'black', a number or a tensor, got {baseline!r}")
        baseline = float(getattr(model, "black_level", 0.0))
    if isinstance(baseline, int | float | np.floating):
        return torch.full_like(x, float(baseline))
    b = torch.as_tensor(np.asarray(baseline) if isinstance(baseline, np.ndarray) else baseline)
    b = b.to(device=x.device, dtype=x.dtype)
    try:
        return torch.broadcast_to(b, x.shape).clone()
    except RuntimeError:
        raise SaliencyError(
            f"baseline of shape {tuple(b.shape)} does not broadcast to {tuple(x.shape)}"
        ) from None


def grad_input(x: Tensor) -> Tensor:
    """A detached copy of ``x`` that requires grad (captum's gradient methods differentiate w.r.t. it)."""
    return x.detach().clone().requires_grad_(True)


def upsample(maps: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize feature-resolution maps ``[N, h, w]`` or ``[N, C, h, w]`` to ``size`` (Grad-CAM's bilinear
    upsampling; ``align_corners=False``, the same op captum's ``LayerAttribution.interpolate`` uses).
    Returns the same rank as the input."""
    squeeze = maps.ndim == 3
    m = maps[:, None] if squeeze else maps
    align = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(m, size=tuple(size), mode=mode, **align)
    return out[:, 0] if squeeze else out


def _validate_input(model: nn.Module, x: Tensor) -> Tensor:
    if not isinstance(model, CamClassifier):
        raise SaliencyError(f"{type(model).__name__} does not implement the CamClassifier contract")
    if not isinstance(x, Tensor):
        raise SaliencyError("x must be a torch.Tensor [N, 1, H, W]")
    if x.ndim != 4 or x.shape[1] != model.in_channels or x.shape[0] == 0:
        raise SaliencyError(f"x must be [N, {model.in_channels}, H, W] with N ≥ 1, got {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise SaliencyError(f"x must be float32, got {x.dtype}")
    return x.detach()


# ------------------------------------------------------------------------------------------ entry points


def explain_raw(
    model: CamClassifier,
    x: Tensor,
    target: Target = None,
    method: str = "gradcam",
    **params: Any,
) -> Tensor:
    """Raw attributions of ``method`` for ``x``, without post-processing.

    Args:
        model: A :class:`~mimicry.models.base.CamClassifier`.
        x: ``float32[N, 1, H, W]`` model inputs (any device).
        target: Class(es) to explain; ``None`` = predicted class.
        method: A name from :func:`list_methods`.
        **params: Overrides of the method's ``defaults`` (unknown names are refused).

    Returns:
        ``float32[N, C, H, W]`` (``C = 1``) raw attributions on ``x.device``, detached. Their sign and
        scale are the method's own (e.g. IG sums to ``F(x) − F(baseline)``; IBA is in bits).

    Raises:
        UnknownMethodError, UnknownParameterError, InvalidTargetError, SaliencyError.
    """
    impl = get_method(method)
    unknown = sorted(set(params) - set(impl.defaults))
    if unknown:
        raise UnknownParameterError(
            f"{method} does not take {', '.join(unknown)}; parameters: {', '.join(impl.defaults)}"
        )
    merged = {**impl.defaults, **params}
    x = _validate_input(model, x)
    with attribution_mode(model):
        t = resolve_target(model, x, target)
        attr = impl.attribute(model, x, t, **merged)
    attr = attr.detach()
    if attr.shape != x.shape:
        raise SaliencyError(f"{method} returned shape {tuple(attr.shape)} for input {tuple(x.shape)}")
    return attr.to(torch.float32)


def explain(
    model: CamClassifier,
    x: Tensor,
    target: Target = None,
    method: str = "gradcam",
    *,
    postprocess: PostProcess | None = None,
    **params: Any,
) -> np.ndarray:
    """Saliency maps ``float32[N, H, W]`` in ``[0, 1]`` at input resolution (see module docstring).

    ``postprocess=None`` uses the method's default (:data:`~mimicry.saliency.postprocess.ARUN_ET_AL` for
    all methods except ``multilayer_iba``, whose binary intersection is neither clipped nor rescaled). Other
    arguments as :func:`explain_raw`. Returns a NumPy array on the host.
    """
    raw = explain_raw(model, x, target, method, **params)
    pp = postprocess if postprocess is not None else get_method(method).postprocess
    return pp(raw)


def cam_members(model: CamClassifier) -> list[CamClassifier]:
    """The single models whose feature layer a layer method (Grad-CAM, Guided Grad-CAM) attributes at.

    An :class:`~mimicry.models.ensemble.Ensemble` has no single ``cam_layer``: its Grad-CAM is, by definition
    (Watson et al., WACV 2023), the mean of its members' maps, so layer methods run per member and average.
    """
    submodels = getattr(model, "submodels", None)
    return list(submodels) if submodels is not None else [model]
