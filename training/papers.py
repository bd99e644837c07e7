"""The models behind the seed papers' tables on the phantom (``mimicry bench arun2021`` / ``khakzar2021``).

:func:`train_paper_models` generates a phantom *without* a planted shortcut (site marker and nuisance cues
drawn independently of the label in train and test: ``shortcut_corr`` = 1/3 for the three sites, nuisance
agreement 0.5, ``test_shortcut="decorrelated"``), so the finding is the only cue that predicts the label, and
trains with the ``baseline`` recipe (cross-entropy, Adam):

* the *main* model (``papers-<main arch>``, seed 0) — Arun et al.'s InceptionV3, Khakzar et al.'s DenseNet;
* ``replicates - 1`` more seeds of the same architecture and data (one replicate group: the audit's
  repeatability partners, Arun et al.'s "two separately trained InceptionV3 models");
* optionally one model of another architecture on the same data (``papers-<other arch>``; the audit's
  reproducibility partner, Arun et al.'s DenseNet121).

Every run is published to a registry (:func:`training.publish.publish_run`), so the tables are scored from
the published versions by ``mimicry audit run`` (:mod:`audit.papers`). The phantom, the runs and the
registry live under ``out``.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["TRAIN_PRESETS", "PaperModels", "PapersTrainingError", "TrainPreset", "train_paper_models"]


class PapersTrainingError(RuntimeError):
    """The paper models cannot be trained (unknown preset, a run did not publish exactly one model)."""


@dataclass(frozen=True)
class TrainPreset:
    """Sizes of the phantom and the training runs.

    Attributes:
        n: phantom cases (about 20 % test, by patient; 20 % of train held out for validation).
        phantom_size: phantom image side (px); model_size: letterboxed model input side.
        epochs, batch_size, lr: the ``baseline`` recipe's schedule (Adam).
        main_arch / other_arch: architectures of the main model and the reproducibility partner.
    """

    n: int
    phantom_size: int
    model_size: int
    epochs: int
    batch_size: int
    lr: float
    main_arch: str = "densenet_tiny"
    other_arch: str = "unet_tiny"


TRAIN_PRESETS: dict[str, TrainPreset] = {
    # The test suite's end-to-end check: seconds.
    "smoke": TrainPreset(n=24, phantom_size=64, model_size=32, epochs=1, batch_size=8, lr=3e-3),
    # One core: 400 cases at 128², 64² inputs; training the three models of Arun et al.'s table took about
    # 65 s of CPU (docs/results.md).
    "quick": TrainPreset(n=400, phantom_size=128, model_size=64, epochs=10, batch_size=16, lr=3e-3),
    # A GPU (or many cores): the phantom's default 600 cases at 256², 128² inputs.
    "gpu": TrainPreset(n=600, phantom_size=256, model_size=128, epochs=15, batch_size=32, lr=1e-3),
}


@dataclass
class PaperModels:
    """What :func:`train_paper_models` produced.

    Attributes:
        registry: the registry directory; reference: the phantom (EGD layout) the audit scores.
        main: ``name:version`` of the main model; replicates: the other seeds of its architecture;
        other: the other architecture's model (``None`` when not trained).
        test_accuracy: ``ref -> test accuracy`` of each run (from ``training.loop.train``).
        seconds: wall time of generation + training + publishing.
    """

    registry: Path
    reference: Path
    main: str
    replicates: list[str]
    other: str | None
    preset: dict[str, Any]
    test_accuracy: dict[str, float | None]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["registry"], d["reference"] = str(self.registry), str(self.reference)
        return d


def _config(p: TrainPreset, arch: str, seed: int, root: Path, cache: Path, device: str) -> dict[str, Any]:
    return {
        "seed": seed,
        "device": device,
        "deterministic": "strict" if device == "cpu" else "warn",
        "num_threads": 1,
        "progress": False,
        "data": {"root": str(root), "cache_dir": str(cache), "val_fraction": 0.2, "split_seed": 0},
        "preprocessing": {"size": p.model_size},
        "model": {"arch": arch},
        "optimizer": {"name": "adam", "lr": p.lr},
        "schedule": {"epochs": p.epochs, "batch_size": p.batch_size},
        "recipe": {"name": "baseline"},
    }


def _train(args: tuple[dict[str, Any], str]) -> dict[str, Any]:
    from training.config import parse_config
    from training.loop import train

    config_map, run_dir = args
    result = train(parse_config(config_map), run_dir)
    acc = (result.test_metrics or {}).get("test_accuracy")
    return {"run_dir": run_dir, "accuracy": None if acc is None else float(acc)}


def generate_reference(out: Path, p: TrainPreset) -> Path:
    """The shortcut-free phantom under ``out/phantom`` (generated once; reused when present)."""
    from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset

    root = out / "phantom"
    if not (root / "phantom.json").is_file():
        cfg = PhantomConfig(
            n=p.n,
            size=p.phantom_size,
            seed=0,
            shortcut_corr=1.0 / 3.0,
            test_shortcut="decorrelated",
            nuisance_border_corr=0.5,
            nuisance_collimation_corr=0.5,
            nuisance_texture_corr=0.5,
        )
        generate_phantom_dataset(root, cfg)
    return root


def train_paper_models(
    preset: str | TrainPreset,
    out: str | Path,
    *,
    replicates: int = 2,
    other_arch: bool = True,
    device: str = "cpu",
    jobs: int = 1,
) -> PaperModels:
    """Generate the phantom, train and publish the main model, its replicates and the other architecture.

    Args:
        preset: a key of :data:`TRAIN_PRESETS` or a :class:`TrainPreset`.
        out: working directory (``phantom/``, ``cache/``, ``runs/``, ``registry/``).
        replicates: seeds of the main architecture (1: no repeatability partner).
        other_arch: also train ``preset.other_arch`` (the reproducibility partner).
        device: ``cpu`` or ``cuda``; jobs: runs trained in parallel processes (one thread each).

    Raises:
        PapersTrainingError: unknown preset, or a run published other than one model.
    """
    from training.config import parse_config
    from training.data import prepare_data
    from training.publish import publish_run

    if isinstance(preset, str):
        if preset not in TRAIN_PRESETS:
            raise PapersTrainingError(f"unknown preset {preset!r}; use one of {', '.join(TRAIN_PRESETS)}")
        p = TRAIN_PRESETS[preset]
    else:
        p = preset
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    root = generate_reference(out, p)
    cache = out / "cache"
    runs = [(p.main_arch, s) for s in range(max(1, int(replicates)))]
    if other_arch:
        runs.append((p.other_arch, 0))
    tasks = [
        (_config(p, arch, seed, root, cache, device), str(out / "runs" / f"{arch}-seed{seed}"))
        for arch, seed in runs
    ]
    prepare_data(parse_config(tasks[0][0]))  # build the tensor cache once before any worker reads it
    if jobs > 1 and device == "cpu":
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            trained = list(pool.map(_train, tasks))
    else:
        trained = [_train(t) for t in tasks]
    registry = out / "registry"
    refs: list[str] = []
    accuracy: dict[str, float | None] = {}
    for (arch, _), r in zip(runs, trained, strict=True):
        cards = publish_run(r["run_dir"], registry, f"papers-{arch.replace('_', '-')}")
        if len(cards) != 1:
            raise PapersTrainingError(f"run {r['run_dir']} published {len(cards)} models; expected one")
        ref = f"{cards[0].name}:{cards[0].version}"
        refs.append(ref)
        accuracy[ref] = r["accuracy"]
    n_main = len(runs) - (1 if other_arch else 0)
    models = PaperModels(
        registry=registry,
        reference=root,
        main=refs[0],
        replicates=refs[1:n_main],
        other=refs[-1] if other_arch else None,
        preset=asdict(p),
        test_accuracy=accuracy,
        seconds=time.perf_counter() - t0,
    )
    (out / "models.json").write_text(json.dumps(models.to_dict(), indent=2), encoding="utf-8")
    return models
