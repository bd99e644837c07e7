"""Randomisation on the classification path and the random-logit check, against Quantus as the oracle.

* Stages: a UNet's decoder / segmentation head never reach the logits and are never a stage (checked by
  behaviour: re-initialising them leaves the logits and Grad-CAM bit-identical, re-initialising any stage
  changes the logits); an ensemble's stage re-initialises that block in every member; DenseNet's stages cover
  every parameter once.
* Quantus ``MPRT`` (Adebayo et al.'s cascading / independent randomisation) and ``RandomLogit`` (Sixt et al.)
  on the same model, inputs, explanation and similarity (2-D SSIM, ``data_range = 1``) give the same per-case
  scores as ``cascading_randomisation`` / ``independent_randomisation`` / ``random_logit`` when our check is
  given Quantus's re-initialisation draws (``reinit``). The documented difference: Quantus randomises every
  layer with ``reset_parameters``, so on a UNet it also "randomises" the decoder, whose maps stay identical.
* Known answers under the shipped default policy: a model whose Grad-CAM provably does not depend on its
  weights FAILs both randomisation criteria and the random-logit criterion; a small trained CNN PASSes them.
* On a small trained UNet the cascading SSIM falls with the stages and every stage moves the map.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import quantus
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import nn

from audit.checks import (
    cascading_randomisation,
    degradation_threshold,
    excluded_modules,
    independent_randomisation,
    other_classes,
    random_logit,
    randomisation_stages,
)
from audit.errors import CheckInputError
from audit.metrics import ssim
from audit.policy import evaluate, load_policy
from mimicry.models import CamClassifier, ToyCamNet, build_ensemble, densenet_tiny, unet_tiny
from mimicry.saliency import explain

S = 32


def _gradcam(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    return explain(model, x, t, "gradcam")


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: a bright patch on the left, class 1: on the right, class 2: none (noise only)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, S, S, generator=g) * 0.3
    y = torch.arange(n) % 3
    rows = torch.randint(6, S - 6, (n,), generator=g)
    for i in range(n):
        r = int(rows[i])
        if y[i] == 0:
            x[i, 0, r - 3 : r + 3, 3:9] += 2.0
        elif y[i] == 1:
            x[i, 0, r - 3 : r + 3, S - 9 : S - 3] += 2.0
    return x, y


def _train(model: nn.Module, steps: int, batch: int = 16) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        x, y = _blobs(batch, 1000 + step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _accuracy(model: nn.Module) -> float:
    x, y = _blobs(30, 7)
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def toy() -> nn.Module:
    torch.manual_seed(0)
    model = _train(ToyCamNet(width=8), steps=80)
    assert _accuracy(model) > 0.9
    return model


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    torch.manual_seed(0)
    model = _train(unet_tiny(), steps=40)
    assert _accuracy(model) > 0.9
    return model


# --------------------------------------------------------------------------------------------- stages


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_unet_stages_are_the_classification_path_only() -> None:
    torch.manual_seed(0)
    model = unet_tiny().eval()
    x, _ = _blobs(2, 0)
    stages = randomisation_stages(model, x)
    # Top-down: the head, the cam layer (the bottleneck stage), the stages below it, the stem.
    assert [s.name for s in stages] == [
        "classifier",
        "encoder.stages.2",
        "encoder.stages.1",
        "encoder.stages.0",
        "encoder.stem",
    ]
    assert model.get_submodule(stages[1].name) is model.cam_layer
    assert excluded_modules(model, x) == ["decoder", "head"]
    assert not any(m.startswith(("decoder", "head")) for s in stages for m in s.modules)
    # By behaviour: the excluded modules cannot move the logits or Grad-CAM; every stage moves the logits.
    t = torch.zeros(2, dtype=torch.long)
    before, cam = _logits(model, x), _gradcam(model, x, t)
    off = copy.deepcopy(model)
    with torch.no_grad():
        for p in [*off.decoder.parameters(), *off.head.parameters()]:
            p.add_(torch.randn_like(p))
    assert torch.equal(_logits(off, x), before)
    assert np.array_equal(_gradcam(off, x, t), cam)
    for s in stages:
        on = copy.deepcopy(model)
        with torch.no_grad():
            for p in on.get_submodule(s.name).parameters():
                p.add_(torch.randn_like(p))
        assert not torch.allclose(_logits(on, x), before), s.name


def test_densenet_stages_cover_every_parameter_once() -> None:
    torch.manual_seed(0)
    model = densenet_tiny().eval()
    stages = randomisation_stages(model)
    names = [s.name for s in stages]
    # The cam layer is the whole backbone: it is split into its blocks (MONAI DenseNet's feature children).
    assert names == [
        "classifier",
        "backbone.norm5",
        "backbone.denseblock3",
        "backbone.transition2",
        "backbone.denseblock2",
        "backbone.transition1",
        "backbone.denseblock1",
        "backbone.norm0",
        "backbone.conv0",
    ]
    owned = [id(p) for s in stages for p in model.get_submodule(s.name).parameters()]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())
    assert sum(s.n_params for s in stages) == sum(p.numel() for p in model.parameters())
    assert excluded_modules(model) == []


def test_an_ensemble_stage_reinitialises_that_block_in_every_member() -> None:
    torch.manual_seed(0)
    ens = build_ensemble("unet_tiny", n_members=2).eval()
    x, _ = _blobs(2, 0)
    stages = randomisation_stages(ens, x)
    assert [s.name for s in stages] == [s.name for s in randomisation_stages(ens.submodels[0], x)]
    for s in stages:
        assert s.modules == (f"submodels.0.{s.name}", f"submodels.1.{s.name}")
    assert excluded_modules(ens, x) == [f"submodels.{i}.{m}" for i in (0, 1) for m in ("decoder", "head")]
    original = {k: v.clone() for k, v in ens.state_dict().items()}
    changed: list[set[str]] = []

    def explainer(model, xx, tt):  # records which parameters / buffers differ from the trained model
        changed.append({k for k, v in model.state_dict().items() if not torch.equal(v, original[k])})
        return _gradcam(model, xx, tt)

    t = torch.zeros(2, dtype=torch.long)
    independent_randomisation(ens, x, t, explainer, method="gradcam", keys=["a", "b"])
    assert changed[0] == set()  # the trained model's maps
    assert len(changed) == len(stages) + 1
    for s, keys in zip(stages, changed[1:], strict=True):
        for i in (0, 1):  # that block in every member, and nothing else
            prefix = f"submodels.{i}.{s.name}."
            assert any(k.startswith(prefix) for k in keys), (s.name, i)
        assert all(k.startswith(tuple(f"submodels.{i}.{s.name}." for i in (0, 1))) for k in keys), s.name
    assert all(torch.equal(v, ens.state_dict()[k]) for k, v in original.items())  # the model is untouched


def test_models_without_a_path_or_with_root_parameters_are_refused() -> None:
    class RootParam(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3))[:, None] * self.w

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unused = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 3) + x.mean()

    with pytest.raises(CheckInputError):
        randomisation_stages(RootParam())
    with pytest.raises(CheckInputError):
        randomisation_stages(Constant())


# --------------------------------------------------------------------------------------------- Quantus


def _ssim_2d(a: np.ndarray, b: np.ndarray, batched: bool = False, **_: object) -> np.ndarray | float:
    """scikit-image's 2-D SSIM (library defaults, data_range 1) on Quantus's flattened (B, S·S) maps."""

    def one(u: np.ndarray, v: np.ndarray) -> float:
        return float(
            structural_similarity(
                u.reshape(S, S).astype(np.float64), v.reshape(S, S).astype(np.float64), data_range=1.0
            )
        )

    return np.array([one(u, v) for u, v in zip(a, b, strict=True)]) if batched else one(a, b)


def _quantus_explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    return _gradcam(model, x, t)[:, None]


def _quantus_draws(seed: int):
    """Quantus MPRT's re-initialisation: ``torch.manual_seed(seed + 1)``, then each layer's
    ``reset_parameters()``."""

    def reinit(modules, _stage_seed):
        for module in modules:
            for m in module.modules():
                if hasattr(m, "reset_parameters"):
                    torch.manual_seed(seed + 1)
                    m.reset_parameters()

    return reinit


@pytest.mark.parametrize(("order", "ours"), [("top_down", cascading_randomisation),
                                             ("independent", independent_randomisation)])  # fmt: skip
def test_randomisation_agrees_with_quantus_mprt(toy: nn.Module, order: str, ours) -> None:
    x, _ = _blobs(6, 11)
    t = _logits(toy, x).argmax(1)
    keys = [f"k{i}" for i in range(len(x))]
    seed = 42
    ref = quantus.MPRT(
        similarity_func=_ssim_2d,
        layer_order=order,
        seed=seed,
        abs=False,
        normalise=False,
        disable_warnings=True,
    )(
        model=copy.deepcopy(toy),
        x_batch=x.numpy(),
        y_batch=t.numpy(),
        a_batch=None,
        explain_func=_quantus_explain,
        channel_first=True,
        batch_size=len(x),
    )
    r = ours(toy, x, t, _gradcam, method="gradcam", keys=keys, seed=seed, reinit=_quantus_draws(seed))
    layers = [k for k in ref if k != "original"]
    # ToyCamNet: one layer per block, so Quantus's layers are our stages' layers; top-down in the same order
    # (Quantus lists independent randomisation's layers bottom-up: the order does not matter there).
    layer_of = {s: f"{s}.0" if s != "classifier" else s for s in r.details["stages"]}
    if order == "top_down":
        assert layers == list(layer_of.values())
    assert sorted(layers) == sorted(layer_of.values())
    for stage, layer in layer_of.items():
        assert r.array(f"ssim@{stage}", keys) == pytest.approx(np.asarray(ref[layer]), abs=1e-6), layer
    assert ref["original"] == pytest.approx([1.0] * len(x))


def test_quantus_mprt_also_randomises_a_unet_decoder_whose_maps_never_change() -> None:
    """The documented difference in convention: Quantus's layers are every module with
    ``reset_parameters``; on a UNet the decoder's and the segmentation head's leave Grad-CAM unchanged
    (similarity 1), which is why our stages follow the classification path instead."""
    torch.manual_seed(0)
    model = unet_tiny().eval()
    x, _ = _blobs(2, 0)
    t = torch.zeros(2, dtype=torch.long)
    ref = quantus.MPRT(
        similarity_func=_ssim_2d, layer_order="independent", seed=0, abs=False, normalise=False,
        disable_warnings=True,
    )(
        model=copy.deepcopy(model), x_batch=x.numpy(), y_batch=t.numpy(), a_batch=None,
        explain_func=_quantus_explain, channel_first=True, batch_size=2,
    )  # fmt: skip
    off_path = [k for k in ref if k.startswith(("decoder", "head"))]
    assert off_path
    for k in off_path:
        assert ref[k] == pytest.approx([1.0, 1.0]), k
    ours = randomisation_stages(model, x)
    assert not any(m.startswith(("decoder", "head")) for s in ours for m in s.modules)


def test_random_logit_agrees_with_quantus(toy: nn.Module) -> None:
    x, _ = _blobs(9, 12)
    t = _logits(toy, x).argmax(1)
    keys = [f"k{i}" for i in range(len(x))]
    for seed in (0, 42):
        ref = quantus.RandomLogit(
            similarity_func=_ssim_2d,
            num_classes=3,
            seed=seed,
            abs=False,
            normalise=False,
            disable_warnings=True,
        )(
            model=copy.deepcopy(toy),
            x_batch=x.numpy(),
            y_batch=t.numpy(),
            a_batch=None,
            explain_func=_quantus_explain,
            channel_first=True,
            batch_size=len(x),
        )
        r = random_logit(toy, x, _gradcam, method="gradcam", keys=keys, seed=seed)
        assert r.array("ssim", keys) == pytest.approx(np.asarray(ref), abs=1e-6)


def test_other_classes_are_uniform_over_the_other_classes() -> None:
    t = np.repeat(np.arange(4), 500)
    o = other_classes(t, 4, seed=3)
    assert not np.any(o == t)
    for c in range(4):
        counts = np.bincount(o[t == c], minlength=4)
        assert counts[c] == 0
        assert counts.sum() == 500
        assert counts[np.arange(4) != c].min() > 500 / 3 * 0.75
    with pytest.raises(CheckInputError):
        other_classes([0], 1, seed=0)
    with pytest.raises(CheckInputError):
        other_classes([3], 3, seed=0)


# --------------------------------------------------------------------------------------------- verdicts


class _InputOnlyFeatures(nn.Module):
    """``A = avgpool4(x)²`` (one channel, non-negative) plus ``0 × conv(x)``: the conv is on the logits'
    graph but contributes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4) ** 2 + 0.0 * F.avg_pool2d(self.conv(x), 4)


