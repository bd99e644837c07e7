"""Training recipes: one small class per method, all driven by the same engine (:mod:`training.loop`).

A recipe is what differs between methods; the engine owns everything else (data loading and shuffling,
devices, determinism, the main optimiser step, gradient clipping, validation, metrics, checkpoints, early
stopping, export). The contract::

    @register_recipe("my_method", MySettings)        # MySettings(RecipeSettings): name + the method's knobs
    class MyRecipe(Recipe):
        def build(self, config) -> dict[str, nn.Module]:          # named modules, e.g. {"model": ...}
            return {"model": self.build_classifier(0)}
        def training_step(self, batch) -> dict[str, Tensor]:       # "loss" (with graph) + other terms
            logits = self.modules["model"](batch.image)
            return {"loss": self.classification_loss(logits, batch.label)}

Hooks with defaults: :meth:`Recipe.configure_optimizers` (``{"main": Adam over the classifiers}``; the engine
zeroes, back-propagates ``loss`` into and steps ``"main"``; any other optimiser belongs to the recipe, which
steps it in :meth:`Recipe.after_step`), :meth:`Recipe.after_step` (auxiliary updates, e.g. the explanation
discriminator), :meth:`Recipe.epoch_start` / :meth:`Recipe.epoch_end`, :meth:`Recipe.data_streams` (how
many independently shuffled batches a step receives: ensembles train each member on its own data order),
:meth:`Recipe.predict_proba` (mean softmax of :meth:`Recipe.classifiers`, Eq. 1 of Watson et al.) and
:meth:`Recipe.validation_metrics`.

Batches (:class:`training.data.Batch`) carry ``image``, ``label``, ``heatmap`` (model resolution, sum 1),
``roi_mask`` (lungs + mediastinum at model resolution), ``has_mask`` (per sample; ``data.masks_available``
of the training cases) and ``has_heatmap`` — everything the mask-guided recipes of Viviano et al. (ActDiff,
GradMask, reconstruct-masked) need.

Discovery: every module in this package is imported by :func:`load_recipe_modules` (when a config is
validated), so a new recipe is one new file here with a :func:`register_recipe` class.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimicry.models.base import CamClassifier
from training.config import RecipeSettings, TrainConfig, register_recipe_settings
from training.data import Batch, SplitTensors
from training.seeding import derive_seed

__all__ = [
    "Recipe",
    "RecipeContext",
    "RecipeError",
    "ensure_architectures",
    "get_recipe",
    "list_recipes",
    "load_recipe_modules",
    "make_optimizer",
    "register_recipe",
    "resolved_arch_kwargs",
]


class RecipeError(ValueError):
    """A recipe cannot be built or run with the configured model / settings."""


@dataclass(frozen=True)
class RecipeContext:
    """What a recipe knows about its run besides the config.

    Attributes:
        config: The validated run config (``config.recipe`` is the recipe's own settings).
        class_names: Output classes, in logit order.
        input_size: Side of the square model input.
        device: Where modules and batches live.
        class_weights: ``float32 [K]`` weights of the classification loss on ``device``, or ``None``.
    """

    config: TrainConfig
    class_names: tuple[str, ...]
    input_size: int
    device: torch.device
    class_weights: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_OPTIONAL_MODEL_MODULES = ("mimicry.models.unet", "mimicry.models.densenet", "mimicry.models.ensemble")


def ensure_architectures(*names: str) -> None:
    """Make sure the architectures ``names`` are registered in :mod:`mimicry.models.zoo`.

    ``mimicry.models`` registers the built-ins; when a requested name is still missing, the UNet / DenseNet /
    Ensemble modules are imported too (when present), so ``model.arch: unet_tiny`` works whatever
    ``mimicry.models`` re-exports — and a toy run never depends on them.
    """
    from mimicry.models.zoo import list_architectures

    importlib.import_module("mimicry.models")
    if all(name in list_architectures() for name in names):
        return
    for module in _OPTIONAL_MODEL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but one of *its* imports is missing: a real error
                raise


def resolved_arch_kwargs(config: TrainConfig) -> dict[str, Any]:
    """``model.arch_kwargs`` plus ``class_names`` when the data's classes differ from the default three.

    These are the kwargs the model card stores, so the registry rebuilds exactly this model.
    """
    from mimicry.models.base import DEFAULT_CLASS_NAMES

    kwargs = dict(config.model.arch_kwargs)
    if tuple(config.data.class_names) != DEFAULT_CLASS_NAMES and "class_names" not in kwargs:
        kwargs["class_names"] = list(config.data.class_names)
    return kwargs


def make_optimizer(
    config: TrainConfig, params: Iterable[nn.Parameter], lr: float | None = None
) -> torch.optim.Optimizer:
    """The optimiser of ``config.optimizer`` over ``params`` (``lr`` overrides the configured rate)."""
    opt = config.optimizer
    rate = opt.lr if lr is None else lr
    params = list(params)
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=rate, betas=opt.betas, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(params, lr=rate, betas=opt.betas, weight_decay=opt.weight_decay)
    return torch.optim.SGD(params, lr=rate, momentum=opt.momentum, weight_decay=opt.weight_decay)


class Recipe(ABC):
    """Base class of the training recipes (module docstring for the contract).

    Attributes:
        name: Registered recipe name (set by :func:`register_recipe`).
        settings_class: The recipe's settings model.
        context: The :class:`RecipeContext`.
        config: ``context.config``; ``settings``: ``config.recipe``.
        modules: ``nn.ModuleDict`` of what :meth:`build` returned (set by :meth:`setup`).
        optimizers: name → optimiser (``"main"`` is stepped by the engine).
        epoch: The current 0-based epoch (set by the engine before :meth:`epoch_start`).
    """

    name: ClassVar[str] = ""
    settings_class: ClassVar[type[RecipeSettings]] = RecipeSettings

    def __init__(self, context: RecipeContext) -> None:
        self.context = context
        self.config = context.config
        self.settings: Any = context.config.recipe
        self.modules = nn.ModuleDict()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.epoch = 0

    # ------------------------------------------------------------------ building

    @abstractmethod
    def build(self, config: TrainConfig) -> dict[str, nn.Module]:
        """Create the recipe's modules (freshly initialised; :meth:`build_classifier` seeds each one)."""

    def setup(self) -> None:
        """Build the modules, move them to the device and create the optimisers (called by the engine)."""
        built = self.build(self.config)
        if not built:
            raise RecipeError(f"recipe {self.name!r} built no modules")
        self.modules = nn.ModuleDict(built).to(self.context.device)
        self.optimizers = self.configure_optimizers()
        if "main" not in self.optimizers:
            raise RecipeError(f"recipe {self.name!r} must return a 'main' optimiser")

    def build_classifier(self, index: int) -> CamClassifier:
        """A fresh ``config.model`` classifier, seeded with ``derive_seed(seed, "member", index)``.

        Members of an ensemble get distinct indices, hence distinct initial weights; the global RNG is left
        untouched (``torch.random.fork_rng``).

        Raises:
            RecipeError: the model's outputs do not match the data's classes.
        """
        from mimicry.models.zoo import build_model

        ensure_architectures(self.config.model.arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.config.seed, "member", index))
            model = build_model(self.config.model.arch, **resolved_arch_kwargs(self.config))
        if model.num_classes != self.context.num_classes:
            raise RecipeError(
                f"architecture {self.config.model.arch!r} outputs {model.num_classes} classes, the data has "
                f"{self.context.num_classes}; set model.arch_kwargs.class_names"
            )
        return model

    def classifier_names(self) -> list[str]:
        """Names (in :attr:`modules`) of the classifiers whose mean softmax is the prediction, in order."""
        return [name for name, module in self.modules.items() if isinstance(module, CamClassifier)]

    def classifiers(self) -> list[CamClassifier]:
        """The classifiers of :meth:`classifier_names` (one for single models, ``S`` for ensembles)."""
        return [self.modules[name] for name in self.classifier_names()]  # type: ignore[misc]

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Default: ``{"main": config.optimizer over every classifier's parameters}``."""
        params = [p for m in self.classifiers() for p in m.parameters()]
        return {"main": make_optimizer(self.config, params)}

    def data_streams(self) -> int:
        """How many independently shuffled batches one step gets (1: :meth:`training_step` gets a Batch,
        ``S > 1``: a tuple of ``S`` batches, one per data order)."""
        return 1

    # ------------------------------------------------------------------ training

    @abstractmethod
    def training_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        """Loss terms of one batch: ``"loss"`` (scalar with graph; the engine back-propagates it) and any
        other scalars to log (``train_<term>`` in ``metrics.jsonl``)."""

    def after_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, float]:
        """Called after the engine's optimiser step (auxiliary updates); returns scalars to log."""
        return {}

    def epoch_start(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called before the first batch of ``epoch`` (0-based)."""

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """Called after the last batch of ``epoch``; returns scalars to log."""
        return {}

    def classification_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``F.cross_entropy`` with the run's class weights (weighted mean ``Σ w_y·ℓ / Σ w_y``)."""
        return F.cross_entropy(logits, labels, weight=self.context.class_weights)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """Probabilities ``[N, K]``: the mean of the classifiers' softmax outputs (Watson et al., Eq. 1)."""
        probs = [torch.softmax(model(x), dim=1) for model in self.classifiers()]
        return torch.stack(probs).mean(dim=0)

    def validation_metrics(self, split: SplitTensors, prefix: str) -> dict[str, float]:
        """Recipe-specific metrics on ``split`` (modules in eval mode), keys prefixed ``{prefix}_``."""
        return {}


RecipeT = TypeVar("RecipeT", bound=type[Recipe])
_RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(name: str, settings: type[RecipeSettings]) -> Callable[[RecipeT], RecipeT]:
    """Class decorator: register a :class:`Recipe` and its settings model under ``name``."""

    def decorator(cls: RecipeT) -> RecipeT:
        existing = _RECIPES.get(name)
        if existing is not None and existing is not cls:
            raise RecipeError(f"recipe {name!r} is already registered")
        cls.name = name
        cls.settings_class = settings
        register_recipe_settings(name)(settings)
        _RECIPES[name] = cls
        return cls

    return decorator


def load_recipe_modules() -> None:
    """Import every module of this package (each registers its recipes)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def list_recipes() -> list[str]:
    """Registered recipe names, sorted."""
    load_recipe_modules()
    return sorted(_RECIPES)


def get_recipe(name: str) -> type[Recipe]:
    """The recipe class registered as ``name``.

    Raises:
        RecipeError: unknown name.
    """
    load_recipe_modules()
    try:
        return _RECIPES[name]
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; registered: {', '.join(sorted(_RECIPES))}") from None
