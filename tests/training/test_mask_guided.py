"""Mask-guided recipes of Viviano et al. (ICLR 2021): ActDiff, GradMask, reconstruct-masked.

Each penalty is checked by hand on tiny tensors, against models whose dependence on the outside of the ROI
is known (zero or not); samples without a mask contribute nothing; each recipe reduces its loss; the
``configs/*-tiny.yaml`` run end to end through ``mimicry train`` and publish; the ``-paper.yaml`` validate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import typer
import yaml
from torch import Tensor, nn
from typer.testing import CliRunner

from mimicry.models.base import DEFAULT_CLASS_NAMES, CamClassifier
from mimicry.models.zoo import list_architectures, register_architecture
from mimicry.registry import Registry
from tests.training import MODEL_SIZE, MULTITASK_ARCH, easy_bundle, make_config
from training.config import ConfigError, TrainConfig, load_config, parse_config
from training.data import Batch
from training.loop import train
from training.recipes import RecipeContext, RecipeError, get_recipe
from training.recipes.actdiff import actdiff_penalty, dilate_roi, permute_outside_roi, roi_weight
from training.recipes.gradmask import class_contrast, gradmask_penalty
from training.recipes.reconstruct_masked import masked_reconstruction_loss

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
WINDOW_ARCH = "test_roi_window_net"
PENALTY_TERM = {
    "actdiff": "train_actdiff",
    "gradmask": "train_gradmask",
    "reconstruct_masked": "train_recon_masked",
}
SIDE = MODEL_SIZE // 4  # easy_bundle's ROI is the central square [SIDE, SIZE - SIDE)


class RoiWindowNet(CamClassifier):
    """Reads only the central square of the input (``easy_bundle``'s ROI): ``features = conv(x · window)``.

    Permuting or changing pixels outside the window cannot change any output, so ActDiff and GradMask must be
    exactly zero for it. No BatchNorm: samples are independent.
    """

    def __init__(self, width: int = 4, class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        window = torch.zeros(1, 1, MODEL_SIZE, MODEL_SIZE)
        window[..., SIDE : MODEL_SIZE - SIDE, SIDE : MODEL_SIZE - SIDE] = 1.0
        self.register_buffer("window", window)
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.classifier = nn.Linear(width, len(self.class_names))

    def encoder_preactivation(self, x: Tensor) -> Tensor:
        return self.conv(x * self.window)

    def features(self, x: Tensor) -> Tensor:
        return torch.relu(self.encoder_preactivation(x))

    @property
    def cam_layer(self) -> nn.Module:
        return self.conv


if WINDOW_ARCH not in list_architectures():
    register_architecture(WINDOW_ARCH)(RoiWindowNet)


def _recipe(recipe: dict, arch: str, arch_kwargs: dict | None = None):
    cfg = make_config(Path("unused"), recipe=recipe, model={"arch": arch, "arch_kwargs": arch_kwargs or {}})
    ctx = RecipeContext(cfg, DEFAULT_CLASS_NAMES, MODEL_SIZE, torch.device("cpu"))
    r = get_recipe(recipe["name"])(ctx)
    r.setup()
    return r


def _batch(n: int = 6, has_mask: Sequence[bool] | None = None) -> Batch:
    b = easy_bundle(n_train=n).train.batch(slice(None))
    if has_mask is None:
        return b
    return Batch(**{**b.__dict__, "has_mask": torch.tensor(list(has_mask), dtype=torch.bool)})


# ------------------------------------------------------------------ mask helpers


def test_dilate_roi_uses_a_disk_of_the_given_radius() -> None:
    m = torch.zeros(1, 1, 7, 7, dtype=torch.bool)
    m[0, 0, 3, 3] = True
    assert torch.equal(dilate_roi(m, 0), m)
    assert int(dilate_roi(m, 1).sum()) == 5  # the plus shape
    assert int(dilate_roi(m, 2).sum()) == 13  # |dy|² + |dx|² <= 4
    d2 = dilate_roi(m, 2)[0, 0]
    assert [bool(d2[1, 3]), bool(d2[3, 5]), bool(d2[1, 1]), bool(d2[2, 2])] == [True, True, False, True]
    with pytest.raises(RecipeError):
        dilate_roi(m, -1)


def test_roi_weight_keeps_the_roi_at_one_and_adds_a_fading_halo() -> None:
    m = torch.zeros(1, 1, 9, 9, dtype=torch.bool)
    m[..., 4, 4] = True
    assert torch.equal(roi_weight(m, 1, 0.0), dilate_roi(m, 1).float())
    w = roi_weight(m, 1, 1.0)[0, 0]
    assert float(w.max()) == 1.0
    assert float(w.min()) >= 0.0
    assert torch.all(w[dilate_roi(m, 1)[0, 0]] == 1.0)
    assert 0.0 < float(w[4, 6]) < 1.0  # next to the dilated ROI
    assert float(w[4, 6]) > float(w[4, 7]) > float(w[4, 8])  # fades with distance


def test_permutation_keeps_inside_pixels_and_the_outside_multiset() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 6, 6, generator=g)
    inside = torch.zeros(3, 1, 6, 6, dtype=torch.bool)
    inside[0, 0, 1:4, 2:5] = True
    inside[1] = True  # everything inside: unchanged
    inside[2, 0, 0, :] = True
    xm = permute_outside_roi(x, inside, generator=torch.Generator().manual_seed(1))
    assert xm.shape == x.shape
    assert torch.equal(xm[1], x[1])
    for i in (0, 2):
        ins = inside[i, 0]
        assert torch.equal(xm[i][:, ins], x[i][:, ins])  # inside exactly kept
        out_x, out_m = x[i][:, ~ins], xm[i][:, ~ins]
        assert torch.equal(out_x[0].sort().values, out_m[0].sort().values)  # outside multiset kept
        # both channels of a pixel move together: the (c0, c1) pairs are the same set of pairs
        pairs = sorted(map(tuple, out_x.T.tolist()))
        assert pairs == sorted(map(tuple, out_m.T.tolist()))
        assert not torch.equal(out_x, out_m)  # and the positions really changed
    again = permute_outside_roi(x, inside, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, xm)  # seeded: reproducible


# ------------------------------------------------------------------ ActDiff


def test_actdiff_distance_by_hand() -> None:
    a = torch.zeros(2, 2, 1, 1)
    b = torch.tensor([[3.0, 4.0], [0.0, 1.0]]).view(2, 2, 1, 1)
    assert actdiff_penalty([b], [a]).tolist() == [5.0, 1.0]
    c = torch.tensor([[0.0, 0.0], [0.0, 3.0]]).view(2, 2, 1, 1)
    assert actdiff_penalty([b, c], [a, a]).tolist() == [2.5, 2.0]  # mean over layers
    z = torch.zeros(1, 3, requires_grad=True)
    actdiff_penalty([z], [torch.zeros(1, 3)]).sum().backward()
    assert torch.equal(z.grad, torch.zeros(1, 3))  # no NaN gradient at zero distance


def test_actdiff_is_zero_for_an_encoder_blind_outside_the_roi_and_positive_otherwise() -> None:
    batch = _batch()
    blind = _recipe({"name": "actdiff", "lambda_act": 10.0}, WINDOW_ARCH)
    terms = blind.training_step(batch)
    assert float(terms["actdiff"]) == 0.0
    assert float(terms["loss"].detach()) == float(terms["cls"])
    # the same net reading everything (window of ones) sees the permutation
    blind.modules["model"].window.fill_(1.0)
    assert float(blind.training_step(batch)["actdiff"]) > 0.0
    # dilation grows the kept region: dilating the ROI by the whole image leaves nothing to permute
    seeing = _recipe({"name": "actdiff", "layer": "features", "roi_dilation_px": 2 * MODEL_SIZE}, "toy")
    assert float(seeing.training_step(batch)["actdiff"]) == 0.0


def test_actdiff_ignores_samples_without_a_mask() -> None:
    r = _recipe({"name": "actdiff", "layer": "features"}, "toy", {"width": 8})
    mixed = _batch(6, [True, False, True, False, False, False])
    full = easy_bundle(n_train=6).train
    subset = full.batch([0, 2])
    torch.manual_seed(5)
    a = r.training_step(mixed)["actdiff"]
    torch.manual_seed(5)
    b = r.training_step(subset)["actdiff"]
    assert float(a) > 0.0
    assert torch.equal(a, b)  # the unmasked samples add nothing (the same permutation draw)
    none = r.training_step(_batch(6, [False] * 6))
    assert float(none["actdiff"]) == 0.0
    assert none["loss"].requires_grad


def test_actdiff_needs_preactivations_or_a_decoder(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="encoder_preactivation"):
        _recipe({"name": "actdiff"}, "toy")
    with pytest.raises(RecipeError, match="forward_multitask"):
        _recipe({"name": "actdiff", "lambda_recon": 1.0}, WINDOW_ARCH)
    with pytest.raises(ConfigError, match=r"recipe\.lambda_act"):
        parse_config({"data": {"root": "x"}, "recipe": {"name": "actdiff", "lambda_act": -1}})


# ------------------------------------------------------------------ GradMask


class _LinearPixelNet(nn.Module):
    """``logits = W · flatten(x) + b`` with integer weights: input gradients known exactly."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight  # [K, P]

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T


def _grad_setup() -> tuple[Tensor, Tensor, Tensor]:
    # 2x2 images (P = 4), ROI = pixel 0 only; K = 3.
    w = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.0, -2.0, 4.0, 1.0], [2.0, 0.0, 0.0, 3.0]])
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, -1.0, 2.0]]).view(2, 1, 2, 2)
    roi = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    roi[:, 0, 0, 0] = True
    return w, x, roi


