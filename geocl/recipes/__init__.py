"""Recipes and command options: one typed schema (pydantic), loading and overrides (OmegaConf).

``load_recipe(path, overrides)`` reads a recipe, applies ``dotted.key=value``
overrides and validates every key before any work starts; unknown or misspelt keys
fail with a :class:`~geocl.errors.GeoclError` that names the dotted key and the
closest valid one. Methods declare their parameters in their constructors
(:mod:`geocl.methods.registry` registers them with ``register_method_config``).
Nothing here imports torch.
"""

from geocl.recipes.loader import (
    load_recipe,
    method_params,
    read_saved_recipe,
    recipe_to_dict,
    recipe_to_yaml,
    save_recipe,
    validate_recipe,
)
from geocl.recipes.schema import (
    ACCELERATORS,
    DATA_FORMATS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULERS,
    SPLITS,
    AugmentConfig,
    DataConfig,
    EncoderConfig,
    MethodParams,
    OptimizerConfig,
    Recipe,
    SchedulerConfig,
    TrainerConfig,
    method_config_class,
    method_names,
    recipe_model,
    register_method_config,
)

__all__ = [
    "ACCELERATORS",
    "DATA_FORMATS",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULERS",
    "SPLITS",
    "AugmentConfig",
    "DataConfig",
    "EncoderConfig",
    "MethodParams",
    "OptimizerConfig",
    "Recipe",
    "SchedulerConfig",
    "TrainerConfig",
    "load_recipe",
    "method_config_class",
    "method_names",
    "method_params",
    "read_saved_recipe",
    "recipe_model",
    "recipe_to_dict",
    "recipe_to_yaml",
    "register_method_config",
    "save_recipe",
    "validate_recipe",
]
