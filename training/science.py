"""The science benchmark: the training issue's evidence on the phantom with a planted shortcut.

The science benchmark (docs/results.md): one command generates a phantom dataset whose burned-in site
marker agrees with the label in train (``shortcut_corr`` 0.9) and is *reversed* in test, trains the baseline,
the Improved UNet (``unet_egd``), a normal ensemble, the explanation ensemble (Watson et al., WACV 2023) and
the mask-guided ActDiff and GradMask (Viviano et al.) with several seeds, publishes every run to a
registry (one replicate group per recipe: runs differ only in their seed), and writes a results table
(``results.md`` + ``results.json``) with, per recipe, mean ± std over seeds of:

* ``acc_reversed`` — test accuracy on the shortcut-reversed split;
* ``acc_no_shortcut`` — accuracy on a no-shortcut split. :class:`~mimicry.data.phantom.PhantomConfig` has no
  "marker absent" option, so this is the test split of a second phantom generated with the same seed and
  ``test_shortcut="decorrelated"`` (site drawn uniformly: agreement 1/3, nuisance cues at 0.5);
* ``kld`` / ``nss`` / ``auprc`` / ``marker_mass`` / ``consistency`` — the explanation columns, scored
  from the *published* versions by the audit itself (the composition root passes
  :func:`audit.science.score_explanations`, which runs :func:`audit.runner.run_audit` with the default policy,
  Grad-CAM only), so ``mimicry audit run`` on the
  benchmark's registry reproduces them: Grad-CAM of the labelled class (ensembles: the mean of the members'
  maps) with the policy's post-processing, un-letterboxed to the image's native resolution and compared with
  the static EGD heatmap (KLD) and the fixation map (NSS) (MIT-benchmark conventions,
  :mod:`audit.metrics.gaze`); pixel AUPRC against the finding mask (cases with a finding); the share of the
  map's mass in the site-marker box; and the replicate consistency (logistic-regression separability,
  Watson et al.) of each version against the other seeds of its recipe, averaged over the seeds (``None``
  with one seed). Paired t-tests against the baseline use the per-image KLD / NSS averaged over the seeds
  (``kld_p_vs_baseline``, ``nss_p_vs_baseline``).

Images are letterboxed to the model size exactly as training does (:mod:`training.data`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "PRESETS",
    "RECIPES",
    "BenchPreset",
    "ExplanationScorer",
    "PairedPValue",
    "ScienceError",
    "render_markdown",
    "run_config",
    "run_science",
]

log = logging.getLogger(__name__)

RECIPES: tuple[str, ...] = ("baseline", "unet_egd", "ensemble", "explanation_ensemble", "actdiff", "gradmask")
"""Recipes of the benchmark, in table order (``baseline`` is the reference of the paired tests)."""

METRICS: tuple[str, ...] = (
    "acc_reversed",
    "acc_no_shortcut",
    "kld",
    "nss",
    "auprc",
    "marker_mass",
)


class ScienceError(RuntimeError):
    """The benchmark cannot run (unknown preset or recipe, output directory already used)."""


@dataclass(frozen=True)
class BenchPreset:
    """Sizes of one benchmark run.

    Attributes:
        n: phantom cases (train/test split by patient, 20 % test; 20 % of train held out for validation).
        phantom_size: phantom image side (px); ``model_size``: letterboxed model input side.
        epochs, batch_size, lr: schedule of every recipe (Adam; the paper's baselines use lr 3e-3).
        seeds: run seeds ``0 … seeds-1``.
        n_members: sub-models of the two ensembles.
    """

    n: int
    phantom_size: int
    model_size: int
    epochs: int
    batch_size: int
    lr: float
    seeds: int
    n_members: int = 3
    recipes: tuple[str, ...] = field(default=RECIPES)


PRESETS: dict[str, BenchPreset] = {
    # 600 cases, 128² inputs, 3 seeds × 6 recipes: budgeted for 40 min on 2 CPU cores with --jobs 2 (not
    # measured yet; see docs/results.md).
    "quick": BenchPreset(n=600, phantom_size=256, model_size=128, epochs=4, batch_size=16, lr=3e-3, seeds=3),
    # The test's end-to-end check: seconds, one seed, 2-member ensembles.
    "smoke": BenchPreset(
        n=36, phantom_size=64, model_size=32, epochs=1, batch_size=8, lr=3e-3, seeds=1, n_members=2
    ),
}


_RECIPE_SECTIONS: dict[str, dict[str, Any]] = {
    "baseline": {"name": "baseline"},
    "unet_egd": {"name": "unet_egd", "gamma": 0.5, "heatmap_loss": "bce", "cls_loss": "bce"},
    "ensemble": {"name": "ensemble"},
    "explanation_ensemble": {"name": "explanation_ensemble", "beta": 0.2, "alpha": 2, "cam_target": "label"},
    "actdiff": {"name": "actdiff", "lambda_act": 1.0, "roi_dilation_px": 2, "layer": "preactivation"},
    "gradmask": {"name": "gradmask", "lambda_grad": 1.0, "roi_dilation_px": 2},
}


def run_config(preset: BenchPreset, recipe: str, seed: int, root: Path, cache: Path) -> dict[str, Any]:
    """The training config (a mapping for :func:`training.config.parse_config`) of one benchmark run."""
    if recipe not in _RECIPE_SECTIONS:
        raise ScienceError(f"unknown recipe {recipe!r}; the benchmark runs {', '.join(RECIPES)}")
    section = dict(_RECIPE_SECTIONS[recipe])
    if recipe in ("ensemble", "explanation_ensemble"):
        section["n_members"] = preset.n_members
    return {
        "seed": seed,
        "device": "cpu",
        "deterministic": "strict",
        "num_threads": 1,
        "progress": False,
        "data": {"root": str(root), "cache_dir": str(cache), "val_fraction": 0.2, "split_seed": 0},
        "preprocessing": {"size": preset.model_size},
        "model": {"arch": "unet_egd_tiny" if recipe == "unet_egd" else "unet_tiny"},
        "optimizer": {"name": "adam", "lr": preset.lr},
        "schedule": {"epochs": preset.epochs, "batch_size": preset.batch_size},
        "recipe": section,
    }


# --------------------------------------------------------------------------------------------- data


def _generate(out: Path, preset: BenchPreset, test_shortcut: str) -> Path:
    from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset

    root = out / f"phantom-{test_shortcut}"
    if not (root / "phantom.json").is_file():
        cfg = PhantomConfig(n=preset.n, size=preset.phantom_size, seed=0, test_shortcut=test_shortcut)  # type: ignore[arg-type]
        generate_phantom_dataset(root, cfg)
    return root


#: How the explanation columns are scored (:func:`run_science`'s ``score_explanations``): ``(registry, refs,
#: reference, jobs=...) -> ref -> {"means": {kld, nss, auprc, marker_mass}, "per_case": {kld, nss},
#: "consistency", "n_with_finding"}``. The composition root passes :func:`audit.science.score_explanations`,
#: which runs the audit itself, so training never imports the audit.
ExplanationScorer = Callable[..., dict[str, dict[str, Any]]]

#: A paired test's p-value of per-image scores ``a`` vs ``b`` (the composition root passes the audit's paired
#: t-test, :func:`audit.science.paired_pvalue`).
PairedPValue = Callable[[np.ndarray, np.ndarray], float]


# --------------------------------------------------------------------------------------------- one run


@torch.no_grad()
def _predict(recipe: Any, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Predicted labels ``[N]`` (ensembles: argmax of the members' mean probabilities)."""
    models = recipe.classifiers()
    for m in models:
        m.eval()
    labels = []
    for s in range(0, len(images), batch):
        x = images[s : s + batch]
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in models]).mean(dim=0)
        labels.append(probs.argmax(dim=1).numpy())
    return np.concatenate(labels)


