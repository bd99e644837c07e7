"""One typed configuration per training run (YAML or JSON), saved with the run as ``run_dir/config.yaml``.

Every section is a pydantic model with ``extra="forbid"``: an unknown or misspelt key is an error, never
silently ignored. The recipe section is dispatched on its ``name`` to the settings class the recipe
registered (:func:`register_recipe_settings`), so each recipe validates its own knobs (Watson et al., WACV
2023, Eq. 2: ``beta``, ``alpha``, ...; the mask-guided recipes of Viviano et al. add theirs the same way).

Layout (every key optional except ``data.root``)::

    seed: 0
    device: cpu | cuda | cuda:N | auto
    deterministic: strict | warn | off
    progress: true
    data:           {root, images_root, phantom: {...}, val_fraction, split_seed, test_fraction,
                     masks_available, roi_anatomy, class_names, heatmap_sigma_px, cache_dir}
    preprocessing:  {size, pad_value, mean, std}            # mimicry.preprocess.PreprocessSpec
    model:          {arch, arch_kwargs}                     # mimicry.models.zoo.build_model
    optimizer:      {name, lr, weight_decay, betas, momentum}
    schedule:       {epochs, batch_size, eval_batch_size, num_workers, grad_clip_norm, drop_last}
    loss:           {class_weights: none | balanced | [w0, w1, ...]}
    early_stopping: {enabled, metric, mode, patience, min_delta, restore_best}
    recipe:         {name: baseline | ensemble | explanation_ensemble | unet_egd | ..., <recipe knobs>}

Relative paths are resolved against the current working directory when the run starts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from mimicry.data.egd import DEFAULT_CLASS_NAMES
from mimicry.data.phantom import PhantomConfig, PhantomConfigError
from mimicry.preprocess import PreprocessSpec

__all__ = [
    "EARLY_STOPPING_METRICS",
    "ConfigError",
    "DataConfig",
    "EarlyStoppingConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PhantomSettings",
    "PreprocessConfig",
    "RecipeSettings",
    "ScheduleConfig",
    "TrainConfig",
    "dump_config",
    "load_config",
    "parse_config",
    "recipe_settings_class",
    "register_recipe_settings",
    "registered_recipe_settings",
    "set_recipe_discovery",
]

EARLY_STOPPING_METRICS: tuple[str, ...] = ("val_loss", "val_accuracy", "val_auroc")
"""Validation metrics early stopping can monitor (written to ``metrics.jsonl`` every epoch)."""


class ConfigError(ValueError):
    """A training configuration that cannot be read or does not validate.

    The message lists every problem as ``dotted.key: reason`` (config keys only, never data values that could
    hold identifiers).
    """


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------------------------- data


class PhantomSettings(_Strict):
    """Parameters of the phantom dataset generated at ``data.root`` when it does not exist yet.

    Mirrors :class:`mimicry.data.phantom.PhantomConfig` field for field (same defaults except ``n`` and
    ``size``, which default to a tiny 40-case, 64-pixel set); the generator validates the values.
    """

    n: int = 40
    size: int = 64
    seed: int = 0
    shortcut_corr: float = 0.9
    test_fraction: float = 0.2
    test_shortcut: Literal["reversed", "decorrelated"] = "reversed"
    monochrome1_share: float = 0.1
    compressed_share: float = 0.1
    nuisance_border_corr: float = 0.65
    nuisance_collimation_corr: float = 0.6
    nuisance_texture_corr: float = 0.7
    ap_share: float = 0.2
    rescale_share: float = 0.2
    class_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @model_validator(mode="after")
    def _valid_for_generator(self) -> PhantomSettings:
        try:
            self.to_phantom_config()
        except PhantomConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def to_phantom_config(self) -> PhantomConfig:
        """The generator's :class:`~mimicry.data.phantom.PhantomConfig`."""
        return PhantomConfig(**self.model_dump())


