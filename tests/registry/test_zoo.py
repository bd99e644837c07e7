"""The architecture registry (mimicry.models.zoo)."""

from __future__ import annotations

import pytest
from torch import nn

from mimicry.models import zoo
from mimicry.models.toy import LeftRightToyNet, ToyCamNet
from mimicry.models.zoo import (
    ArchitectureError,
    UnknownArchitectureError,
    architecture_of,
    build_model,
    list_architectures,
    register_architecture,
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoo, "_ARCHITECTURES", dict(zoo._ARCHITECTURES))


def test_toy_models_are_registered() -> None:
    assert {"toy", "toy_left_right"} <= set(list_architectures())
    assert list_architectures() == sorted(list_architectures())
    model = build_model("toy", width=4, class_names=["a", "b"])
    assert isinstance(model, ToyCamNet)
    assert model.classifier.in_features == 4
    assert model.class_names == ("a", "b")
    assert isinstance(build_model("toy_left_right"), LeftRightToyNet)
    assert architecture_of(model) == "toy"
    assert architecture_of(LeftRightToyNet()) == "toy_left_right"


def test_register_decorator_and_factory() -> None:
    @register_architecture("toy_wide")
    def wide(width: int = 16) -> ToyCamNet:
        return ToyCamNet(width=width)

    assert "toy_wide" in list_architectures()
    assert build_model("toy_wide").classifier.in_features == 16
    assert register_architecture("toy_wide")(wide) is wide  # re-registering the same object is a no-op


def test_duplicate_name_is_refused() -> None:
    with pytest.raises(ArchitectureError, match="already registered"):
        register_architecture("toy")(LeftRightToyNet)


@pytest.mark.parametrize("name", ["Toy", "1toy", "", "to y", "a" * 65])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ArchitectureError, match="invalid architecture name"):
        register_architecture(name)


def test_unknown_architecture() -> None:
    with pytest.raises(UnknownArchitectureError, match=r"unknown architecture 'resnet9'; registered: .*toy"):
        build_model("resnet9")


def test_bad_kwargs_and_non_cam_builders() -> None:
    with pytest.raises(ArchitectureError, match="rejected its arguments"):
        build_model("toy", depth=3)
    register_architecture("not_cam")(lambda: nn.Linear(2, 2))
    with pytest.raises(ArchitectureError, match="built a Linear, not a CamClassifier"):
        build_model("not_cam")