class WeightFreeCam(CamClassifier):
    """Logits ``(W · GAP(A))²`` without bias. The Grad-CAM weight of the one channel is
    ``2 W_c² GAP(A) / (h·w) ≥ 0`` whatever the weights, so Grad-CAM is ``A`` (min-max scaled): a function of
    the input alone, the same after any re-initialisation and the same for every class."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(inplace=False))
        self.features_ = _InputOnlyFeatures()
        self.classifier = nn.Linear(1, 3, bias=False)

    @property
    def cam_layer(self) -> nn.Module:
        return self.features_

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_(x + 0.0 * self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3))) ** 2


def _audit(model: nn.Module) -> tuple[dict[str, str], list[float]]:
    """Verdicts of the shipped default policy's randomisation and random-logit criteria (Grad-CAM), and
    the independent randomisation's mean SSIM per stage."""
    policy = load_policy(None)
    x, _ = _blobs(12, 5)
    t = _logits(model, x).argmax(1)
    keys = [f"k{i}" for i in range(len(x))]
    maps = _gradcam(model, x, t)
    thr = degradation_threshold(maps, n_pairs=policy.randomisation.n_pairs, seed=policy.randomisation.seed)
    common = {"method": "gradcam", "keys": keys, "original": maps, "threshold": thr}
    independent = independent_randomisation(model, x, t, _gradcam, **common)
    results = [
        cascading_randomisation(model, x, t, _gradcam, **common),
        independent,
        random_logit(model, x, _gradcam, targets=t, **common),
    ]
    wanted = {"randomisation", "independent_randomisation", "random_logit"}
    verdicts = {v.criterion: v.status for v in evaluate(policy, results, ["gradcam"])}
    return {k: v for k, v in verdicts.items() if k in wanted}, independent.details["curve"]["ssim"]


