"""Ensembles (Watson et al., Eq. 1): mean probabilities, mean Grad-CAM, zoo rebuild, ONNX; zoo coverage."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mimicry.models import (
    ENSEMBLE_ARCH,
    Ensemble,
    LeftRightToyNet,
    ModelContractError,
    ToyCamNet,
    assert_contract,
    build_ensemble,
    densenet_tiny,
    unet_tiny,
    zoo,
)
from mimicry.models.zoo import (
    ArchitectureError,
    UnknownArchitectureError,
    build_model,
    list_architectures,
)


def _x(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _toy_ensemble(s: int = 3) -> Ensemble:
    torch.manual_seed(0)
    return Ensemble([ToyCamNet(width=4) for _ in range(s)]).eval()


def test_importing_the_package_registers_every_builtin_architecture() -> None:
    assert set(list_architectures()) >= {
        "toy", "toy_left_right", "unet", "unet_tiny", "unet_egd", "unet_egd_tiny", "densenet", "densenet121",
        "densenet_tiny", "ensemble",
    }  # fmt: skip
    assert ENSEMBLE_ARCH == "ensemble"


def test_known_values_of_a_two_member_ensemble() -> None:
    """Ones 4×4: member A logits [2, 2, 3] (scale 4, bias 3), member B [4, 4, 0] (scale 8, bias 0)."""
    ens = Ensemble([LeftRightToyNet(scale=4.0, bias2=3.0), LeftRightToyNet(scale=8.0, bias2=0.0)])
    x = torch.ones(1, 1, 4, 4)
    logits, probs, cam = ens.forward_with_cam(x)
    ea, eb = torch.exp(torch.tensor([2.0, 2.0, 3.0])), torch.exp(torch.tensor([4.0, 4.0, 0.0]))
    expected = (ea / ea.sum() + eb / eb.sum()) / 2
    torch.testing.assert_close(probs, expected[None])
    torch.testing.assert_close(logits, torch.log(expected)[None])
    # member cams: A → A_c (scale 4 · A_c / 4), B → 2·A_c (scale 8 · A_c / 4); mean = 1.5·A_c
    a = ens.submodels[0].features(x)
    torch.testing.assert_close(cam[0, :2], 1.5 * a[0])
    assert torch.equal(cam[0, 2], torch.zeros(2, 2))
    assert ens.num_classes == 3


def test_probs_logits_and_cam_are_the_member_means() -> None:
    ens = _toy_ensemble(3)
    x = _x(4, 32)
    with torch.no_grad():
        logits, probs, cam = ens.forward_with_cam(x)
        member = [m.forward_with_cam(x) for m in ens.submodels]
        mp = ens.member_probs(x)
        forward_logits = ens(x)
    assert mp.shape == (3, 4, 3)
    assert torch.equal(mp, torch.stack([torch.softmax(m(x), dim=1) for m in ens.submodels]))
    assert torch.equal(probs, torch.stack([o[1] for o in member]).mean(dim=0))
    assert torch.equal(cam, torch.stack([o[2] for o in member]).mean(dim=0))
    assert cam.shape == (4, 3, 8, 8)
    torch.testing.assert_close(torch.softmax(logits, dim=1), probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, torch.log(probs), rtol=0, atol=1e-6)
    assert torch.equal(forward_logits, logits)
    torch.testing.assert_close(probs, mp.mean(dim=0), rtol=0, atol=1e-7)
    # the members disagree (different seeds), so the ensemble is not any one of them
    assert float((mp[0] - mp[1]).abs().max()) > 1e-3


def test_log_mean_probs_do_not_underflow() -> None:
    extreme = torch.tensor([[[0.0, -200.0, -400.0]], [[0.0, -300.0, -500.0]]])  # [S, N, K]
    logits = Ensemble._log_mean_probs(extreme)
    assert bool(torch.isfinite(logits).all())
    # log((e^-200 + e^-300)/2) ≈ -200 - log 2
    torch.testing.assert_close(logits[0, 1], torch.tensor(-200.0 - math.log(2.0)))
    torch.testing.assert_close(logits[0, 0], torch.tensor(0.0))


def test_ensemble_is_not_a_gap_linear_model() -> None:
    ens = _toy_ensemble(2)
    with pytest.raises(ModelContractError, match="no single feature map"):
        ens.features(_x())
    with pytest.raises(ModelContractError, match="no single cam_layer"):
        _ = ens.cam_layer
    with pytest.raises(ModelContractError):
        assert_contract(ens)
    for m in ens.submodels:
        assert_contract(m)


def test_black_level_propagates_to_members() -> None:
    ens = _toy_ensemble(2)
    ens.black_level = -1.5
    assert ens.black_level == -1.5
    assert [m.black_level for m in ens.submodels] == [-1.5, -1.5]


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="at least one sub-model"):
        Ensemble([])
    other = ToyCamNet(class_names=("a", "b", "c"))
    with pytest.raises(ValueError, match="sub-model 1 has classes"):
        Ensemble([ToyCamNet(), other])
    with pytest.raises(ValueError, match="not a \\(non-ensemble\\) CamClassifier"):
        Ensemble([_toy_ensemble(2)])
    with pytest.raises(ValueError, match="not a \\(non-ensemble\\) CamClassifier"):
        Ensemble([nn.Linear(2, 2)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="positive integer"):
        build_ensemble(arch="toy", n_members=0)
    with pytest.raises(ValueError, match="positive integer"):
        build_ensemble(arch="toy", n_members=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot themselves be ensembles"):
        build_ensemble(arch="ensemble", n_members=2)
    with pytest.raises(UnknownArchitectureError):
        build_ensemble(arch="resnet9", n_members=2)
    with pytest.raises(ArchitectureError, match="rejected its arguments"):
        build_ensemble(arch="toy", n_members=2, arch_kwargs={"depth": 3})


def test_members_on_different_grids_refuse_a_mean_cam() -> None:
    ens = Ensemble([unet_tiny(), densenet_tiny()]).eval()  # strides 8 and 16
    with torch.no_grad():
        assert ens(_x(1, 32)).shape == (1, 3)  # probabilities still average
        with pytest.raises(ModelContractError, match="grids differ"):
            ens.forward_with_cam(_x(1, 32))
    with pytest.raises(ModelContractError, match="one registered architecture"):
        _ = ens.arch_kwargs


def _trained_unet_ensemble() -> Ensemble:
    ens = build_ensemble(
        arch="unet_tiny", arch_kwargs={"class_names": ["Normal", "CHF", "pneumonia"]}, n_members=3
    )
    ens.train()
    with torch.no_grad():
        for seed in range(2):
            ens(_x(4, 32, seed=20 + seed))  # move BatchNorm statistics
    return ens.eval()


def test_zoo_kwargs_and_state_dict_rebuild_the_ensemble(tmp_path) -> None:
    """The card's kwargs rebuild the ensemble through the registered ``ensemble`` builder."""
    ens = _trained_unet_ensemble()
    assert isinstance(ens, Ensemble)
    assert len(ens.submodels) == 3
    # members differ (independently initialised)
    w = [m.classifier.weight for m in ens.submodels]
    assert not torch.equal(w[0], w[1])
    card_kwargs = json.loads(json.dumps(ens.arch_kwargs))
    assert card_kwargs["arch"] == "unet"
    assert card_kwargs["n_members"] == 3
    assert card_kwargs["arch_kwargs"]["encoder"] == "efficientnet-tiny"
    state = ens.state_dict()
    assert all(k.startswith(("submodels.0.", "submodels.1.", "submodels.2.")) for k in state)
    assert "submodels.2.classifier.weight" in state
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert zoo._ARCHITECTURES[ENSEMBLE_ARCH] is build_ensemble  # what build_model("ensemble", ...) calls
    twin = build_ensemble(**card_kwargs)
    twin.load_state_dict(load_file(str(path)), strict=True)
    twin.eval()
    x = _x(3, 32, seed=7)
    with torch.no_grad():
        for a, b in zip(twin.forward_with_cam(x), ens.forward_with_cam(x), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(twin.member_probs(x), ens.member_probs(x))


def test_build_model_rebuilds_the_ensemble_from_card_kwargs() -> None:
    ens = _trained_unet_ensemble()
    twin = build_model(ENSEMBLE_ARCH, **ens.arch_kwargs)
    twin.load_state_dict(ens.state_dict(), strict=True)
    twin.eval()
    x = _x(2, 32, seed=3)
    with torch.no_grad():
        assert torch.equal(twin(x), ens(x))


def test_build_ensemble_builds_independent_members() -> None:
    ens = build_ensemble("toy", 2, {"width": 4})
    assert [m.classifier.in_features for m in ens.submodels] == [4, 4]
    assert not torch.equal(ens.submodels[0].classifier.weight, ens.submodels[1].classifier.weight)
    # toy members record no arch_kwargs, so this ensemble cannot describe itself for a model card
    with pytest.raises(ModelContractError, match="one registered architecture with equal kwargs"):
        _ = ens.arch_kwargs


class _CamGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.forward_with_cam(image)


@pytest.mark.slow
def test_onnx_export_with_a_dynamic_batch_matches_torch(tmp_path) -> None:
    import onnxruntime as ort

    ens = Ensemble([unet_tiny() for _ in range(2)])
    ens.train()
    with torch.no_grad():
        ens(_x(4, 32, seed=30))
    ens.eval()
    path = tmp_path / "ensemble.onnx"
    torch.onnx.export(
        _CamGraph(ens).eval(),
        (_x(2, 32),),
        str(path),
        input_names=["image"],
        output_names=["logits", "probs", "cam"],
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
        dynamo=True,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _x(5, 32, seed=8)  # another batch size than the export example
    outputs = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = ens.forward_with_cam(x)
    assert [o.shape for o in outputs] == [(5, 3), (5, 3), (5, 3, 4, 4)]
    for got, want in zip(outputs, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=1e-5)
