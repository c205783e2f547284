"""Recipes: the YAML files that make a pretraining run reproducible.

``load_recipe(path, overrides)`` reads a recipe, applies ``dotted.key=value``
overrides and validates every key before any work starts; unknown or misspelt keys
fail with a :class:`~geocl.errors.GeoclError` that names the dotted key and the
closest valid one. Methods declare their parameters with ``register_method_config``.
"""

from geocl.recipes.loader import load_recipe, method_params, read_saved_recipe, recipe_to_yaml, save_recipe
from geocl.recipes.schema import (
    ACCELERATORS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULERS,
    SPLITS,
    DataConfig,
    EncoderConfig,
    OptimizerConfig,
    Recipe,
    SchedulerConfig,
    TrainerConfig,
    method_config_class,
    method_names,
    register_method_config,
)

__all__ = [
    "ACCELERATORS",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULERS",
    "SPLITS",
    "DataConfig",
    "EncoderConfig",
    "OptimizerConfig",
    "Recipe",
    "SchedulerConfig",
    "TrainerConfig",
    "load_recipe",
    "method_config_class",
    "method_names",
    "method_params",
    "read_saved_recipe",
    "recipe_to_yaml",
    "register_method_config",
    "save_recipe",
]