def test_a_weight_independent_gradcam_fails_and_a_trained_cnn_passes(toy: nn.Module) -> None:
    torch.manual_seed(0)
    weight_free = WeightFreeCam().eval()
    x, _ = _blobs(4, 5)
    assert [s.name for s in randomisation_stages(weight_free, x)] == ["classifier", "features_", "stem"]
    verdicts, curve = _audit(weight_free)
    assert verdicts == {"randomisation": "FAIL", "independent_randomisation": "FAIL", "random_logit": "FAIL"}
    assert curve == pytest.approx([1.0] * 3)
    verdicts, curve = _audit(toy)
    assert (verdicts["randomisation"], verdicts["random_logit"]) == ("PASS", "PASS")
    # Independent randomisation (not gating in the default policy): every stage moves the map, though
    # re-initialising the first block alone leaves maps more alike than two images' maps (SSIM_max FAIL).
    assert max(curve) < 0.95


def test_unet_ssim_falls_across_the_stages_and_every_stage_moves_the_map(unet: nn.Module) -> None:
    x, _ = _blobs(8, 3)
    t = _logits(unet, x).argmax(1)
    keys = [f"k{i}" for i in range(len(x))]
    maps: list[np.ndarray] = []

    def recording(model, xx, tt):
        maps.append(_gradcam(model, xx, tt))
        return maps[-1]

    original = recording(unet, x, t)
    thr = degradation_threshold(original)
    r = cascading_randomisation(unet, x, t, recording, method="gradcam", keys=keys, original=original)
    curve = r.details["curve"]["ssim"]
    assert len(curve) == len(maps) - 1 == 5
    assert curve[0] < 0.95  # the head alone already changes the map
    assert curve[1] < curve[0]  # the cam layer takes it further
    assert max(curve[1:]) < curve[0]
    assert r.summaries["ssim_full"].mean < thr[0]
    # Every stage moves the map (a stage off the classification path would leave it identical).
    for i in range(1, len(maps)):
        assert float(np.mean(ssim(maps[i - 1], maps[i], data_range=1.0))) < 0.95, r.details["stages"][i - 1]
    ind = independent_randomisation(unet, x, t, _gradcam, method="gradcam", keys=keys, original=original)
    assert max(ind.details["curve"]["ssim"]) < 0.95
    assert ind.summaries["ssim_max"].mean < 0.95
