"""The main job's models (``configs/demo/*.yaml``, trained by ``scripts/main.sh``).

The demo's story rests on the science benchmark's evidence (docs/results.md, "Verdicts of the default policy":
the default policy's shortcut gates fail the baseline and pass ActDiff at these settings), so the demo configs
must stay the benchmark's runs; and they must train as shipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import load_config, parse_config
from training.loop import train
from training.science import PRESETS, run_config

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo"
DEMO_RECIPES = ("baseline", "actdiff")


def test_main_job_trains_exactly_the_demo_configs() -> None:
    main = (DEMO.parents[1] / "scripts" / "main.sh").read_text(encoding="utf-8")
    assert f"MODELS=({' '.join(DEMO_RECIPES)})" in main
    assert sorted(p.stem for p in DEMO.glob("*.yaml")) == sorted(DEMO_RECIPES)


@pytest.mark.parametrize("recipe", DEMO_RECIPES)
def test_demo_config_is_the_science_benchmarks_seed0_run(recipe: str) -> None:
    demo = load_config(DEMO / f"{recipe}.yaml")
    science = parse_config(run_config(PRESETS["quick"], recipe, 0, demo.data.root, Path("unused-cache")))
    # Only where the tensors are cached and the progress bar differ (neither changes the model).
    demo_d, science_d = demo.model_dump(mode="json"), science.model_dump(mode="json")
    for d in (demo_d, science_d):
        d.pop("progress")
        d["data"].pop("cache_dir")
    assert demo_d == science_d


@pytest.mark.parametrize("recipe", DEMO_RECIPES)
def test_demo_config_trains_one_epoch(
    recipe: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """As shipped, with the data moved to the session's 40-case phantom and one epoch."""
    from tests.training import cache_dir, phantom_root

    cfg = load_config(DEMO / f"{recipe}.yaml")
    data = cfg.data.model_copy(
        update={"root": phantom_root(tmp_path_factory), "cache_dir": cache_dir(tmp_path_factory)}
    )
    schedule = cfg.schedule.model_copy(update={"epochs": 1})
    cfg = cfg.model_copy(update={"data": data, "schedule": schedule, "progress": False})
    result = train(cfg, tmp_path / "run")
    assert len(result.history) == 1
    record = result.history[0]
    assert record["train_loss"] > 0
    if recipe == "actdiff":
        assert record["train_actdiff"] > 0  # the mask-guided penalty is on
    assert (tmp_path / "run" / "result.json").is_file()
