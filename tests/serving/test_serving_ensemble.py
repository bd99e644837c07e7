"""Ensemble disagreement in every prediction (docs/serving.md, "How sure a prediction is").

A published 3-member ``Ensemble`` of ``unet_tiny`` (BatchNorm statistics warmed up in train mode, so the
untrained members differ) is served in-process; the report's mutual information must equal the one computed
from the twin's ``member_probs`` on the same preprocessed input, and it must drive ``abstain``.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mimicry.models.ensemble import build_ensemble
from mimicry.preprocess import PreprocessSpec
from mimicry.registry import Registry
from serving import pipeline
from serving.settings import ServeSettings
from serving.uncertainty import ensemble_disagreement, predictive_entropy, uncertainty_report
from tests.serving.conftest import make_client

SIZE = 32
DICOM = {"content-type": "application/dicom"}


@pytest.fixture(scope="module")
def ensemble_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cxr-ens`` v1: 3 × unet_tiny, published like tests/registry/test_ensemble_publish.py does (the
    dynamo export, the only exporter that keeps the ensemble's cam grid static, is most of this file's
    run time)."""
    torch.manual_seed(0)
    ens = build_ensemble("unet_tiny", 3)
    ens.train()
    with torch.no_grad():
        for _ in range(3):
            ens(torch.randn(8, 1, SIZE, SIZE))
    ens.eval()
    root = tmp_path_factory.mktemp("serving-ens") / "registry"
    Registry(root).publish(
        ens,
        name="cxr-ens",
        held_batch=torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1)),
        preprocessing=PreprocessSpec(size=SIZE),
        architecture="ensemble",
        arch_kwargs=ens.arch_kwargs,
    )
    return root


def test_disagreement_definitions_exact_values() -> None:
    members = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    d = ensemble_disagreement(members)
    mean = np.array([2 / 3, 1 / 3])
    assert d["measure"] == "mutual_information"
    assert d["value"] == d["mutual_information"] == pytest.approx(predictive_entropy(mean))
    assert d["mean_pairwise_tv"] == pytest.approx(2 / 3)  # pairs (0,1), (0,2), (1,2): TV 1, 0, 1
    assert d["max_member_tv"] == pytest.approx(2 / 3)  # member 1 vs the mean
    assert d["members"] == 3
    assert d["member_probabilities"] == members.tolist()
    same = ensemble_disagreement(np.array([[0.2, 0.8], [0.2, 0.8]]))
    assert same["value"] == pytest.approx(0.0, abs=1e-12)
    assert same["mean_pairwise_tv"] == 0.0
    with pytest.raises(ValueError, match=r"\[S, K\]"):
        ensemble_disagreement(np.array([0.5, 0.5]))


def test_disagreement_drives_abstain(ensemble_registry: Path) -> None:
    card = Registry(ensemble_registry).card("cxr-ens")  # no uncertainty section
    members = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    probs = members.mean(axis=0)
    mi = predictive_entropy(probs) - (predictive_entropy(members[0]) + predictive_entropy(members[1])) / 2
    kw = {"statistic": None, "default_threshold": None, "ood_z_threshold": 4.0, "member_probs": members}
    reported = uncertainty_report(card, probs, **kw)
    assert reported["abstain"] is None  # no threshold anywhere: reported, not decided
    assert reported["disagreement"]["value"] == pytest.approx(mi)
    assert reported["disagreement"]["threshold_source"] == "none"
    high = uncertainty_report(card, probs, **kw, default_disagreement_threshold=mi - 1e-3)
    assert high["abstain"] is True
    assert high["abstain_reasons"] == ["disagreement"]
    assert high["disagreement"]["threshold_source"] == "settings"
    low = uncertainty_report(card, probs, **kw, default_disagreement_threshold=mi + 1e-3)
    assert low["abstain"] is False
    assert low["abstain_reasons"] == []
    # entropy alone would not abstain (threshold above H), disagreement does: either criterion suffices
    both = uncertainty_report(
        card, probs, **{**kw, "default_threshold": math.log(3)}, default_disagreement_threshold=0.1
    )
    assert both["abstain_reasons"] == ["disagreement"]
    # a card threshold (future UncertaintySpec field) wins over settings
    carded = card.model_copy(
        update={"uncertainty": SimpleNamespace(abstain_threshold=5.0, disagreement_threshold=mi + 1e-3)}
    )
    c = uncertainty_report(carded, probs, **kw, default_disagreement_threshold=0.0)
    assert (c["disagreement"]["threshold_source"], c["abstain"]) == ("card", False)
    single = uncertainty_report(card, probs, statistic=None, default_threshold=None, ood_z_threshold=4.0)
    assert single["disagreement"] is None


