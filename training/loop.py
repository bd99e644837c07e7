"""The shared training engine: one loop for every recipe (:mod:`training.recipes`).

:func:`train` runs a :class:`~training.config.TrainConfig` into a run directory::

    run_dir/config.yaml                 the validated config (written first)
    run_dir/metrics.jsonl               one JSON object per epoch (train terms, val metrics, best so far)
    run_dir/checkpoint/                 the latest checkpoint (:mod:`training.checkpoint`), every epoch
    run_dir/weights/<name>.safetensors  the final (or best, see early stopping) classifier weights
    run_dir/held_batch.safetensors      a few preprocessed validation images (registry parity checks)
    run_dir/result.json                 summary: recipe, architecture, seed, fingerprint, replicate group,
                                        best epoch, test metrics, weight files with sha256

Per epoch ``e`` (0-based): the recipe's data streams are shuffled with ``derive_seed(seed, "data", s, e)``;
for each step the engine zeroes the ``main`` optimiser, calls ``recipe.training_step``, back-propagates
``loss`` (a non-finite loss raises :class:`NonFiniteLossError`), clips (``schedule.grad_clip_norm``), steps,
then calls ``recipe.after_step``. Validation reports ``val_loss`` (mean NLL), ``val_accuracy``, ``val_auroc``
(macro one-vs-rest, scikit-learn) plus the recipe's extras. Early stopping monitors
``early_stopping.metric``; the best epoch's weights are kept in memory and in the checkpoint, and restored at
the end when ``early_stopping.enabled`` and ``restore_best``. Test metrics (``test_*``) are computed once,
on the final weights.

Data parallelism: launched by ``torchrun`` with ``WORLD_SIZE > 1``, the engine joins the process group, shards
each epoch's order over the ranks, averages gradients before every optimiser step, and only rank 0 writes the
run directory (:mod:`training.distributed`). A single-process run is unchanged.

Determinism: :func:`training.seeding.determinism` (``torch.use_deterministic_algorithms``) for the whole
run; the data order depends only on (seed, stream, epoch) and the global RNG states are checkpointed, so on
CPU two runs with one seed — and a run resumed from any epoch's checkpoint — give bit-identical weights.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from training import distributed
from training.checkpoint import (
    CheckpointError,
    has_checkpoint,
    load_checkpoint,
    load_module_tensors,
    load_optimizer_state,
    module_tensors,
    optimizer_state,
    save_checkpoint,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from training.config import LossConfig, TrainConfig, dump_config, parse_config
from training.data import DataBundle, SplitTensors, make_loader, prepare_data
from training.metrics import classification_metrics
from training.recipes import Recipe, RecipeContext, get_recipe, resolved_arch_kwargs
from training.seeding import (
    capture_rng_state,
    derive_seed,
    determinism,
    restore_rng_state,
    seed_everything,
)

__all__ = [
    "HELD_BATCH_FILE",
    "RESULT_FILE",
    "RESUMABLE_KEYS",
    "ConfigMismatchError",
    "EarlyStopper",
    "EpochEnd",
    "NonFiniteLossError",
    "RunDirError",
    "TrainResult",
    "TrainingError",
    "compute_class_weights",
    "evaluate",
    "read_metrics",
    "recalibrate_batchnorm",
    "reference_statistics",
    "replicate_group",
    "train",
    "uncertainty_spec",
]

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
HELD_BATCH_FILE = "held_batch.safetensors"
HELD_BATCH_SIZE = 8
RESULT_FORMAT = 1
RESUMABLE_KEYS: tuple[tuple[str, ...], ...] = (
    ("schedule", "epochs"),
    ("progress",),
    ("device",),
    ("num_threads",),
)
"""Config keys that may differ between a run and its resumption (everything else must match)."""


class TrainingError(RuntimeError):
    """Base class of the engine's errors."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite."""


class RunDirError(TrainingError):
    """The run directory already holds a run (and ``resume`` was not asked for)."""


class ConfigMismatchError(TrainingError):
    """``resume`` with a config that differs from the run's saved ``config.yaml`` beyond the epoch count."""