def test_gradmask_penalty_by_hand() -> None:
    w, x0, roi = _grad_setup()
    labels = torch.tensor([0, 2])
    net = _LinearPixelNet(w)
    outside = 1.0 - roi.float()
    x = x0.clone().requires_grad_(True)
    logits = net(x)
    assert logits.tolist() == [[2.0, 3.0, 5.0], [0.0, -4.0, 6.0]]
    # target_vs_rest: c0 = 2 - 4 = -2 -> grad = -(w0 - (w1+w2)/2) = -[0, 3, -2, -3] = [0, -3, 2, 3]
    #                 c1 = 6 - (0 - 4)/2 = 8 -> grad = w2 - (w0+w1)/2 = [1.5, 0, -2, 3]
    # outside pixels 1..3: |.| means: (3+2+3)/3 = 8/3 and (0+2+3)/3 = 5/3 -> mean 13/6
    pen = gradmask_penalty(logits, x, labels, outside, torch.tensor([True, True]))
    assert float(pen.detach()) == pytest.approx(13 / 6, rel=1e-6)
    assert pen.requires_grad
    x = x0.clone().requires_grad_(True)
    pen_sum = gradmask_penalty(net(x), x, labels, outside, torch.tensor([True, True]), pixel_reduction="sum")
    assert float(pen_sum.detach()) == pytest.approx(13 / 2, rel=1e-6)
    # all_pairs: sample 0 logits [2,3,5]: pairs (0,1),(0,2),(1,2) all negative differences ->
    # grad = -((w0-w1) + (w0-w2) + (w1-w2))/3 = -(2w0 - 2w2)/3 = [2/3, -4/3, 0, 8/3] -> outside mean 4/3
    x = x0.clone().requires_grad_(True)
    pen_pairs = gradmask_penalty(
        net(x), x, labels, outside, torch.tensor([True, False]), contrast="all_pairs"
    )
    assert float(pen_pairs.detach()) == pytest.approx(4 / 3, rel=1e-6)
    # only the masked sample counts: sample 0 alone under target_vs_rest is 8/3
    x = x0.clone().requires_grad_(True)
    only0 = gradmask_penalty(net(x), x, labels, outside, torch.tensor([True, False]))
    assert float(only0.detach()) == pytest.approx(8 / 3, rel=1e-6)
    x = x0.clone().requires_grad_(True)
    assert float(gradmask_penalty(net(x), x, labels, outside, torch.tensor([False, False])).detach()) == 0.0


