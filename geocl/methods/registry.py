"""The method registry: a method's name, its class, and the recipe model of its arguments.

``@register_method("simclr")`` on a :class:`~geocl.methods.base.PretrainMethod` subclass
makes ``method.name: simclr`` select it, and registers with the recipe schema a model
derived from the class's constructor: every keyword argument that is not one of the
common ones (:data:`~geocl.methods.base.COMMON_ARGUMENTS`), with its annotation (ranges
as ``Annotated[int, Field(ge=1)]``, choices as ``Literal``) and default, along the class
chain (a subclass adds to its parent's arguments). So a method's parameters are written
once, in its signature, and :func:`build_method` is the one place where a recipe
becomes constructor arguments.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, create_model

from geocl.errors import GeoclError
from geocl.methods.base import COMMON_ARGUMENTS, PretrainMethod
from geocl.recipes import Recipe, recipe_to_dict, register_method_config

#: Method name -> Lightning module class.
METHODS: dict[str, type[PretrainMethod]] = {}

Method = TypeVar("Method", bound=type[PretrainMethod])


@cache
def parameters_model(cls: type[PretrainMethod]) -> type[BaseModel]:
    """The pydantic model of a method class's own constructor arguments.

    Walks the class chain up to :class:`PretrainMethod`; a parameter a subclass
    declares again (with another default) replaces its parent's.
    """
    fields: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, PretrainMethod)) or klass is PretrainMethod:
            continue
        if "__init__" not in vars(klass):
            continue
        hints = typing.get_type_hints(klass.__init__, include_extras=True)
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            if name == "self" or name in COMMON_ARGUMENTS or parameter.kind in (
                inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL
            ):
                continue
            if parameter.default is inspect.Parameter.empty:
                raise TypeError(f"{klass.__qualname__}: argument {name!r} needs a default to be a recipe key")
            fields[name] = (hints[name], parameter.default)
    config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, validate_default=True)
    return create_model(f"{cls.__name__}Parameters", __config__=config, __doc__=cls.__doc__, **fields)  # type: ignore[call-overload, no-any-return]


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


def build_method(recipe: Recipe, in_chans: int, band_stats: Mapping[str, Any] | None = None) -> PretrainMethod:
    """The method a recipe describes: the one place where a recipe becomes constructor arguments.

    Args:
        recipe: a validated recipe (:func:`geocl.recipes.load_recipe`).
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
