"""The model contract every mimicry classifier satisfies (docs/architecture.md, "Why a twin";
docs/methods.md, "Saliency methods").

A :class:`CamClassifier` takes one-channel images ``x[N, 1, H, W]`` and is, by construction,

``features(x) -> A[N, C, h, w]`` (the final convolutional feature map, the output of :attr:`cam_layer`)
→ global average pool → ``classifier: nn.Linear(C, K)`` → logits ``[N, K]``.

Because the head is GAP → linear, Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1–2) is exact as a forward op:
the gradient of logit ``c`` with respect to ``A_k(i, j)`` is ``W_ck / (h·w)`` everywhere, so the Grad-CAM
weight of channel ``k`` is ``α_k^c = W_ck / (h·w)`` and

``cam_c = ReLU(Σ_k W_ck · A_k / (h·w))``.

:meth:`CamClassifier.forward_with_cam` computes it inside the graph (no backward pass), so it is exported to
ONNX next to the logits and probabilities and served by any backend. The classes are mutually exclusive
(Normal, CHF, pneumonia), so probabilities are a softmax.

Every ReLU must be an ``nn.ReLU(inplace=False)`` *module*: guided backprop (captum) hooks ReLU modules, and
in-place activations break backward hooks. :func:`assert_contract` checks all of this on a model instance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "CamClassifier",
    "ModelContractError",
    "assert_contract",
    "cam_from_features",
]

DEFAULT_CLASS_NAMES: tuple[str, ...] = ("Normal", "CHF", "pneumonia")


class ModelContractError(ValueError):
    """A model does not satisfy the :class:`CamClassifier` contract."""


def cam_from_features(features: Tensor, weight: Tensor) -> Tensor:
    """In-graph Grad-CAM from a feature map and the linear head's weight.

    Args:
        features: ``A[N, C, h, w]``, the cam-layer output.
        weight: ``W[K, C]``, the weight of the ``nn.Linear(C, K)`` head.

    Returns:
        ``cam[N, K, h, w] = ReLU(Σ_k W_ck · A_k / (h·w))`` — Grad-CAM (Selvaraju et al. 2017, Eq. 1–2) for
        every class at once, exact for a GAP → linear head. The bias does not enter (it has zero gradient
        with respect to ``A``). Written as a 1×1 convolution so it exports to ONNX as a plain ``Conv``.
    """
    h, w = features.shape[-2], features.shape[-1]
    scores = F.conv2d(features, weight[:, :, None, None]) / (h * w)
    return torch.clamp(scores, min=0.0)


class CamClassifier(nn.Module, ABC):
    """Base class of every mimicry classifier (one input channel, GAP → linear head).

    Subclasses set ``self.classifier = nn.Linear(C, K)``, implement :meth:`features` and
    :attr:`cam_layer` (the module whose *output* is the tensor :meth:`features` returns), and build every
    ReLU as ``nn.ReLU(inplace=False)``.

    Attributes:
        class_names: Names of the output classes, in logit order.
        black_level: The model-input value of a black pixel, ``(0 − mean) / std`` under the model's
            preprocessing (:class:`mimicry.preprocess.PreprocessSpec`; default ``(0 − 0.5) / 0.25 = −2``).
            Integrated gradients uses it as its *black baseline* (Arun et al.). Whoever loads a model from a
            model card sets it from the card's preprocessing spec.
    """

    in_channels: ClassVar[int] = 1
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES
    black_level: float = -2.0
    classifier: nn.Linear

    @abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """``x[N, 1, H, W]`` → final conv feature map ``A[N, C, h, w]`` (the output of :attr:`cam_layer`)."""

    @property
    @abstractmethod
    def cam_layer(self) -> nn.Module:
        """The module whose output is ``A`` (for captum's ``LayerGradCam`` and forward hooks)."""

    @property
    def num_classes(self) -> int:
        return int(self.classifier.out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, K]`` = ``classifier(GAP(features(x)))``."""
        return self.classifier(self.features(x).mean(dim=(2, 3)))

    def forward_with_cam(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[N, K]``, softmax probabilities ``[N, K]`` and in-graph Grad-CAM ``[N, K, h, w]``.

        The CAM is at feature-map resolution, one map per class (see :func:`cam_from_features`); upsample
        it to the input with :func:`mimicry.saliency.upsample` (bilinear, as in Grad-CAM).
        """
        a = self.features(x)
        logits = self.classifier(a.mean(dim=(2, 3)))
        probs = torch.softmax(logits, dim=1)
        return logits, probs, cam_from_features(a, self.classifier.weight)


_RELU_FUNCS = {F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}


class _ReluCallCounter(TorchFunctionMode):
    """Counts ReLU calls made through torch functions (functional, tensor method or module)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        if func in _RELU_FUNCS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def assert_contract(model: nn.Module, size: int = 64, atol: float = 1e-5) -> None:
    """Check that ``model`` satisfies the :class:`CamClassifier` contract; raise otherwise.

    Checks: it is a :class:`CamClassifier` with an ``nn.Linear`` head and ``len(class_names) == K``; no
    ``nn.ReLU(inplace=True)`` (nor other in-place activation modules); no functional ReLU in ``forward``
    (detected by counting ReLU calls under a ``TorchFunctionMode`` against calls of ``nn.ReLU`` modules);
    on a dummy batch ``[2, 1, size, size]``: ``features`` is ``[2, C, h, w]`` with ``C`` = the head's
    ``in_features``, ``cam_layer``'s output is that tensor, ``forward`` = ``classifier(GAP(features))``,
    and ``forward_with_cam`` returns consistent logits, probabilities summing to 1 and a non-negative
    ``[2, K, h, w]`` CAM. The model's train/eval mode is restored afterwards.

    Raises:
        ModelContractError: naming the first violated clause.
    """
    if not isinstance(model, CamClassifier):
        raise ModelContractError(f"{type(model).__name__} is not a CamClassifier")
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise ModelContractError("model.classifier must be an nn.Linear(C, K)")
    k = head.out_features
    if len(model.class_names) != k:
        raise ModelContractError(f"{len(model.class_names)} class names for {k} outputs")
    for name, module in model.named_modules():
        if getattr(module, "inplace", False):
            raise ModelContractError(
                f"module {name!r} ({type(module).__name__}) is in-place; build it with inplace=False"
            )
    cam_layer = model.cam_layer
    if not any(m is cam_layer for m in model.modules()):
        raise ModelContractError("cam_layer is not a submodule of the model")

    relu_modules = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    module_calls = 0

    def _count(_m: nn.Module, _i: Any) -> None:
        nonlocal module_calls
        module_calls += 1

    captured: list[Tensor] = []

    def _capture(_m: nn.Module, _i: Any, out: Tensor) -> None:
        captured.append(out)

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(2, model.in_channels, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    handles = [m.register_forward_pre_hook(_count) for m in relu_modules]
    handles.append(cam_layer.register_forward_hook(_capture))
    counter = _ReluCallCounter()
    try:
        model.eval()
        with torch.no_grad():
            with counter:
                logits = model(x)
            relu_module_calls = module_calls
            captured.clear()
            a = model.features(x)
            logits2, probs, cam = model.forward_with_cam(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    if counter.calls > relu_module_calls:
        raise ModelContractError(
            f"forward calls ReLU {counter.calls} times but nn.ReLU modules run {relu_module_calls} times: "
            "use nn.ReLU(inplace=False) modules, not functional relu"
        )
    if a.ndim != 4 or a.shape[0] != 2 or a.shape[1] != head.in_features:
        raise ModelContractError(f"features must be [N, {head.in_features}, h, w], got {tuple(a.shape)}")
    if not captured or captured[0].shape != a.shape or not torch.allclose(captured[0], a, atol=atol):
        raise ModelContractError("cam_layer's output is not the tensor returned by features()")
    if logits.shape != (2, k):
        raise ModelContractError(f"forward must return logits [N, {k}], got {tuple(logits.shape)}")
    if not torch.allclose(logits, head(a.mean(dim=(2, 3))), atol=atol):
        raise ModelContractError("forward(x) != classifier(global_average_pool(features(x)))")
    if not torch.allclose(logits2, logits, atol=atol):
        raise ModelContractError("forward_with_cam logits differ from forward")
    if not torch.allclose(probs.sum(dim=1), torch.ones(2, device=device), atol=atol):
        raise ModelContractError("forward_with_cam probabilities do not sum to 1")
    if cam.shape != (2, k, a.shape[2], a.shape[3]) or bool((cam < 0).any()):
        raise ModelContractError(f"forward_with_cam cam must be non-negative [N, {k}, h, w]")