def test_gradmask_is_zero_for_a_model_reading_only_the_roi() -> None:
    w, x0, roi = _grad_setup()
    w_inside = w.clone()
    w_inside[:, 1:] = 0.0
    x = x0.clone().requires_grad_(True)
    net = _LinearPixelNet(w_inside)
    pen = gradmask_penalty(net(x), x, torch.tensor([0, 1]), 1.0 - roi.float(), torch.tensor([True, True]))
    assert float(pen.detach()) == 0.0
    # through the recipe on a real (conv) network that only reads the ROI, and on one that reads everything
    batch = _batch()
    blind = _recipe({"name": "gradmask", "lambda_grad": 10.0}, WINDOW_ARCH)
    assert float(blind.training_step(batch)["gradmask"]) == 0.0
    blind.modules["model"].window.fill_(1.0)
    assert float(blind.training_step(batch)["gradmask"]) > 0.0


def test_class_contrast_reduces_to_the_binary_contrast() -> None:
    logits = torch.tensor([[0.5, 2.0], [3.0, -1.0]])
    expected = (logits[:, 1] - logits[:, 0]).abs()
    for kind in ("target_vs_rest", "all_pairs"):
        for labels in (torch.tensor([0, 1]), torch.tensor([1, 1])):
            assert torch.equal(class_contrast(logits, labels, kind), expected)
    with pytest.raises(RecipeError):
        class_contrast(logits, torch.tensor([0, 1]), "nope")


def test_gradmask_ignores_samples_without_a_mask() -> None:
    r = _recipe({"name": "gradmask"}, "toy", {"width": 8})
    full = easy_bundle(n_train=6).train
    a = r.training_step(_batch(6, [True, False, True, False, False, False]))["gradmask"]
    b = r.training_step(full.batch([0, 2]))["gradmask"]
    assert float(a) > 0.0
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    assert float(r.training_step(_batch(6, [False] * 6))["gradmask"]) == 0.0


# ------------------------------------------------------------------ reconstruct-masked