class DataConfig(_Strict):
    """Where the data comes from and how it is split (docs/methods.md, "Dataset formats").

    Attributes:
        root: MIMIC-CXR-EGD (or phantom) root holding ``master_sheet.csv``.
        images_root: Directory the master sheet's ``path`` column is relative to (``None``: ``root``).
        phantom: When set and ``root`` does not exist (or is empty), a phantom dataset with these settings is
            generated there first; when ``root`` already holds a phantom, its ``phantom.json`` must agree.
        val_fraction: Fraction of the *training* split's patients held out for validation (by patient,
            :func:`mimicry.data.patient_split`).
        split_seed: Seed of the validation split (and of the train/test split of datasets without a
            ``split`` column). Independent of the run seed, so replicates share their splits.
        test_fraction: Test share for datasets without a ``split`` column (the EGD itself); phantoms carry
            their own (shortcut-reversed) test split.
        masks_available: Fraction of *training* cases whose ``roi_mask`` the mask-guided recipes may use
            (``has_mask``); chosen deterministically from the run seed. Validation/test cases always have it.
        roi_anatomy: Anatomy masks whose union is ``roi_mask`` (lungs + mediastinum by default).
        class_names: Master-sheet one-hot columns, in output order.
        heatmap_sigma_px: Static EGD heatmap sigma (``None``: the dataset's default, see EgdDataset).
        cache_dir: Where the preprocessed tensors are cached as ``.npz`` (``None``: ``.mimicry/cache``).
    """

    root: Path
    images_root: Path | None = None
    phantom: PhantomSettings | None = None
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = Field(0, ge=0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    masks_available: float = Field(1.0, ge=0.0, le=1.0)
    roi_anatomy: tuple[str, ...] = ("left_lung", "right_lung", "mediastinum")
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES
    heatmap_sigma_px: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    cache_dir: Path | None = None

    @field_validator("class_names")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) < 2 or len(set(value)) != len(value):
            raise ValueError("class_names must hold at least two distinct names")
        return value

    @field_validator("roi_anatomy")
    @classmethod
    def _known_anatomy(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from mimicry.data.egd import ANATOMY_NAMES

        unknown = [v for v in value if v not in ANATOMY_NAMES]
        if unknown or not value:
            raise ValueError(f"roi_anatomy must be a non-empty subset of {list(ANATOMY_NAMES)}")
        return value


class PreprocessConfig(_Strict):
    """:class:`mimicry.preprocess.PreprocessSpec` with unknown keys forbidden (stored in the model card)."""

    size: int = Field(64, gt=0)
    pad_value: float = Field(0.0, allow_inf_nan=False)
    mean: float = Field(0.5, allow_inf_nan=False)
    std: float = Field(0.25, gt=0.0, allow_inf_nan=False)

    def to_spec(self) -> PreprocessSpec:
        return PreprocessSpec(**self.model_dump())


class ModelConfig(_Strict):
    """Architecture registered in :mod:`mimicry.models.zoo` and its JSON constructor kwargs."""

    arch: str = "toy"
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(_Strict):
    """Optimiser of the classifier(s). Paper (Watson et al. §4): Adam, lr 3e-3 (baselines), 1e-5 (EE)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("betas must lie in [0, 1)")
        return value


class ScheduleConfig(_Strict):
    """Epochs and batching.

    ``bn_recalibration`` ("precise BatchNorm", :func:`training.loop.recalibrate_batchnorm`): after every
    epoch, before validation, re-estimate the BatchNorm running statistics of every classifier as the plain
    average over one pass of the training split with the final weights. The exponential moving average
    that training keeps lags behind weights that move fast (tiny models, Adam at lr 3e-3, a few hundred
    steps), and GAP classifiers reading a small cue (the phantom's site marker) are thrown off by that lag:
    eval-mode predictions collapse to one class while train-mode ones are right. No-op for models without
    BatchNorm.
    """

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0)
    grad_clip_norm: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    drop_last: bool = False
    bn_recalibration: bool = True


class LossConfig(_Strict):
    """Classification-loss options shared by every recipe.

    ``class_weights``: ``"none"``; ``"balanced"`` (``w_k = N / (K · N_k)`` over the training split, as
    scikit-learn's ``compute_class_weight("balanced")``); or one positive weight per class.
    """

    class_weights: Literal["none", "balanced"] | list[float] = "none"

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, list) and not all(math.isfinite(w) and w > 0 for w in value):
            raise ValueError("explicit class weights must be finite and positive")
        return value


class EarlyStoppingConfig(_Strict):
    """Early stopping on a validation metric; the best epoch's weights are kept (``restore_best``)."""

    enabled: bool = False
    metric: Literal["val_loss", "val_accuracy", "val_auroc"] = "val_auroc"
    mode: Literal["max", "min"] = "max"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    restore_best: bool = True


# --------------------------------------------------------------------------------------------- recipes


class RecipeSettings(_Strict):
    """Base of every recipe's settings; ``name`` selects the recipe (and the settings class)."""

    name: str


R = TypeVar("R", bound=type[RecipeSettings])
_RECIPE_SETTINGS: dict[str, type[RecipeSettings]] = {}


def register_recipe_settings(name: str) -> Callable[[R], R]:
    """Class decorator registering the settings model of recipe ``name`` (its ``name`` field)."""

    def decorator(cls: R) -> R:
        existing = _RECIPE_SETTINGS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"recipe settings {name!r} are already registered")
        _RECIPE_SETTINGS[name] = cls
        return cls

    return decorator


def registered_recipe_settings() -> dict[str, type[RecipeSettings]]:
    """Every registered recipe name → settings class (imports the built-in recipes first)."""
    _load_recipes()
    return dict(_RECIPE_SETTINGS)


def recipe_settings_class(name: str) -> type[RecipeSettings]:
    """The settings class of recipe ``name``.

    Raises:
        ValueError: no recipe is registered under that name (the message lists what is).
    """
    _load_recipes()
    try:
        return _RECIPE_SETTINGS[name]
    except KeyError:
        raise ValueError(
            f"unknown recipe {name!r}; registered: {', '.join(sorted(_RECIPE_SETTINGS))}"
        ) from None


#: Imports the recipe modules, each of which registers its settings class here. The ``training`` package
#: installs it (:func:`set_recipe_discovery`): the recipes import this module, never the other way round.
_recipe_discovery: Callable[[], None] | None = None


def set_recipe_discovery(discover: Callable[[], None]) -> None:
    """Install the function that registers every recipe's settings (called before a recipe name is looked
    up; the ``training`` package passes :func:`training.recipes.load_recipe_modules`)."""
    global _recipe_discovery
    _recipe_discovery = discover


def _load_recipes() -> None:
    if _recipe_discovery is not None:
        _recipe_discovery()


# --------------------------------------------------------------------------------------------- root


class TrainConfig(_Strict):
    """The whole training run (module docstring)."""

    seed: int = Field(0, ge=0, lt=2**63)
    device: str = "cpu"
    deterministic: Literal["strict", "warn", "off"] = Field(
        "strict",
        description="torch.use_deterministic_algorithms(True, warn_only=False) ('strict'), warn_only=True "
        "('warn', for GPU ops without a deterministic kernel) or off.",
    )
    num_threads: int | None = Field(None, ge=1)
    progress: bool = True
    data: DataConfig
    preprocessing: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    recipe: SerializeAsAny[RecipeSettings] = Field(default_factory=lambda: {"name": "baseline"})  # type: ignore[arg-type]

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("cpu", "cuda", "auto") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("device must be 'cpu', 'cuda', 'cuda:N' or 'auto'")

    @field_validator("recipe", mode="before")
    @classmethod
    def _dispatch_recipe(cls, value: Any) -> Any:
        if isinstance(value, RecipeSettings):
            return value
        if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
            raise ValueError("recipe must be a mapping with a 'name'")
        return recipe_settings_class(value["name"]).model_validate(dict(value))

    @model_validator(mode="after")
    def _class_weight_count(self) -> TrainConfig:
        weights = self.loss.class_weights
        if isinstance(weights, list) and len(weights) != len(self.data.class_names):
            raise ValueError(
                f"loss.class_weights has {len(weights)} entries for {len(self.data.class_names)} classes"
            )
        return self

    def resolved_device(self) -> str:
        """``auto`` → ``cuda`` when available else ``cpu``; otherwise the configured device."""
        if self.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, tuples as lists): what ``config.yaml`` and model cards hold."""
        return self.model_dump(mode="json")

    def replicate_key(self) -> str:
        """sha256 of the settings that define *the recipe*: everything but the seed and run-local knobs.

        Two runs with the same key differ only by their seed (and where/how they ran), i.e. they are
        replicates in the sense of the repeatability audit. Excluded: ``seed``, ``device``,
        ``deterministic``, ``num_threads``, ``progress``, ``schedule.num_workers`` and the data *location*
        (``root``, ``images_root``, ``cache_dir``, ``phantom``: the data content enters through the dataset
        fingerprint instead).
        """
        data = self.to_json_dict()
        for key in ("seed", "device", "deterministic", "num_threads", "progress"):
            data.pop(key, None)
        data["schedule"].pop("num_workers", None)
        for key in ("root", "images_root", "cache_dir", "phantom"):
            data["data"].pop(key, None)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------------- IO


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {loc}: {err['msg']}")
    return "invalid training config:\n" + "\n".join(lines)


def parse_config(data: Mapping[str, Any] | TrainConfig) -> TrainConfig:
    """Validate a mapping (e.g. parsed YAML) into a :class:`TrainConfig`.

    Raises:
        ConfigError: listing every invalid or unknown key.
    """
    if isinstance(data, TrainConfig):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError("a training config must be a mapping at the top level")
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) training config.

    Raises:
        ConfigError: the file is missing, unparsable or invalid.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"config file {p.name} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    return parse_config(data if data is not None else {})


def dump_config(config: TrainConfig) -> str:
    """YAML text of ``config`` (keys in schema order), as written to ``run_dir/config.yaml``."""
    return yaml.safe_dump(config.to_json_dict(), sort_keys=False, default_flow_style=False)
