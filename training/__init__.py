"""Training for mimicry: the explanation ensemble (Watson et al., WACV 2023) and its baselines.

One typed config per run (:mod:`training.config`), one engine (:mod:`training.loop`), one small class per
method (:mod:`training.recipes`: ``baseline``, ``ensemble``, ``explanation_ensemble``, ``unet_egd``; the
mask-guided recipes of Viviano et al. plug in the same way), cached tensors from the EGD / phantom datasets
(:mod:`training.data`), pickle-free checkpoints (:mod:`training.checkpoint`) and publication into the model
registry (:mod:`training.publish`). ``mimicry train`` (:mod:`mimicry_cli.commands.train`) drives it::

    from training import load_config, train, publish_run

    result = train(load_config("configs/baseline-tiny.yaml"), "runs/baseline-tiny")
    publish_run(result.run_dir, "registry", "cxr-baseline")
"""

from training.config import ConfigError, TrainConfig, load_config, parse_config, set_recipe_discovery
from training.loop import TrainResult, train
from training.publish import publish_run
from training.recipes import load_recipe_modules

# A config names its recipe; the recipes' settings classes register themselves when their modules are
# imported, which happens (once) the first time a config is validated.
set_recipe_discovery(load_recipe_modules)

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "load_config", "parse_config", "publish_run", "train"]