def test_masked_reconstruction_loss_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    w = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    recon = torch.zeros(2, 1, 2, 2)
    # sample 0: target [1, 0, 3, 0] -> MSE (1 + 9)/4 = 2.5; sample 1: target ones -> 1
    assert float(masked_reconstruction_loss(recon, x, w, torch.tensor([True, True]))) == pytest.approx(1.75)
    assert float(masked_reconstruction_loss(recon, x, w, torch.tensor([True, False]))) == pytest.approx(2.5)
    assert float(masked_reconstruction_loss(recon, x, w, torch.tensor([False, False]))) == 0.0
    with pytest.raises(RecipeError):
        masked_reconstruction_loss(recon[:, :, :1], x, w, torch.tensor([True, True]))


def test_reconstruct_masked_targets_the_masked_input_of_masked_samples_only() -> None:
    r = _recipe({"name": "reconstruct_masked", "lambda_recon": 2.0}, MULTITASK_ARCH, {"width": 8})
    batch = _batch(6, [True, False, True, True, False, False])
    terms = r.training_step(batch)
    _, recon = r.modules["model"].forward_multitask(batch.image)
    sel = batch.has_mask
    target = batch.image[sel] * batch.roi_mask[sel].float()
    expected = float((recon[sel] - target).pow(2).mean().detach())
    assert float(terms["recon_masked"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["loss"].detach()) == pytest.approx(float(terms["cls"]) + 2.0 * expected, rel=1e-5)
    with pytest.raises(RecipeError, match="forward_multitask"):
        _recipe({"name": "reconstruct_masked"}, "toy")


# ------------------------------------------------------------------ training


@pytest.mark.parametrize(
    ("recipe", "arch", "term"),
    [
        ({"name": "actdiff", "lambda_act": 1.0, "roi_dilation_px": 2}, "unet_tiny", "train_loss"),
        ({"name": "gradmask", "lambda_grad": 1.0, "roi_blur_sigma_px": 1.0}, "unet_tiny", "train_loss"),
        ({"name": "reconstruct_masked", "lambda_recon": 1.0}, "unet_tiny", "train_loss"),
    ],
    ids=["actdiff", "gradmask", "reconstruct_masked"],
)
def test_each_mask_guided_recipe_reduces_its_loss(tmp_path: Path, recipe: dict, arch: str, term: str) -> None:
    cfg = make_config(
        tmp_path / "unused",
        recipe=recipe,
        model={"arch": arch, "arch_kwargs": {}},
        schedule={"epochs": 3},
        loss={"class_weights": "balanced"},
    )
    result = train(cfg, tmp_path / "run", data=easy_bundle())
    losses = [r[term] for r in result.history]
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.9 * losses[0]
    penalty = PENALTY_TERM[recipe["name"]]
    assert all(r[penalty] > 0 for r in result.history)


# ------------------------------------------------------------------ configs and CLI


def _app() -> typer.Typer:
    from mimicry_cli.commands.train import train_command

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """mimicry (test root)."""

    app.command("train")(train_command)
    return app


@pytest.mark.parametrize("method", ["actdiff", "gradmask", "reconstruct_masked"])
def test_paper_configs_validate(method: str) -> None:
    cfg: TrainConfig = load_config(CONFIGS / f"{method}-paper.yaml")
    assert cfg.recipe.name == method
    assert cfg.model.arch == "unet"
    assert cfg.data.masks_available == 1.0
    lam = {"actdiff": "lambda_act", "gradmask": "lambda_grad", "reconstruct_masked": "lambda_recon"}[method]
    assert getattr(cfg.recipe, lam) == 1.0  # the medical-dataset value of the paper


@pytest.mark.slow
@pytest.mark.parametrize("method", ["actdiff", "gradmask", "reconstruct_masked"])
def test_tiny_config_trains_and_publishes_through_the_cli(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, method: str
) -> None:
    data = yaml.safe_load((CONFIGS / f"{method}-tiny.yaml").read_text(encoding="utf-8"))
    assert data["recipe"]["name"] == method
    assert data["data"]["masks_available"] == 0.5
    shared = tmp_path_factory.getbasetemp() / "mask-guided-phantom"
    data["data"].update(root=str(shared / "root"), cache_dir=str(shared / "cache"))
    data["progress"] = False
    data["schedule"]["epochs"] = 1
    config = tmp_path / f"{method}.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    run, registry = tmp_path / "run", tmp_path / "registry"
    args = ["train", "-c", str(config), "-o", str(run), "--publish", str(registry), "--name", method]
    result = CliRunner().invoke(_app(), [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = yaml.safe_load(result.output)
    assert summary["recipe"] == method
    assert summary["published"] == [f"{method}:1"]
    record = yaml.safe_load((run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[0])
    penalty = PENALTY_TERM[method]
    assert record[penalty] > 0
    card = Registry(registry).card(f"{method}:1")
    assert card.architecture == "unet_tiny"
    assert card.training_config["recipe"]["name"] == method
    assert card.extra["recipe"] == method
