"""IBA methods in ``audit run`` (audit.iba_stats, audit.runner): layer statistics estimated on the reference's
training split, cached in a sidecar file per model sha256, and passed as ``stats=`` to iba, inverse_iba and
multilayer_iba."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.iba_stats import IbaStatsProvider, default_layers, method_kwargs
from audit.policy import Policy
from audit.reference import ReferenceSet
from audit.runner import AuditConfig, run_audit
from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.models import LeftRightToyNet
from mimicry.preprocess import PreprocessSpec, preprocess
from mimicry.registry import Registry
from mimicry.saliency.iba import LayerStats, LayerStatsMismatchError, estimate_layer_stats

SIZE = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit_iba")
    generate_phantom_dataset(root / "ref", PhantomConfig(n=12, size=48, seed=2))
    reg = Registry(root / "registry")
    x = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    reg.publish(LeftRightToyNet().eval(), name="lr", held_batch=x, preprocessing=PreprocessSpec(size=SIZE))
    return {"root": root, "ref": root / "ref", "registry": root / "registry"}


def test_default_layers_and_card_stats() -> None:
    model = LeftRightToyNet().eval()
    assert default_layers(model) == ["block1", "block2"]
    stats = LayerStats("block2", np.ones((2, 16, 16)), np.ones((2, 16, 16)), 5)
    kw = method_kwargs(
        "iba",
        {"beta": 5.0, "stats_samples": 3},
        model=model,
        model_sha256="x",
        spec=PreprocessSpec(size=SIZE),
        provider=None,
        card_stats=stats.to_dict(),
    )
    assert set(kw) == {"beta", "stats"}  # audit-only keys removed
    assert (kw["stats"].layer, kw["stats"].n_samples) == ("block2", 5)
    assert method_kwargs("gradcam", {"a": 1}, model=model, model_sha256="x", spec=None, provider=None) == {
        "a": 1
    }  # type: ignore[arg-type]


def test_stats_estimated_on_the_train_split_and_cached(setup: dict[str, Path]) -> None:
    ref = ReferenceSet(setup["ref"], split="test")
    model = LeftRightToyNet().eval()
    spec = PreprocessSpec(size=SIZE)
    cache = setup["root"] / "cache"
    provider = IbaStatsProvider(ref, cache)
    s = provider.stats(model, model_sha256="f" * 64, spec=spec, layer="block2", n_samples=4)
    train = ref.full.split("train")
    x = torch.from_numpy(np.stack([preprocess(train.load_image(i), spec)[0] for i in range(4)]))
    expected = estimate_layer_stats(model, "block2", [x], 4)
    np.testing.assert_allclose(s.mean, expected.mean, rtol=1e-6)
    np.testing.assert_allclose(s.std, expected.std, rtol=1e-6)
    (f,) = cache.glob("*.json")
    assert f.name.startswith("f" * 32 + "-block2-4-")
    # A new provider reads the sidecar instead of re-estimating (the model is not even called).
    again = IbaStatsProvider(ref, cache).stats(
        torch.nn.Identity(), model_sha256="f" * 64, spec=spec, layer="block2", n_samples=4
    )
    np.testing.assert_array_equal(again.mean, s.mean)
    np.testing.assert_array_equal(s.nonzero, expected.nonzero)  # the active-element fractions are cached too
    # A sidecar written before the fractions were recorded is stale: it is re-estimated, not used.
    old = json.loads(f.read_text())
    del old["nonzero"]
    f.write_text(json.dumps(old))
    with pytest.raises(LayerStatsMismatchError):  # Identity has no block2: the model is run again
        IbaStatsProvider(ref, cache).stats(
            torch.nn.Identity(), model_sha256="f" * 64, spec=spec, layer="block2", n_samples=4
        )
    fresh = IbaStatsProvider(ref, cache).stats(
        model, model_sha256="f" * 64, spec=spec, layer="block2", n_samples=4
    )
    np.testing.assert_array_equal(fresh.nonzero, expected.nonzero)
    assert "nonzero" in json.loads(f.read_text())


def test_audit_run_scores_the_iba_methods(setup: dict[str, Path]) -> None:
    policy = Policy(
        methods=["iba", "inverse_iba", "multilayer_iba"],
        checks=["gaze", "shortcut"],
        method_params={
            "iba": {"stats_samples": 6},
            "inverse_iba": {"stats_samples": 6},
            "multilayer_iba": {"stats_samples": 6, "threshold": 0.001},
        },
        bootstrap={"n_resamples": 100},
    )
    hist = setup["root"] / "h.sqlite"
    report = run_audit(
        AuditConfig(setup["registry"], ["lr:1"], setup["ref"], policy, history_path=hist, batch_size=4)
    )
    (m,) = report.models
    assert m.errors == []
    got = {(r.check, r.method) for r in m.results}
    assert {(c, meth) for c in ("gaze", "shortcut") for meth in policy.methods} <= got
    for r in m.results:
        if r.check == "gaze":
            nss = r.summaries["nss"]
            assert (nss.n + nss.n_dropped, nss.n >= 1) == (m.n_cases, True)
    sidecar = sorted(p.name.split("-")[1] for p in (setup["root"] / "h.sqlite.iba-stats").glob("*.json"))
    assert sidecar == ["block1", "block2"]  # iba / inverse_iba share block2; multilayer adds block1


def test_cached_iba_scores_of_the_old_map_are_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.cache as cache

    policy = Policy(methods=["iba"])
    now = {m: cache.config_sha(policy, m, ["gaze"]) for m in ("iba", "multilayer_iba", "gradcam")}
    monkeypatch.setattr(cache, "IBA_MAP_VERSION", 1)  # scores recorded before the readout fix
    before = {m: cache.config_sha(policy, m, ["gaze"]) for m in now}
    assert before["iba"] != now["iba"]
    assert before["multilayer_iba"] != now["multilayer_iba"]
    assert before["gradcam"] == now["gradcam"]  # other methods keep their cache
