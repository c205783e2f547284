"""Recipes and command options: one typed schema (pydantic), loading and overrides (OmegaConf).

``read_recipe(path, overrides)`` reads a recipe and applies ``dotted.key=value``
overrides; ``validate_recipe`` checks every key before any work starts: unknown or
misspelt keys fail with a :class:`~geocl.errors.GeoclError` that names the dotted key
and the closest valid one. Methods declare their parameters in their constructors
(:mod:`geocl.methods.registry` registers them with ``register_method_config``), and
:func:`geocl.methods.load_recipe` (also ``geocl.load_recipe``) is the one call that
reads and validates a recipe with the built-in methods declared: this package sits
below the methods and imports none of them. Nothing here imports torch.
"""

from geocl.recipes.loader import (
    method_params,
    read_recipe,
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
    "method_config_class",
    "method_names",
    "method_params",
    "read_recipe",
    "recipe_model",
    "recipe_to_dict",
    "recipe_to_yaml",
    "register_method_config",
    "save_recipe",
    "validate_recipe",
]