@dataclass
class EpochEnd:
    """What callbacks receive after each epoch (after the checkpoint is written)."""

    epoch: int
    record: dict[str, Any]
    recipe: Recipe
    improved: bool


@dataclass
class TrainResult:
    """Outcome of :func:`train` (the same facts as ``run_dir/result.json``, plus the live recipe)."""

    run_dir: Path
    config: TrainConfig
    recipe: Recipe
    history: list[dict[str, Any]]
    test_metrics: dict[str, float]
    best_epoch: int | None
    best_metric: float | None
    stopped_early: bool
    restored_best: bool
    fingerprint: str
    replicate_group: str
    summary: dict[str, Any] = field(default_factory=dict)


class EarlyStopper:
    """Tracks the best value of a metric and counts epochs without improvement.

    An epoch improves when its value beats the best by more than ``min_delta`` (``mode`` max: ``v > best +
    δ``; min: ``v < best − δ``); NaN never improves. ``should_stop`` once ``patience`` consecutive epochs did
    not improve.
    """

    def __init__(self, mode: str, patience: int, min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.mode, self.patience, self.min_delta = mode, int(patience), float(min_delta)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` of ``epoch``; returns whether it is the new best."""
        v = float(value)
        improved = math.isfinite(v) and (
            self.best is None
            or (v > self.best + self.min_delta if self.mode == "max" else v < self.best - self.min_delta)
        )
        if improved:
            self.best, self.best_epoch, self.bad_epochs = v, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])


def compute_class_weights(loss: LossConfig, counts: np.ndarray) -> Tensor | None:
    """Class weights of the classification loss: ``None`` (``"none"``), ``N / (K · N_k)`` (``"balanced"``,
    classes absent from the training split get weight 0), or the explicit list."""
    if loss.class_weights == "none":
        return None
    if loss.class_weights == "balanced":
        counts = np.asarray(counts, dtype=np.float64)
        k = counts.size
        weights = np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32)
    return torch.tensor(list(loss.class_weights), dtype=torch.float32)


def replicate_group(config: TrainConfig, fingerprint: str) -> str:
    """``<recipe>-<arch>-<data fingerprint[:12]>-<settings hash[:12]>``: equal for runs that differ only in
    their seed (and run-local knobs), i.e. replicates (:meth:`TrainConfig.replicate_key`)."""
    return f"{config.recipe.name}-{config.model.arch}-{fingerprint[:12]}-{config.replicate_key()[:12]}"


def _json_value(v: Any) -> Any:
    if isinstance(v, Tensor):
        v = v.detach().item()
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


_LOGGED = ("train_loss", "val_loss", "val_accuracy", "val_auroc")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (empty when absent)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@torch.no_grad()
def evaluate(recipe: Recipe, split: SplitTensors, prefix: str) -> dict[str, float]:
    """``{prefix}_loss/_accuracy/_auroc`` of the recipe's prediction on ``split`` (+ the recipe's extras)."""
    size = recipe.config.schedule.eval_batch_size
    device = recipe.context.device
    was_training = recipe.modules.training
    recipe.modules.eval()
    try:
        probs = [
            recipe.predict_proba(split.image[s : s + size].to(device)).float().cpu()
            for s in range(0, len(split), size)
        ]
        p = torch.cat(probs).numpy()
        metrics = classification_metrics(split.label.numpy(), p, prefix)
        with torch.enable_grad():
            metrics.update(recipe.validation_metrics(split, prefix))
    finally:
        recipe.modules.train(was_training)
    return metrics


@torch.no_grad()
def recalibrate_batchnorm(recipe: Recipe, split: SplitTensors) -> int:
    """Precise BatchNorm: re-estimate every classifier's BatchNorm running statistics on ``split``.

    Training keeps the running mean/variance as an exponential moving average (momentum 0.1) of batch
    statistics computed with *earlier* weights. When the weights move fast — tiny models, Adam at the paper's
    lr 3e-3, a few hundred steps — that average lags, and a GAP → linear classifier reading a small cue (the
    phantom's burned-in site marker) is thrown off: on the 480-case demo phantom the baseline's eval-mode
    accuracy on its own *training* images was 0.36 while train mode (batch statistics) gave 0.90; the same
    weights with recalibrated statistics give 0.90. Following Wu & Johnson ("Rethinking 'Batch' in
    BatchNorm", 2021), the statistics are replaced by the plain (cumulative) average over one pass of the
    training split in the training batch size, with the final weights: :func:`torch.optim.swa_utils.update_bn`
    (which resets the statistics, sets ``momentum=None``, runs the model in train mode and restores momenta
    and mode). Deterministic: the split is read in order and no parameter changes.

    Returns:
        How many classifiers held BatchNorm layers (and were recalibrated); models without any are untouched.
    """
    from torch.optim.swa_utils import update_bn

    size = recipe.config.schedule.batch_size
    device = recipe.context.device
    batches = [split.image[s : s + size] for s in range(0, len(split), size)]
    if len(batches) > 1 and len(batches[-1]) == 1:  # a one-sample batch has no batch variance
        batches[-2:] = [torch.cat(batches[-2:])]
    done = 0
    for model in recipe.classifiers():
        if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            continue
        update_bn(batches, model, device=device)
        done += 1
    return done


ABSTAIN_QUANTILE = 0.95
"""Quantile of the validation predictive entropy used as the card's abstention threshold."""


@torch.no_grad()
def reference_statistics(recipe: Recipe, train_split: SplitTensors) -> dict[str, Any]:
    """``reference_stats`` of the model card (serving's out-of-distribution check).

    * ``image_mean`` / ``image_std``: mean and (population) std, across the training images, of each image's
      mean *display* intensity in ``[0, 1]`` after letterboxing (the model input un-normalised:
      ``x · std + mean`` of the run's preprocessing).
    * ``feature_mean`` / ``feature_std`` (``feature_layer: "gap"``): per-channel mean and std of the globally
      average-pooled :meth:`features` of the training images — single-classifier runs only.
    """
    spec = recipe.config.preprocessing
    per_image = train_split.image.double().mean(dim=(1, 2, 3)) * spec.std + spec.mean
    stats: dict[str, Any] = {
        "n_samples": len(train_split),
        "image_mean": float(per_image.mean()),
        "image_std": float(per_image.std(unbiased=False)),
    }
    classifiers = recipe.classifiers()
    if len(classifiers) == 1:
        model, size = classifiers[0], recipe.config.schedule.eval_batch_size
        was_training = model.training
        model.eval()
        try:
            feats = torch.cat(
                [
                    model.features(train_split.image[s : s + size].to(recipe.context.device))
                    .mean(dim=(2, 3))
                    .double()
                    .cpu()
                    for s in range(0, len(train_split), size)
                ]
            )
        finally:
            model.train(was_training)
        stats.update(
            feature_layer="gap",
            feature_mean=feats.mean(dim=0).tolist(),
            feature_std=feats.std(dim=0, unbiased=False).tolist(),
        )
    return stats


@torch.no_grad()
def uncertainty_spec(recipe: Recipe, val_split: SplitTensors, quantile: float = ABSTAIN_QUANTILE) -> dict:
    """``uncertainty`` of the model card: abstain above the ``quantile`` (0.95) of the validation predictive
    entropy ``H(p) = −Σ_c p_c ln p_c`` (nats) of :meth:`Recipe.predict_proba`."""
    size = recipe.config.schedule.eval_batch_size
    was_training = recipe.modules.training
    recipe.modules.eval()
    try:
        p = torch.cat(
            [
                recipe.predict_proba(val_split.image[s : s + size].to(recipe.context.device)).double().cpu()
                for s in range(0, len(val_split), size)
            ]
        )
    finally:
        recipe.modules.train(was_training)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(dim=1)
    threshold = float(np.quantile(entropy.numpy(), quantile))
    return {
        "measure": "predictive_entropy",
        "abstain_threshold": max(0.0, threshold),
        "calibration": {"method": "quantile", "quantile": quantile, "split": "val", "n": len(val_split)},
    }


def _comparable(config: TrainConfig) -> dict[str, Any]:
    data = config.to_json_dict()
    for path in RESUMABLE_KEYS:
        node = data
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    return data


def _check_resume_config(run_dir: Path, config: TrainConfig) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = parse_config(yaml.safe_load(saved_path.read_text(encoding="utf-8")))
    a, b = _comparable(saved), _comparable(config)
    if a != b:
        differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ConfigMismatchError(
            f"the config differs from the run's config.yaml in section(s) {', '.join(differing)}; only "
            "schedule.epochs, progress, device and num_threads may change on resume"
        )


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    data: DataBundle | None = None,
    callbacks: Sequence[Callable[[EpochEnd], None]] = (),
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (module docstring); resume from its checkpoint when ``resume``.

    Args:
        config: The validated run config.
        run_dir: Output directory (created).
        resume: Continue from ``run_dir/checkpoint`` (a fresh start when there is none yet).
        data: Pre-built tensors (tests, notebooks); ``None`` prepares them from ``config.data``.
        callbacks: Called with an :class:`EpochEnd` after each epoch's checkpoint (on rank 0 only when
            data-parallel).

    Raises:
        RunDirError: ``run_dir`` already holds a run and ``resume`` is false.
        ConfigMismatchError: resuming with a different config.
        NonFiniteLossError: the loss diverged.
        training.data.DataError, training.recipes.RecipeError, CheckpointError: see those modules.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoint"
    if not resume and (has_checkpoint(ckpt_dir) or (run_dir / RESULT_FILE).exists()):
        raise RunDirError(f"{run_dir} already holds a run: resume it or choose another directory")
    if resume:
        _check_resume_config(run_dir, config)
    ctx = distributed.setup(config.resolved_device())
    try:
        resume = resume and has_checkpoint(ckpt_dir)
        distributed.barrier(ctx)  # every rank has looked at the run directory before rank 0 writes to it
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / "config.yaml", dump_config(config))
        distributed.barrier(ctx)
        with determinism(config.deterministic, config.num_threads):
            return _train(config, run_dir, resume=resume, data=data, callbacks=callbacks, ctx=ctx)
    finally:
        distributed.teardown(ctx)


def _snapshot(recipe: Recipe) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in recipe.modules.state_dict().items()}


def _train(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    data: DataBundle | None,
    callbacks: Sequence[Callable[[EpochEnd], None]],
    ctx: distributed.DistContext,
) -> TrainResult:
    device = distributed.resolved_device(ctx, config.resolved_device())
    seed_everything(derive_seed(config.seed, "train"))
    if data is not None:
        bundle = data
    else:
        with distributed.main_process_first(ctx):  # rank 0 generates the phantom / fills the cache
            bundle = prepare_data(config)
    weights = compute_class_weights(config.loss, bundle.train.class_counts(bundle.num_classes))
    context = RecipeContext(
        config=config,
        class_names=bundle.class_names,
        input_size=bundle.preprocessing.size,
        device=device,
        class_weights=None if weights is None else weights.to(device),
    )
    recipe = get_recipe(config.recipe.name)(context)
    recipe.setup()
    distributed.broadcast_module(ctx, recipe.modules)
    es = config.early_stopping
    stopper = EarlyStopper(es.mode, es.patience, es.min_delta)
    best_state: dict[str, Tensor] | None = None
    start_epoch, stopped_early = 0, False
    metrics_path = run_dir / "metrics.jsonl"

    if resume:
        start_epoch, tensors, scalars = load_checkpoint(run_dir / "checkpoint")
        if scalars.get("recipe") != config.recipe.name:
            raise CheckpointError("the checkpoint was written by another recipe")
        load_module_tensors(recipe.modules, tensors, "model")
        for name, opt in recipe.optimizers.items():
            load_optimizer_state(opt, tensors, scalars["optimizers"][name], f"optim.{name}")
        stopper.load_state_dict(scalars["early_stopping"])
        if any(k.startswith("best.") for k in tensors):
            best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
        stopped_early = bool(scalars.get("stopped_early", False))
        restore_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, scalars["rng"])
        history = [r for r in read_metrics(run_dir) if int(r["epoch"]) < start_epoch]
        log.info("resuming at epoch %d of %d", start_epoch + 1, config.schedule.epochs)
    else:
        history = []
    if ctx.is_main:
        write_text_atomic(metrics_path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in history))

    progress = bool(config.progress and sys.stderr.isatty() and ctx.is_main)
    for epoch in range(start_epoch, config.schedule.epochs):
        if stopped_early:
            break
        t0 = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch}
        record.update(_run_epoch(recipe, bundle, epoch, progress, ctx))
        distributed.average_buffers(ctx, recipe.modules)
        if config.schedule.bn_recalibration:
            recalibrate_batchnorm(recipe, bundle.train)
        record.update(evaluate(recipe, bundle.val, "val"))
        record["lr"] = float(recipe.optimizers["main"].param_groups[0]["lr"])
        improved = stopper.update(record[es.metric], epoch)
        if improved:
            best_state = _snapshot(recipe)
        record.update(
            best_epoch=stopper.best_epoch, best_value=stopper.best, seconds=time.perf_counter() - t0
        )
        record = {k: _json_value(v) for k, v in record.items()}
        stopped_early = bool(es.enabled and stopper.should_stop and epoch + 1 < config.schedule.epochs)
        history.append(record)
        if ctx.is_main:
            with metrics_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, allow_nan=False) + "\n")
            _save(run_dir, recipe, epoch + 1, stopper, best_state, stopped_early)
        distributed.barrier(ctx)
        if not ctx.is_main:
            continue
        log.info(
            "epoch %d/%d: %s",
            epoch + 1,
            config.schedule.epochs,
            " ".join(f"{k}={_fmt(record.get(k))}" for k in _LOGGED),
        )
        for callback in callbacks:
            callback(EpochEnd(epoch=epoch, record=record, recipe=recipe, improved=improved))

    restored = False
    if es.enabled and es.restore_best and best_state is not None:
        recipe.modules.load_state_dict(best_state)
        restored = True
    result = _finish(run_dir, config, recipe, bundle, history, stopper, stopped_early, restored, ctx)
    distributed.barrier(ctx)
    return result


def _run_epoch(
    recipe: Recipe,
    bundle: DataBundle,
    epoch: int,
    progress: bool,
    ctx: distributed.DistContext | None = None,
) -> dict[str, float]:
    ctx = ctx or distributed.DistContext()
    config = recipe.config
    sched = config.schedule
    device = recipe.context.device
    recipe.epoch = epoch
    recipe.modules.train()
    recipe.epoch_start(epoch)
    streams = recipe.data_streams()
    loaders = [
        make_loader(
            bundle.train,
            sched.batch_size,
            shuffle=True,
            seed=derive_seed(config.seed, "data", s, epoch),
            drop_last=sched.drop_last,
            num_workers=sched.num_workers,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        for s in range(streams)
    ]
    main = recipe.optimizers["main"]
    params = [p for group in main.param_groups for p in group["params"]]
    main_ids = {id(p) for p in params}
    others = [p for p in recipe.modules.parameters() if id(p) not in main_ids]
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    bar = tqdm(
        zip(*loaders, strict=True),
        total=len(loaders[0]),
        desc=f"epoch {epoch + 1}/{sched.epochs}",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    for step, batches in enumerate(bar):
        moved = tuple(b.to(device) for b in batches)
        batch = moved[0] if streams == 1 else moved
        n = float(len(moved[0]))
        main.zero_grad(set_to_none=True)
        terms = recipe.training_step(batch)
        loss = terms["loss"]
        if not bool(torch.isfinite(loss.detach())):
            raise NonFiniteLossError(f"non-finite training loss in epoch {epoch + 1}, step {step + 1}")
        loss.backward()
        distributed.average_gradients(ctx, params)
        if sched.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, sched.grad_clip_norm)
        main.step()
        extras = recipe.after_step(batch)
        if others:
            distributed.average_parameters(ctx, others)
        for key, value in terms.items():
            sums[f"train_{key}"] += float(value.detach()) * n
            weights[f"train_{key}"] += n
        for key, value in extras.items():
            sums[f"train_{key}"] += float(value) * n
            weights[f"train_{key}"] += n
        if progress:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    distributed.reduce_sums(ctx, sums, weights)
    out = {k: sums[k] / weights[k] for k in sums}
    out.update(recipe.epoch_end(epoch))
    return out


def _save(
    run_dir: Path,
    recipe: Recipe,
    epochs_done: int,
    stopper: EarlyStopper,
    best_state: dict[str, Tensor] | None,
    stopped_early: bool,
) -> None:
    tensors = module_tensors(recipe.modules, "model")
    opt_scalars = {}
    for name, opt in recipe.optimizers.items():
        t, s = optimizer_state(opt, f"optim.{name}")
        tensors.update(t)
        opt_scalars[name] = s
    if best_state is not None:
        tensors.update(
            {f"best.{k}": v.detach().to("cpu").clone().contiguous() for k, v in best_state.items()}
        )
    rng_tensors, rng_scalars = capture_rng_state()
    tensors.update(rng_tensors)
    scalars = {
        "recipe": recipe.name,
        "optimizers": opt_scalars,
        "early_stopping": stopper.state_dict(),
        "stopped_early": stopped_early,
        "rng": rng_scalars,
    }
    save_checkpoint(run_dir / "checkpoint", epoch=epochs_done, tensors=tensors, scalars=scalars)


def _finish(
    run_dir: Path,
    config: TrainConfig,
    recipe: Recipe,
    bundle: DataBundle,
    history: list[dict[str, Any]],
    stopper: EarlyStopper,
    stopped_early: bool,
    restored: bool,
    ctx: distributed.DistContext | None = None,
) -> TrainResult:
    is_main = ctx is None or ctx.is_main
    test = {k: _json_value(v) for k, v in evaluate(recipe, bundle.test, "test").items()}
    final_val = {k: _json_value(v) for k, v in evaluate(recipe, bundle.val, "val").items()}
    weights_dir = run_dir / "weights"
    members: list[dict[str, Any]] = []
    for name, model in zip(recipe.classifier_names(), recipe.classifiers(), strict=True):
        rel = f"weights/{name}.safetensors"
        if not is_main:  # other ranks hold the same weights; rank 0 writes them
            members.append({"name": name, "weights": rel, "sha256": None})
            continue
        weights_dir.mkdir(exist_ok=True)
        path = weights_dir / f"{name}.safetensors"
        state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, path)
        members.append({"name": name, "weights": rel, "sha256": sha256_file(path)})
    if is_main:
        held = bundle.val.image[:HELD_BATCH_SIZE].clone().contiguous()
        save_file({"image": held}, run_dir / HELD_BATCH_FILE)
    group = replicate_group(config, bundle.fingerprint)
    summary = {
        "format": RESULT_FORMAT,
        "recipe": config.recipe.name,
        "architecture": config.model.arch,
        "arch_kwargs": resolved_arch_kwargs(config),
        "class_names": list(bundle.class_names),
        "preprocessing": bundle.preprocessing.model_dump(mode="json"),
        "seed": config.seed,
        "dataset_fingerprint": bundle.fingerprint,
        "replicate_group": group,
        "epochs_completed": len(history),
        "best_epoch": stopper.best_epoch,
        "best_metric": {"name": config.early_stopping.metric, "value": _json_value(stopper.best)},
        "stopped_early": stopped_early,
        "restored_best": restored,
        "val_metrics": final_val,
        "test_metrics": test,
        "members": members,
        "held_batch": HELD_BATCH_FILE,
        "split_sizes": {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)},
        "world_size": 1 if ctx is None else ctx.world_size,
        "reference_stats": reference_statistics(recipe, bundle.train),
        "uncertainty": uncertainty_spec(recipe, bundle.val),
    }
    if is_main:
        write_json_atomic(run_dir / RESULT_FILE, summary)
    return TrainResult(
        run_dir=run_dir,
        config=config,
        recipe=recipe,
        history=history,
        test_metrics=test,
        best_epoch=stopper.best_epoch,
        best_metric=stopper.best,
        stopped_early=stopped_early,
        restored_best=restored,
        fingerprint=bundle.fingerprint,
        replicate_group=group,
        summary=summary,
    )
