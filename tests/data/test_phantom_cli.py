"""``mimicry data phantom | summary | contact-sheet`` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mimicry_cli.main import app


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, runner: CliRunner) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cli") / "ds"
    args = ["data", "phantom", "--out", str(out), "--n", "9", "--size", "48", "--seed", "4"]
    args += ["--shortcut-corr", "0.8", "--test-fraction", "0.3", "--test-shortcut", "decorrelated"]
    args += ["--monochrome1-share", "0.5", "--compressed-share", "0.5", "--no-contact-sheet", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_phantom_json_summary(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    assert summary["n"] == 9
    assert summary["size"] == 48
    assert summary["seed"] == 4
    assert sum(summary["class_counts"].values()) == 9
    assert sum(summary["split_counts"].values()) == 9
    assert set(summary["split_counts"]) == {"train", "test"}
    assert summary["files"] == {"dicom": 9, "png": 45, "csv": 5}
    assert summary["shortcut_corr"]["train"] == 0.8
    assert summary["shortcut_corr"]["test"] == pytest.approx(1 / 3)
    assert summary["images_per_second"] > 0
    assert set(summary["stage_seconds"]) >= {"render", "gaze", "write"}
    assert not (out / "contact_sheet.png").exists()
    meta = json.loads((out / "phantom.json").read_text())
    assert meta["config"]["test_shortcut"] == "decorrelated"
    assert meta["config"]["monochrome1_share"] == 0.5


def test_summary_rereads_the_csvs(dataset: tuple[Path, dict], runner: CliRunner) -> None:
    out, generated = dataset
    result = runner.invoke(app, ["data", "summary", str(out), "--json"])
    assert result.exit_code == 0, result.output
    reread = json.loads(result.stdout)
    for key in ("class_counts", "split_counts", "site_counts", "shortcut_agreement", "nuisance_agreement"):
        assert reread[key] == generated[key], key
    assert reread["files"] == {"dicom": 9, "png": 45, "csv": 5}
    assert reread["fixations"]["off_image"] > 0
    table = runner.invoke(app, ["data", "summary", str(out)])
    assert table.exit_code == 0
    assert "shortcut agree" in table.stdout
    assert "site_a" in table.stdout
    assert "train" in table.stdout


def test_contact_sheet(dataset: tuple[Path, dict], runner: CliRunner, tmp_path: Path) -> None:
    out, _ = dataset
    png = tmp_path / "sheet.png"
    result = runner.invoke(app, ["data", "contact-sheet", str(out), "--out", str(png), "--n", "3"])
    assert result.exit_code == 0, result.output
    img = np.asarray(Image.open(png).convert("L"))
    assert img.shape[0] > 100
    assert img.shape[1] > 3 * img.shape[0]
    assert img.std() > 20


def test_refuses_non_empty_out_and_bad_options(
    dataset: tuple[Path, dict], runner: CliRunner, tmp_path: Path
) -> None:
    out, _ = dataset
    result = runner.invoke(app, ["data", "phantom", "--out", str(out), "--n", "2", "--size", "48"])
    assert result.exit_code == 2
    assert "not empty" in result.stderr
    bad = runner.invoke(app, ["data", "phantom", "--out", str(tmp_path / "x"), "--test-shortcut", "flipped"])
    assert bad.exit_code == 2
    assert "test_shortcut" in bad.stderr
    missing = runner.invoke(app, ["data", "summary", str(tmp_path / "nothing")])
    assert missing.exit_code == 2


def test_overwrite_and_default_contact_sheet(tmp_path: Path, runner: CliRunner) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "stale.csv").write_text("x\n")
    args = ["data", "phantom", "--out", str(out), "--n", "3", "--size", "48", "--overwrite"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "contact_sheet.png").is_file()
    assert (out / "stale.csv").is_file()
    assert "images/s" in result.stdout
    assert "shortcut agree" in result.stdout