def test_member_probs_from_twin_match_backend(ensemble_registry: Path) -> None:
    reg = Registry(ensemble_registry)
    settings = ServeSettings(registry=ensemble_registry, device="cpu")
    model = pipeline.load_served_model(reg, "cxr-ens", settings)
    assert model.is_ensemble
    x = torch.randn(5, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3)).numpy()
    members = model.member_probs(x)
    assert members.shape == (5, 3, 3)
    with torch.no_grad():
        expected = reg.load_twin("cxr-ens").member_probs(torch.from_numpy(x)).permute(1, 0, 2).numpy()
    np.testing.assert_allclose(members, expected, atol=1e-6)
    out = model.backend.infer(x)
    assert out.member_probs is None  # today's export has no per-member output
    np.testing.assert_allclose(members.mean(axis=1), out.probs, atol=1e-5)  # Watson et al. Eq. 1
    warm = pipeline.warm_up(model, members=True)
    assert warm.member_probs.shape == (1, 3, 3)
    assert model.members_source == "twin"
    toy = pipeline.ServedModel("x", reg.card("cxr-ens").model_copy(update={"architecture": "toy"}), None, reg)
    with pytest.raises(TypeError, match="not an ensemble"):
        toy.member_probs(x)


def _serve(monkeypatch: pytest.MonkeyPatch, registry: Path, **env: str) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("MIMICRY_SERVE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MIMICRY_SERVE_REGISTRY", str(registry))
    monkeypatch.setenv("MIMICRY_SERVE_DEVICE", "cpu")
    monkeypatch.setenv("MIMICRY_SERVE_INGEST__UID_SALT", "test-salt")
    for k, v in env.items():
        monkeypatch.setenv(f"MIMICRY_SERVE_{k}", v)


def test_predict_reports_disagreement_and_abstains(
    monkeypatch: pytest.MonkeyPatch, ensemble_registry: Path, phantom_files
) -> None:
    data = phantom_files[0].read_bytes()
    settings = ServeSettings(registry=ensemble_registry, device="cpu")
    model = pipeline.load_served_model(Registry(ensemble_registry), "cxr-ens", settings)
    prep = pipeline.prepare(pipeline.ingest(data, settings.ingest), model.card)
    members = model.member_probs(prep.x)[0]
    mi = ensemble_disagreement(members)["value"]
    assert mi > 1e-4  # the untrained members do disagree

    _serve(monkeypatch, ensemble_registry, DEFAULT_ABSTAIN_DISAGREEMENT=str(mi / 2))
    with make_client() as client:
        r = client.post("/v1/predict", content=data, headers=DICOM)
        assert r.status_code == 200
        unc = r.json()["uncertainty"]
        d = unc["disagreement"]
        assert (d["measure"], d["members"], d["source"]) == ("mutual_information", 3, "twin")
        assert d["value"] == pytest.approx(mi, rel=1e-4, abs=1e-7)
        np.testing.assert_allclose(d["member_probabilities"], members, atol=1e-6)
        assert (d["threshold"], d["threshold_source"]) == (pytest.approx(mi / 2), "settings")
        assert unc["abstain"] is True
        assert unc["abstain_reasons"] == ["disagreement"]
        # explain carries the same report
        e = client.post("/v1/explain", content=data, headers=DICOM).json()
        assert e["prediction"]["uncertainty"]["disagreement"]["value"] == pytest.approx(d["value"])

    _serve(monkeypatch, ensemble_registry, DEFAULT_ABSTAIN_DISAGREEMENT=str(2 * mi))
    with make_client() as client:
        unc = client.post("/v1/predict", content=data, headers=DICOM).json()["uncertainty"]
        assert unc["abstain"] is False
        assert unc["disagreement"]["abstain"] is False

    _serve(monkeypatch, ensemble_registry, ENSEMBLE_DISAGREEMENT="false")
    with make_client() as client:
        unc = client.post("/v1/predict", content=data, headers=DICOM).json()["uncertainty"]
        assert unc["disagreement"] is None
        assert unc["abstain"] is None
