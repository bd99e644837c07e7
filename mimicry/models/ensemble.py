"""Ensembles of classifiers: mean of sub-model probabilities, mean of sub-model Grad-CAMs (Watson 2023).

Watson et al. (WACV 2023, Eq. 1): the ensemble ``M`` of ``S`` sub-models ``m_1 … m_S`` (one architecture,
different seeds / data orders) outputs the mean of the sub-models' outputs, here their softmax probabilities,
``p_M(x) = (1/S) Σ_i softmax(m_i(x))``; its explanation is the mean of the sub-models' Grad-CAM maps
``E_M(x) = (1/S) Σ_i E_i(x)`` (docs/methods.md, "Explanation ensemble"). The same module serves the paper's
*normal* ensemble (independently trained members) and the *explanation* ensemble (members trained with the
adversarial discriminator term; the trainer owns that loss).

:class:`Ensemble` is served exactly like one model: ``forward(x) -> logits``, ``forward_with_cam(x) ->
(logits, probs, cam)`` in one graph (so it exports to ONNX with the registry's signature), plus
:meth:`Ensemble.member_probs` for the ensemble-disagreement report. Its **logits are log mean
probabilities**, ``log p_M(x)`` (computed stably as ``logsumexp_i log_softmax(m_i(x)) − log S``), so
``softmax(logits) == p_M`` (up to float rounding) and every consumer that softmaxes logits gets the
ensemble's probabilities.

It is a :class:`~mimicry.models.base.CamClassifier` (the zoo builds it, the services treat it as one
model) but **not** a GAP → linear network: it has no single feature map, ``cam_layer`` or ``classifier``.
:meth:`Ensemble.features` and :attr:`Ensemble.cam_layer` raise
:class:`~mimicry.models.base.ModelContractError`, :func:`~mimicry.models.base.assert_contract` refuses it,
and captum's ``LayerGradCam`` cannot reproduce its cam (the mean of member Grad-CAMs is not the Grad-CAM
of ``log p_M``). Check the members with
``assert_contract`` and the ensemble with the member-wise identities (tested: probs, cam, logits).
Gradient-based saliency methods (IG, SmoothGrad, …) work on :meth:`Ensemble.forward` as on any model.

Zoo: registered as ``ensemble`` with JSON kwargs ``{"arch": "unet_tiny", "arch_kwargs": {...},
"n_members": S}``; ``state_dict`` keys are ``submodels.<i>.<member key>``, so a model card rebuilds it with
``build_model("ensemble", **card.arch_kwargs)`` and ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mimicry.models.base import CamClassifier, ModelContractError
from mimicry.models.zoo import architecture_of, build_model, register_architecture

__all__ = ["ENSEMBLE_ARCH", "Ensemble", "build_ensemble"]

#: The zoo name under which ensembles are registered (what a model card's ``architecture`` says).
ENSEMBLE_ARCH = "ensemble"


class Ensemble(CamClassifier):
    """Mean-probability ensemble of :class:`CamClassifier` sub-models (Watson et al., Eq. 1).

    Args:
        submodels: ``S ≥ 1`` classifiers with the same ``class_names``; their in-graph Grad-CAMs must share
            one grid for :meth:`forward_with_cam` (same architecture, or architectures of equal stride).

    Attributes:
        submodels: ``nn.ModuleList`` of the members (``state_dict`` keys ``submodels.<i>.…``).
        class_names: The members' classes, in logit order.

    Raises:
        ValueError: no sub-models, a member that is not a CamClassifier or an Ensemble, or members that
            disagree on their classes.
    """

    def __init__(self, submodels: Sequence[CamClassifier]) -> None:
        super().__init__()
        members = list(submodels)
        if not members:
            raise ValueError("an Ensemble needs at least one sub-model")
        for i, m in enumerate(members):
            if not isinstance(m, CamClassifier) or isinstance(m, Ensemble):
                raise ValueError(f"sub-model {i} is a {type(m).__name__}, not a (non-ensemble) CamClassifier")
            if tuple(m.class_names) != tuple(members[0].class_names):
                raise ValueError(
                    f"sub-model {i} has classes {m.class_names}, sub-model 0 has {members[0].class_names}"
                )
        self.submodels = nn.ModuleList(members)
        self.class_names = tuple(members[0].class_names)

    # -- zoo / card -------------------------------------------------------------------------------

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        """Zoo kwargs ``{"arch", "arch_kwargs", "n_members"}`` that rebuild this ensemble.

        Raises:
            ModelContractError: the members are not all of one registered architecture with recorded
                ``arch_kwargs`` (such an ensemble cannot be rebuilt from a card).
        """
        archs = {architecture_of(m) for m in self.submodels}
        kwargs = [getattr(m, "arch_kwargs", None) for m in self.submodels]
        arch = archs.pop() if len(archs) == 1 else None
        if arch is None or kwargs[0] is None or any(k != kwargs[0] for k in kwargs):
            raise ModelContractError("ensemble members are not one registered architecture with equal kwargs")
        return {"arch": arch, "arch_kwargs": dict(kwargs[0]), "n_members": len(self.submodels)}

    # -- contract ---------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def black_level(self) -> float:  # type: ignore[override]
        """The members' black level (set from the model card; setting it sets every member's)."""
        return float(self.submodels[0].black_level)

    @black_level.setter
    def black_level(self, value: float) -> None:
        for m in self.submodels:
            m.black_level = float(value)

    def features(self, x: Tensor) -> Tensor:
        """Not defined for an ensemble (no single feature map); see :meth:`forward_with_cam`.

        Raises:
            ModelContractError: always.
        """
        raise ModelContractError("an Ensemble has no single feature map; use its members' features()")

    @property
    def cam_layer(self) -> nn.Module:
        """Not defined for an ensemble (no single cam layer).

        Raises:
            ModelContractError: always; its Grad-CAM is the mean of the members' (:meth:`forward_with_cam`).
        """
        raise ModelContractError(
            "an Ensemble has no single cam_layer; its Grad-CAM is the mean of its members' (forward_with_cam)"
        )

    # -- outputs ----------------------------------------------------------------------------------

    def member_logits(self, x: Tensor) -> Tensor:
        """Every member's logits, ``[S, N, K]``."""
        return torch.stack([m(x) for m in self.submodels])

    def member_probs(self, x: Tensor) -> Tensor:
        """Every member's softmax probabilities, ``[S, N, K]`` (ensemble disagreement, uncertainty)."""
        return torch.softmax(self.member_logits(x), dim=-1)

    @staticmethod
    def _log_mean_probs(member_logits: Tensor) -> Tensor:
        """``log((1/S) Σ_i softmax(l_i))`` from ``[S, N, K]`` member logits, without underflow."""
        s = member_logits.shape[0]
        return torch.logsumexp(torch.log_softmax(member_logits, dim=-1), dim=0) - math.log(s)

    def forward(self, x: Tensor) -> Tensor:
        """Ensemble "logits" ``[N, K]`` = log mean member probabilities (``softmax`` of them = mean probs)."""
        return self._log_mean_probs(self.member_logits(x))

    def forward_with_cam(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits[N, K], probs[N, K], cam[N, K, h, w])`` in one graph, one pass per member.

        ``probs`` = mean of the members' softmax probabilities (Eq. 1), ``logits`` = log mean probabilities,
        ``cam`` = mean of the members' in-graph Grad-CAMs (each already ReLU-ed, so the mean is ≥ 0).

        Raises:
            ModelContractError: members' cams lie on different grids.
        """
        outs = [m.forward_with_cam(x) for m in self.submodels]
        # Compare as Python ints: under TorchScript tracing, shapes are traced tensors (never equal in a set).
        grids = {tuple(int(d) for d in o[2].shape[-2:]) for o in outs}
        if len(grids) != 1:
            raise ModelContractError(f"ensemble members' Grad-CAM grids differ: {sorted(grids)}")
        member_logits = torch.stack([o[0] for o in outs])
        probs = torch.stack([o[1] for o in outs]).mean(dim=0)
        cam = torch.stack([o[2] for o in outs]).mean(dim=0)
        return self._log_mean_probs(member_logits), probs, cam


@register_architecture(ENSEMBLE_ARCH)
def build_ensemble(arch: str, n_members: int, arch_kwargs: Mapping[str, Any] | None = None) -> Ensemble:
    """An :class:`Ensemble` of ``n_members`` freshly initialised ``build_model(arch, **arch_kwargs)``.

    Raises:
        ValueError: ``n_members < 1`` or ``arch`` is itself ``"ensemble"``.
        mimicry.models.zoo.ArchitectureError: ``arch`` / ``arch_kwargs`` cannot be built.
    """
    if isinstance(n_members, bool) or not isinstance(n_members, int) or n_members < 1:
        raise ValueError(f"n_members must be a positive integer, got {n_members!r}")
    if arch == ENSEMBLE_ARCH:
        raise ValueError("an ensemble's members cannot themselves be ensembles")
    return Ensemble([build_model(arch, **dict(arch_kwargs or {})) for _ in range(n_members)])
