"""The method registry: a method's name, its class, and the recipe model of its arguments.

``@register_method("simclr")`` on a :class:`~geocl.methods.base.PretrainMethod` subclass
makes ``method.name: simclr`` select it, and registers with the recipe schema a model
derived from the class's constructor (:func:`~geocl.methods.base.parameters_model`):
every keyword argument that is not one of the common ones
(:data:`~geocl.methods.base.COMMON_ARGUMENTS`), with its annotation (ranges as
``Annotated[int, Field(ge=1)]``, choices as ``Literal``) and default, along the class
chain (a subclass adds to its parent's arguments). So a method's parameters are written
once, in its signature, and :func:`build_method` is the one place where a recipe
becomes constructor arguments.

The built-in methods are declared in :mod:`geocl.methods` (``BUILTIN_METHODS``), which
Python runs before this module whatever a caller imports first (a package is imported
before its modules): so :func:`load_recipe` and :func:`read_saved_recipe`, which validate
a recipe's ``method`` section, always know them. They live here, above
:mod:`geocl.recipes` (reading, overrides and the generic validation), which imports no
method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from typing import Any, TypeVar

from geocl.errors import GeoclError
from geocl.methods.base import PretrainMethod, parameters_model
from geocl.recipes import Recipe, read_recipe, recipe_to_dict, register_method_config, validate_recipe

#: Method name -> Lightning module class.
METHODS: dict[str, type[PretrainMethod]] = {}

Method = TypeVar("Method", bound=type[PretrainMethod])


def register_method(name: str) -> Callable[[Method], Method]:
    """Class decorator: register a method under ``name`` (recipe ``method.name``)."""

    def register(cls: Method) -> Method:
        cls.name = name
        METHODS[name] = cls
        register_method_config(name, parameters_model(cls))
        return cls

    return register


def method_class(name: str) -> type[PretrainMethod]:
    """The Lightning module class registered under ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise GeoclError(f"unknown method {name!r}; known: {', '.join(METHODS)}", key="method.name") from None


def load_recipe(path: str | PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """Load, override and validate a recipe (also ``geocl.load_recipe``).

    :func:`geocl.recipes.read_recipe` then :func:`geocl.recipes.validate_recipe`, the
    ``method`` section checked against the registered methods: the built-in ones
    (``geocl.methods.BUILTIN_METHODS``) and any registered since.

    Args:
        path: the recipe YAML file.
        overrides: ``dotted.key=value`` strings applied in order after the file; values
            are YAML (``data.batch_size=8``, ``augment.scale=[0.5,1.0]``, ``out=runs/x``).

    Returns:
        A read-only :class:`~geocl.recipes.schema.Recipe` whose ``method`` is the model
        of the method's parameters (with ``name``); interpolations are resolved.

    Raises:
        GeoclError: a missing or unreadable file, invalid YAML, a malformed override,
            an unknown key (with the closest valid one), a wrong type, a bad choice, an
            out-of-range number or a missing mandatory value.
    """
    data, by_key = read_recipe(path, overrides)
    return validate_recipe(data, path=path, overrides=by_key)


def read_saved_recipe(path: str | PathLike[str]) -> dict[str, Any] | None:
    """A run's saved ``config.yaml`` as plain data, read as today's schema reads it.

    Keys the schema gained since the run was saved take their defaults, so a run made
    before a new recipe key existed still counts as the same recipe (for resuming it, or
    for ``geocl compare`` to reuse it).

    Returns:
        The resolved recipe, or None when the file is missing or no longer a valid recipe.
    """
    try:
        data, _ = read_recipe(path)
    except GeoclError:
        return None
    return todays_recipe(data)


def todays_recipe(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """Recorded recipe data (a saved ``config.yaml``, a row's record) as today's schema reads it.

    Keys the schema gained since the record take their defaults (see :func:`read_saved_recipe`).

    Returns:
        The resolved recipe as plain data, or None when the data is no longer a valid recipe.
    """
    try:
        return recipe_to_dict(validate_recipe(data))
    except GeoclError:
        return None


def build_method(recipe: Recipe, in_chans: int, band_stats: Mapping[str, Any] | None = None) -> PretrainMethod:
    """The method a recipe describes: the one place where a recipe becomes constructor arguments.

    Args:
        recipe: a validated recipe (:func:`load_recipe`).
        in_chans: band count of the training images.
        band_stats: their per-band statistics (stored in checkpoints).
    """
    cls = method_class(recipe.method.name)
    own = {key: getattr(recipe.method, key) for key in parameters_model(cls).model_fields}
    model = cls(
        recipe.encoder.name,
        in_chans,
        encoder_args=recipe.encoder.args,
        pretrained=recipe.encoder.pretrained,
        weights=recipe.encoder.weights,
        band_stats=band_stats,
        view_size=recipe.data.view_size,
        augment=recipe.augment,
        optimizer=recipe.optimizer,
        scheduler=recipe.scheduler,
        seed=recipe.seed,
        **own,
    )
    model.recipe = recipe_to_dict(recipe)
    return model
