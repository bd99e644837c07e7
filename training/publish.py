"""Publish a finished run into a model registry (docs/architecture.md, "The registry";
"A model's life").

:func:`publish_run` reads ``run_dir/result.json``, ``config.yaml``, the weights (sha256-checked) and the held
batch that :func:`training.loop.train` wrote, rebuilds the model(s) with
:func:`mimicry.models.zoo.build_model` and calls :meth:`mimicry.registry.Registry.publish` (ONNX export with
parity checks, safetensors twin, sealed card). Card fields filled from the run:

* ``training_config``: the run's config (JSON); ``seed``: the run seed;
* ``replicate_group``: :func:`training.loop.replicate_group` — recipe, architecture, data fingerprint and a
  hash of the settings *without the seed*, so replicates of one recipe share it (repeatability audit);
* ``dataset_fingerprint``: sha256 of the dataset's CSVs / phantom.json;
* ``reference_stats``: mean / std over the training images of each image's mean letterboxed display
  intensity (serving's OOD check), plus the GAP-feature mean / std of single-classifier runs;
* ``uncertainty``: abstain above the 95th percentile of the validation predictive entropy;
* ``metrics``: the test metrics (``test_loss``, ``test_accuracy``, ``test_auroc``, ...) and the final
  validation metrics; ``extra``: recipe, best epoch, early stopping, split sizes.

Ensembles (several classifiers in the run): when the ``ensemble`` architecture is registered
(:mod:`mimicry.models.ensemble`: mean of the members' probabilities, Eq. 1 of Watson et al.) the run is
published as *one* model of that architecture (kwargs ``{"arch", "arch_kwargs", "n_members"}``, state-dict
keys ``submodels.<i>.…``); otherwise every member is published as its own model ``<name>-member<i>``, all
with the run's replicate group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from safetensors.torch import load_file

from mimicry.preprocess import PreprocessSpec
from mimicry.registry import ModelCard, PublishError, Registry
from training.checkpoint import sha256_file
from training.loop import RESULT_FILE
from training.recipes import ensure_architectures

__all__ = ["ENSEMBLE_ARCHITECTURE", "RunNotFinishedError", "publish_run"]

ENSEMBLE_ARCHITECTURE = "ensemble"


class RunNotFinishedError(PublishError):
    """The run directory has no ``result.json`` (training did not finish) or its files do not verify."""


def _load_weights(run_dir: Path, member: dict[str, Any]) -> dict[str, Any]:
    path = run_dir / member["weights"]
    if not path.is_file():
        raise RunNotFinishedError(f"weights file {member['weights']} is missing from the run")
    if sha256_file(path) != member["sha256"]:
        raise RunNotFinishedError(f"weights file {member['weights']} does not match result.json")
    return load_file(path, device="cpu")


def publish_run(
    run_dir: str | Path,
    registry: Registry | str | Path,
    name: str,
    *,
    exporter: Literal["dynamo", "torchscript"] = "dynamo",
    ensemble_architecture: bool | None = None,
) -> list[ModelCard]:
    """Publish the model(s) of a finished run; returns the published cards (one, or one per member).

    Args:
        run_dir: A directory written by :func:`training.loop.train`.
        registry: The registry (or its directory).
        name: Model name (ensemble members without the ``ensemble`` architecture: ``<name>-member<i>``).
        exporter: ONNX exporter passed to :meth:`Registry.publish`.
        ensemble_architecture: For multi-member runs: ``True`` requires the ``ensemble`` architecture,
            ``False`` publishes members separately, ``None`` uses it when it is registered.

    Raises:
        RunNotFinishedError: no ``result.json``, or a weights file does not verify.
        PublishError: ``ensemble_architecture=True`` without a registered ``ensemble`` architecture.
        mimicry.registry.RegistryError: the registry refused the export or the publication.
    """
    from mimicry.models.zoo import build_model, list_architectures

    run = Path(run_dir)
    result_path = run / RESULT_FILE
    if not result_path.is_file():
        raise RunNotFinishedError("the run has no result.json: training did not finish")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    training_config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    held = load_file(run / result["held_batch"], device="cpu")["image"]
    spec = PreprocessSpec(**result["preprocessing"])
    arch, kwargs = result["architecture"], dict(result["arch_kwargs"])
    metrics = {**result["test_metrics"], **result["val_metrics"]}
    card_fields: dict[str, Any] = {
        "training_config": training_config,
        "seed": int(result["seed"]),
        "replicate_group": result["replicate_group"],
        "dataset_fingerprint": result["dataset_fingerprint"],
        "metrics": metrics,
    }
    for key in ("reference_stats", "uncertainty"):  # written by training.loop since they were added
        if result.get(key) is not None:
            card_fields[key] = result[key]
    extra = {
        "recipe": result["recipe"],
        "best_epoch": result["best_epoch"],
        "best_metric": result["best_metric"],
        "stopped_early": result["stopped_early"],
        "restored_best": result["restored_best"],
        "epochs_completed": result["epochs_completed"],
        "split_sizes": result["split_sizes"],
    }
    ensure_architectures(arch)
    members = result["members"]
    states = [_load_weights(run, m) for m in members]

    def _model(state: dict[str, Any]) -> Any:
        model = build_model(arch, **kwargs)
        model.load_state_dict(state, strict=True)
        model.black_level = (0.0 - spec.mean) / spec.std
        return model.eval()

    if len(members) == 1:
        card = reg.publish(
            _model(states[0]), name=name, held_batch=held, preprocessing=spec, architecture=arch,
            arch_kwargs=kwargs, exporter=exporter, extra=extra, **card_fields,
        )  # fmt: skip
        cards = [card]
    else:
        ensure_architectures(ENSEMBLE_ARCHITECTURE)
        available = ENSEMBLE_ARCHITECTURE in list_architectures()
        use = available if ensemble_architecture is None else ensemble_architecture
        if use and not available:
            raise PublishError("the 'ensemble' architecture is not registered in mimicry.models.zoo")
        if use:
            ens_kwargs = {"arch": arch, "arch_kwargs": kwargs, "n_members": len(members)}
            model = build_model(ENSEMBLE_ARCHITECTURE, **ens_kwargs)
            state = {f"submodels.{i}.{k}": v for i, s in enumerate(states) for k, v in s.items()}
            model.load_state_dict(state, strict=True)
            model.black_level = (0.0 - spec.mean) / spec.std
            card = reg.publish(
                model.eval(), name=name, held_batch=held, preprocessing=spec,
                architecture=ENSEMBLE_ARCHITECTURE, arch_kwargs=ens_kwargs, exporter=exporter,
                extra={**extra, "members": [m["name"] for m in members]}, **card_fields,
            )  # fmt: skip
            cards = [card]
        else:
            cards = [
                reg.publish(
                    _model(state),
                    name=f"{name}-member{i}",
                    held_batch=held,
                    preprocessing=spec,
                    architecture=arch,
                    arch_kwargs=kwargs,
                    exporter=exporter,
                    extra={**extra, "ensemble_member": i, "ensemble_size": len(members)},
                    **card_fields,
                )
                for i, state in enumerate(states)
            ]
    record_path = run / "published.jsonl"
    with record_path.open("a", encoding="utf-8") as fh:
        for card in cards:
            fh.write(json.dumps({"registry": str(reg.root), "ref": card.ref}) + "\n")
    return cards
