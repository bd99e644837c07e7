"""``mimicry export RUN_DIR --registry DIR --name NAME`` and the card's ``reference_stats`` / ``uncertainty``.

The reference statistics are recomputed by hand from the run's training tensors (display intensity of each
letterboxed image, GAP features) and the abstention threshold from the validation entropies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from mimicry.registry import Registry
from mimicry_cli.commands.export import export_command
from tests.training import easy_bundle, make_config
from training.loop import ABSTAIN_QUANTILE, train


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """mimicry (test root)."""

    app.command("export")(export_command)
    return app


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("export")
    bundle = easy_bundle()
    cfg = make_config(tmp / "unused", schedule={"epochs": 1})
    result = train(cfg, tmp / "run", data=bundle)
    return tmp / "run", bundle, result


def test_result_json_holds_reference_stats_and_uncertainty(finished_run) -> None:
    run, bundle, result = finished_run
    summary = json.loads((run / "result.json").read_text(encoding="utf-8"))
    ref = summary["reference_stats"]
    # display intensity in [0, 1]: x * std + mean of the run's preprocessing (0.25, 0.5 by default)
    per_image = (bundle.train.image.double() * 0.25 + 0.5).mean(dim=(1, 2, 3)).numpy()
    assert ref["n_samples"] == 24
    assert ref["image_mean"] == pytest.approx(float(per_image.mean()), rel=1e-9)
    assert ref["image_std"] == pytest.approx(float(per_image.std()), rel=1e-9)
    model = result.recipe.classifiers()[0].eval()
    with torch.no_grad():
        gap = model.features(bundle.train.image).mean(dim=(2, 3)).double().numpy()
    assert ref["feature_layer"] == "gap"
    assert len(ref["feature_mean"]) == 8  # toy width
    np.testing.assert_allclose(ref["feature_mean"], gap.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ref["feature_std"], gap.std(axis=0), rtol=1e-5, atol=1e-7)

    unc = summary["uncertainty"]
    with torch.no_grad():
        p = result.recipe.predict_proba(bundle.val.image).double().numpy()
    entropy = -(p * np.log(p)).sum(axis=1)
    assert unc["measure"] == "predictive_entropy"
    assert unc["abstain_threshold"] == pytest.approx(float(np.quantile(entropy, ABSTAIN_QUANTILE)), rel=1e-6)
    assert 0.0 < unc["abstain_threshold"] <= np.log(3) + 1e-9
    assert unc["calibration"] == {"method": "quantile", "quantile": 0.95, "split": "val", "n": 12}


def test_export_publishes_the_run_with_reference_stats(finished_run, tmp_path: Path) -> None:
    run, _, _ = finished_run
    registry = tmp_path / "registry"
    args = [
        "export",
        str(run),
        "--registry",
        str(registry),
        "--name",
        "exported",
        "--exporter",
        "torchscript",
    ]
    out = CliRunner().invoke(_app(), [*args, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["published"] == ["exported:1"]
    summary = json.loads((run / "result.json").read_text(encoding="utf-8"))
    card = Registry(registry).card("exported:1")
    assert card.reference_stats is not None
    assert card.reference_stats.image_mean == pytest.approx(summary["reference_stats"]["image_mean"])
    assert card.reference_stats.image_std == pytest.approx(summary["reference_stats"]["image_std"])
    assert card.reference_stats.feature_mean == pytest.approx(summary["reference_stats"]["feature_mean"])
    assert card.uncertainty is not None
    assert card.uncertainty.abstain_threshold == pytest.approx(summary["uncertainty"]["abstain_threshold"])
    assert card.seed == 0
    assert card.replicate_group == summary["replicate_group"]
    again = CliRunner().invoke(_app(), args)
    assert again.exit_code == 0, again.output
    assert "published: exported:2" in again.output


def test_export_errors(tmp_path: Path) -> None:
    registry = str(tmp_path / "registry")
    missing = CliRunner().invoke(_app(), ["export", str(tmp_path / "nope"), "-r", registry, "-n", "x"])
    assert missing.exit_code == 1
    assert "does not exist" in missing.output
    (tmp_path / "unfinished").mkdir()
    unfinished = CliRunner().invoke(
        _app(), ["export", str(tmp_path / "unfinished"), "-r", registry, "-n", "x"]
    )
    assert unfinished.exit_code == 1
    assert "training did not finish" in unfinished.output
    bad = CliRunner().invoke(
        _app(), ["export", str(tmp_path / "unfinished"), "-r", registry, "-n", "x", "--exporter", "onnx"]
    )
    assert bad.exit_code == 2
    no_name = CliRunner().invoke(_app(), ["export", str(tmp_path / "unfinished"), "-r", registry])
    assert no_name.exit_code == 2