def _train_one(args: tuple[dict[str, Any], str, str]) -> dict[str, Any]:
    """Train one (recipe, seed) run and return its predictions and maps (runs in a worker process)."""
    config_map, run_dir, no_shortcut_root = args
    from training.config import parse_config
    from training.data import prepare_data
    from training.loop import train

    config = parse_config(config_map)
    t0 = time.perf_counter()
    result = train(config, run_dir)
    bundle = prepare_data(config)
    other = prepare_data(
        parse_config({**config_map, "data": {**config_map["data"], "root": no_shortcut_root}})
    )
    return {
        "run_dir": run_dir,
        "replicate_group": result.replicate_group,
        "pred": _predict(result.recipe, bundle.test.image),
        "pred_no_shortcut": _predict(result.recipe, other.test.image),
        "label_no_shortcut": other.test.label.numpy(),
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------- table


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def render_markdown(table: dict[str, Any]) -> str:
    """The results table as markdown (mean ± std over seeds; p-values of the paired tests vs baseline)."""
    head = (
        "| recipe | acc reversed ↑ | acc no-shortcut ↑ | KLD ↓ | p (KLD vs base) | NSS ↑ | p (NSS vs base) "
        "| AUPRC finding ↑ | marker mass ↓ | consistency ↑ |"
    )
    lines = [head, "|" + "---|" * 10]

    def ms(cell: dict[str, Any]) -> str:
        return "n/a" if cell["mean"] is None else f"{cell['mean']:.3f} ± {cell['std']:.3f}"

    def num(v: float | None, fmt: str = ".3g") -> str:
        return "n/a" if v is None else format(v, fmt)

    for name, row in table["recipes"].items():
        lines.append(
            f"| {name} | {ms(row['acc_reversed'])} | {ms(row['acc_no_shortcut'])} | {ms(row['kld'])} | "
            f"{num(row['kld_p_vs_baseline'])} | {ms(row['nss'])} | {num(row['nss_p_vs_baseline'])} | "
            f"{ms(row['auprc'])} | {ms(row['marker_mass'])} | {num(row['consistency'], '.3f')} |"
        )
    meta = table["meta"]
    lines += [
        "",
        f"preset `{meta['preset']}`: {meta['n']} phantom cases at {meta['phantom_size']}², model input "
        f"{meta['model_size']}², {meta['epochs']} epochs, seeds {meta['seeds']}; test split n = "
        f"{meta['n_test']}; wall time {meta['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def run_science(
    preset: str | BenchPreset = "quick",
    out: str | Path = "runs/science",
    *,
    registry: str | Path | None = None,
    seeds: int | None = None,
    jobs: int = 1,
    recipes: Sequence[str] | None = None,
    score_explanations: ExplanationScorer,
    paired_pvalue: PairedPValue,
    scored_checks: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the benchmark into ``out`` and return the results table (also ``out/results.{json,md}``).

    Args:
        preset: a key of :data:`PRESETS` or a :class:`BenchPreset`.
        out: output directory (phantoms, tensor cache, ``runs/<recipe>-seed<k>``, results).
        registry: publish every run there as ``science-<recipe>`` (replicate groups recorded per run);
            default ``out/registry``. The explanation columns are scored from the published versions.
        seeds: override the preset's seed count.
        jobs: worker processes training runs in parallel (one thread each).
        recipes: subset of :data:`RECIPES` (``baseline`` is always added: the paired tests need it).
        score_explanations: scores the published versions' explanations (:data:`ExplanationScorer`).
        paired_pvalue: the paired test of per-image scores against the baseline (:data:`PairedPValue`).
        scored_checks: the audit checks ``score_explanations`` runs (recorded in ``results.json``).

    Raises:
        ScienceError: unknown preset / recipe, or ``out`` already holds results.
    """
    from training.publish import publish_run

    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ScienceError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        name, p = preset, PRESETS[preset]
    else:
        name, p = "custom", preset
    if seeds is not None:
        p = replace(p, seeds=int(seeds))
    if recipes is not None:
        unknown = [r for r in recipes if r not in RECIPES]
        if unknown:
            raise ScienceError(f"unknown recipe(s) {unknown}; the benchmark runs {', '.join(RECIPES)}")
        p = replace(p, recipes=tuple(r for r in RECIPES if r == "baseline" or r in recipes))
    out = Path(out)
    if (out / "results.json").exists():
        raise ScienceError(f"{out} already holds results: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    reversed_root = _generate(out, p, "reversed")
    no_shortcut_root = _generate(out, p, "decorrelated")
    cache = out / "cache"

    tasks = []
    for recipe in p.recipes:
        for seed in range(p.seeds):
            cfg = run_config(p, recipe, seed, reversed_root, cache)
            tasks.append((cfg, str(out / "runs" / f"{recipe}-seed{seed}"), str(no_shortcut_root)))
    # Build the tensor caches once before the workers read them.
    from training.config import parse_config
    from training.data import prepare_data

    bundle = prepare_data(parse_config(tasks[0][0]))
    prepare_data(
        parse_config({**tasks[0][0], "data": {**tasks[0][0]["data"], "root": str(no_shortcut_root)}})
    )
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_train_one, tasks))
    else:
        results = [_train_one(t) for t in tasks]

    registry_dir = Path(registry) if registry is not None else out / "registry"
    published: dict[str, list[str]] = {}
    for r, task in zip(results, tasks, strict=True):
        recipe = task[0]["recipe"]["name"]
        cards = publish_run(r["run_dir"], registry_dir, f"science-{recipe}")
        published.setdefault(recipe, []).extend(f"{c.name}@{c.version}" for c in cards)
        if len(cards) != 1:  # ensembles publish as one `ensemble` model; anything else cannot be scored
            raise ScienceError(f"run {r['run_dir']} published {len(cards)} models; expected one")
        r["ref"] = f"{cards[0].name}:{cards[0].version}"
    audits = score_explanations(registry_dir, [r["ref"] for r in results], reversed_root, jobs=jobs)

    label = bundle.test.label.numpy()
    per_image: dict[str, dict[str, list[np.ndarray]]] = {}
    rows: dict[str, Any] = {}
    k = 0
    for recipe in p.recipes:
        runs = results[k : k + p.seeds]
        k += p.seeds
        scores: dict[str, list[float]] = {m: [] for m in METRICS}
        img: dict[str, list[np.ndarray]] = {"kld": [], "nss": []}
        consistency: list[float] = []
        for r in runs:
            ev = audits[r["ref"]]
            scores["acc_reversed"].append(float((r["pred"] == label).mean()))
            scores["acc_no_shortcut"].append(float((r["pred_no_shortcut"] == r["label_no_shortcut"]).mean()))
            for m in ("kld", "nss", "auprc", "marker_mass"):
                scores[m].append(ev["means"][m])
            img["kld"].append(ev["per_case"]["kld"])
            img["nss"].append(ev["per_case"]["nss"])
            if ev["consistency"] is not None:
                consistency.append(ev["consistency"])
        per_image[recipe] = img
        rows[recipe] = {
            **{m: _mean_std(scores[m]) for m in METRICS},
            "per_seed": scores,
            "audited": [r["ref"] for r in runs],
            "consistency": _finite_or_none(float(np.mean(consistency))) if consistency else None,
            "replicate_group": runs[0]["replicate_group"],
            "train_seconds": [round(r["seconds"], 1) for r in runs],
        }
    base = per_image["baseline"]
    for recipe, row in rows.items():
        for m in ("kld", "nss"):
            if recipe == "baseline":
                row[f"{m}_p_vs_baseline"] = None
                continue
            a = np.nanmean(np.stack(per_image[recipe][m]), axis=0)
            b = np.nanmean(np.stack(base[m]), axis=0)
            row[f"{m}_p_vs_baseline"] = _finite_or_none(paired_pvalue(a, b))

    table = {
        "format": 1,
        "meta": {
            "preset": name,
            **{k2: v for k2, v in asdict(p).items() if k2 != "recipes"},
            "recipes": list(p.recipes),
            "n_test": len(label),
            "n_test_with_finding": next(iter(audits.values()))["n_with_finding"],
            "registry": str(registry_dir),
            "audit": {"reference": str(reversed_root), "checks": list(scored_checks), "method": "gradcam"},
            "no_shortcut_split": "test split of the same-seed phantom with test_shortcut=decorrelated",
            "seconds": time.perf_counter() - t0,
            "published": published,
        },
        "recipes": rows,
    }
    (out / "results.json").write_text(json.dumps(table, indent=2, allow_nan=False), encoding="utf-8")
    (out / "results.md").write_text(render_markdown(table), encoding="utf-8")
    return table
