"""Random-logit sanity check (Sixt et al., "When Explanations Lie", ICML 2020; Quantus ``RandomLogit``).

A map that explains a class should change when another class is explained: Sixt et al. show that many
modified-backpropagation methods return nearly the same map for every logit, i.e. they explain the input, not
the decision. Per case: the map of the **predicted** class ``c`` and the map of a randomly chosen **other**
class ``c' ≠ c`` of the same image, compared by SSIM (scikit-image defaults, explicit ``data_range``, as the
randomisation checks) and Spearman rank correlation. High similarity is the failure.

The other class follows Quantus's convention exactly (so the two agree case by case, tested):
``numpy.random.RandomState(seed).randint(0, K - 1, N)`` indexes, per case, the classes other than ``c`` in
ascending order. Quantus flattens maps before its default SSIM; here SSIM is the 2-D one the randomisation
checks use (Quantus accepts it as ``similarity_func``).

Baseline ``degradation_threshold`` (the mean SSIM / Spearman between maps of *different* images,
:func:`audit.checks.randomisation.degradation_threshold`): the default policy's criterion PASSes when the
other class's map is less similar to the predicted class's map than two different images' maps are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from audit.checks.base import BootstrapSettings, CheckResult
from audit.checks.randomisation import Explainer
from audit.errors import CheckInputError
from audit.metrics import spearman, ssim

__all__ = ["RANDOM_LOGIT_METRICS", "other_classes", "random_logit"]

#: Per-case metrics of the ``random_logit`` check.
RANDOM_LOGIT_METRICS: tuple[str, ...] = ("ssim", "spearman")


def other_classes(targets: Sequence[int] | np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """One random class ``≠ targets[i]`` per case (Quantus ``RandomLogit``'s draw, see the module docstring).

    Raises:
        CheckInputError: fewer than two classes, or a target outside ``[0, n_classes)``.
    """
    t = np.asarray(targets, dtype=np.int64).ravel()
    if n_classes < 2:
        raise CheckInputError("the random-logit check needs at least two classes")
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise CheckInputError(f"targets must lie in [0, {n_classes}), got {t.min()}..{t.max()}")
    pick = np.random.RandomState(seed).randint(0, n_classes - 1, t.size)
    return np.where(pick < t, pick, pick + 1)  # the pick-th class of those other than t, in ascending order


def random_logit(
    model: nn.Module,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    method: str,
    keys: Sequence[str],
    targets: torch.Tensor | None = None,
    seed: int = 0,
    data_range: float = 1.0,
    original: np.ndarray | None = None,
    threshold: tuple[float, float] | None = None,
    class_names: Sequence[str] = (),
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Random-logit check of ``explainer`` on ``model`` (check ``random_logit``).

    Args:
        x: ``[N, 1, S, S]`` model inputs, one key per image.
        targets: the explained classes (``None``: the model's predicted classes).
        original: the maps of ``targets`` when already computed (``[N, S, S]``).
        threshold: ``(ssim, spearman)`` degradation thresholds, stored as
            ``baselines["degradation_threshold"]``.

    Per case ``ssim`` and ``spearman`` between the two maps; ``case_class`` is the explained class and
    ``details["other_class"]`` maps each case key to the other class explained.

    Raises:
        CheckInputError: mismatched inputs, or a model with fewer than two classes.
    """
    if x.ndim != 4 or x.shape[0] != len(keys):
        raise CheckInputError("x must be [N,1,S,S] with one key per image")
    with torch.no_grad():
        logits = model(x)
    n_classes = int(logits.shape[1])
    if targets is None:
        targets = logits.argmax(dim=1)
    if targets.shape[0] != len(keys):
        raise CheckInputError("one target per image is needed")
    others = torch.from_numpy(other_classes(targets.cpu().numpy(), n_classes, seed))
    base = explainer(model, x, targets) if original is None else np.asarray(original)
    alt = explainer(model, x, others)
    s = np.atleast_1d(np.asarray(ssim(base, alt, data_range=data_range), dtype=np.float64))
    r = np.atleast_1d(np.asarray(spearman(base, alt), dtype=np.float64))
    result = CheckResult("random_logit", method)

    def name(i: int) -> str:
        return class_names[i] if 0 <= i < len(class_names) else str(i)

    for j, k in enumerate(keys):
        result.add_case(k, {"ssim": s[j], "spearman": r[j]}, name(int(targets[j])))
    result.details = {"other_class": {k: name(int(others[j])) for j, k in enumerate(keys)}, "seed": seed}
    if threshold is not None:
        result.baselines["degradation_threshold"] = {"ssim": threshold[0], "spearman": threshold[1]}
    return result.summarise(bootstrap)
