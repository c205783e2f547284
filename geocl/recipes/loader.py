"""Reading recipes: YAML file + dotted overrides -> plain data -> a validated, read-only recipe model.

The generic half of loading a recipe; :func:`geocl.methods.load_recipe` is the whole
of it (:func:`read_recipe` then :func:`validate_recipe`, with the built-in methods
declared). Order of work:

1. :func:`read_recipe` reads the YAML with OmegaConf (duplicate keys refused; ``1e-3``
   is a float, ``2024-01-01`` a string);
2. merges the ``dotted.key=value`` overrides with OmegaConf's own dot-list parser,
   remembering which override set each key so that errors can say where a bad value
   came from;
3. resolves ``${...}`` interpolations (OmegaConf), naming the key that fails;
4. :func:`validate_recipe` validates the plain data with the pydantic model of the
   recipe's method (:func:`geocl.recipes.schema.recipe_model`, over the method sections
   registered with :func:`~geocl.recipes.schema.register_method_config`); the first
   validation error becomes a :class:`~geocl.errors.GeoclError` through the one mapper
   of :mod:`geocl.recipes.errors` (dotted key, "did you mean", the override, the file).

This package sits below :mod:`geocl.methods` and imports none of it (the import
contract in ``pyproject.toml`` holds that): which methods exist is the method
registry's to declare. Nothing here imports torch: a recipe is checked before any
heavy import.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError, create_model

from geocl.errors import GeoclError
from geocl.io import atomic_path
from geocl.recipes.errors import validation_error
from geocl.recipes.schema import MethodParams, Recipe, recipe_model

_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


def _read_yaml(path: Path) -> dict[str, Any]:
    """The recipe file as plain data (interpolations not yet resolved)."""
    if not path.is_file():
        raise GeoclError("recipe file not found", path=path)
    try:
        cfg = OmegaConf.load(path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(exc.problem or exc.context)
        if problem.startswith("found duplicate key "):
            problem = f"duplicate key '{problem.removeprefix('found duplicate key ')}'"
        raise GeoclError(f"invalid YAML{line}: {problem}", path=path) from None
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as exc:
        raise GeoclError(f"invalid YAML: {str(exc).splitlines()[0]}", path=path) from None
    except OSError as exc:
        raise GeoclError(f"cannot read the recipe: {exc.strerror or exc}", path=path) from None
    if not isinstance(cfg, DictConfig):
        raise GeoclError("a recipe must be a mapping of sections (name, out, data, method, ...)", path=path)
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]  # a DictConfig gives a dict


def _apply_override(data: dict[str, Any], text: str, path: Path) -> str:
    """Merge one ``dotted.key=value`` into ``data`` (OmegaConf parses it); returns the key."""
    if not _OVERRIDE.match(text):
        raise GeoclError(f"malformed override {text!r}: expected dotted.key=value", key=text)
    key = text.split("=", 1)[0]
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, dict):
            where = ".".join(parts[: depth + 1])
            raise GeoclError(f"{where} holds {node!r}, not a section (override {text!r})", key=where, path=path)
        if node is None:
            break
    try:
        update = OmegaConf.to_container(OmegaConf.from_dotlist([text]), resolve=False)
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise GeoclError(f"malformed override {text!r}: {str(exc).splitlines()[0]}", key=text) from None
    _merge(data, update)  # type: ignore[arg-type]  # a dotlist is a DictConfig, so a dict
    return key


def _merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    """Deep merge; a list or scalar replaces what was there (OmegaConf's merge rule)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _resolve(data: dict[str, Any], path: Path, overrides: Mapping[str, str]) -> dict[str, Any]:
    """Resolve ``${...}`` interpolations, naming the first key that cannot be resolved."""
    cfg = OmegaConf.create(data)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]  # created from a dict
    except OmegaConfBaseException:
        pass
    for key in _leaf_keys(cfg):
        try:
            OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except OmegaConfBaseException as exc:
            detail = str(getattr(exc, "msg", "") or exc).splitlines()[0]
            via = f" (override {overrides[key]!r})" if key in overrides else ""
            raise GeoclError(f"cannot resolve the value of {key}: {detail}{via}", key=key, path=path) from None
    raise GeoclError("cannot resolve the recipe's interpolations", path=path)


def _leaf_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else []
    for key, _ in items:
        dotted = prefix + str(key)
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_interpolation():
            keys += _leaf_keys(child, dotted + ".")
        elif not isinstance(child, ListConfig):
            keys.append(dotted)
    return keys


#: Top-level keys that hold a section; an empty one (``encoder:``) keeps its defaults.
_SECTIONS = ("data", "encoder", "method", "augment", "optimizer", "scheduler", "trainer")


def _with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """The schema's defaults under the file's values, so that ``${seed}`` resolves when the file omits it."""
    defaults: dict[str, Any] = {"seed": Recipe.model_fields["seed"].default}
    for key in ("data", "encoder", "augment", "optimizer", "scheduler", "trainer"):
        section = cast("type[BaseModel]", Recipe.model_fields[key].annotation)  # these sections are models
        defaults[key] = section.model_construct().model_dump()
    merged = {key: value for key, value in data.items() if not (key in _SECTIONS and value is None)}
    merged.setdefault("method", {})  # so that a recipe without one is told to name its method
    _merge(defaults, merged)
    return defaults


def validate_recipe(
    data: Mapping[str, Any], *, path: str | PathLike[str] | None = None, overrides: Mapping[str, str] | None = None
) -> Recipe:
    """Validate plain recipe data (interpolations resolved) into its method's recipe model.

    The ``method`` section is checked against the method sections registered so far
    (:func:`~geocl.recipes.schema.register_method_config`); :func:`geocl.methods.load_recipe`
    is the caller that guarantees the built-in ones are.

    Args:
        data: the recipe as plain data (:func:`read_recipe`).
        path: the recipe file, named in errors.
        overrides: dotted key -> the override that set it, named in errors.

    Raises:
        GeoclError: the first problem, with its dotted key, as :mod:`geocl.recipes.errors` words it.
    """
    overrides = dict(overrides or {})
    source = Path(path) if path is not None else None
    model = recipe_model()
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise validation_error(exc, source=source, overrides=overrides, model=model) from None


def read_recipe(path: str | PathLike[str], overrides: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a recipe file and apply overrides: plain data, not yet validated.

    Args:
        path: the recipe YAML file.
        overrides: ``dotted.key=value`` strings applied in order after the file; values
            are YAML (``data.batch_size=8``, ``augment.scale=[0.5,1.0]``, ``out=runs/x``).

    Returns:
        The recipe as plain data, the schema's defaults under the file's values and
        interpolations resolved; and dotted key -> the override that set it last (for
        :func:`validate_recipe`'s errors).

    Raises:
        GeoclError: a missing or unreadable file, invalid YAML, a malformed override or
            an interpolation that cannot be resolved.
    """
    path = Path(path)
    data = _read_yaml(path)
    if isinstance(overrides, str):  # one override passed bare would split into characters
        overrides = [overrides]
    by_key: dict[str, str] = {}
    for text in overrides:
        by_key[_apply_override(data, text, path)] = text  # the later override is the one that counts
    return _resolve(_with_defaults(data), path, by_key), by_key


def method_params(recipe: Recipe | Mapping[str, Any]) -> tuple[str, MethodParams]:
    """The method a recipe selects and its validated parameters.

    Args:
        recipe: a recipe from :func:`geocl.methods.load_recipe`, or plain recipe data with
            a ``method`` section (e.g. the recipe stored in a checkpoint); its method's
            section must be registered.

    Raises:
        GeoclError: no or an unknown method, bad or missing parameters.
    """
    section = recipe.method if isinstance(recipe, Recipe) else recipe.get("method")
    if isinstance(section, BaseModel):
        section = section.model_dump()
    # validated as the section of a one-key model, so that errors name `method.<key>`
    section_field = recipe_model().model_fields["method"]
    fields: dict[str, Any] = {"method": (section_field.annotation, section_field)}
    holder = create_model("MethodSection", **fields)
    try:
        params = holder.model_validate({"method": section}).method
        return params.name, params
    except ValidationError as exc:
        raise validation_error(exc, model=holder) from None


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data (what ``config.yaml`` holds), the method's ``name`` first."""
    data = recipe.model_dump(mode="json")
    method = data["method"]
    data["method"] = {"name": method["name"], **{k: v for k, v in method.items() if k != "name"}}
    return data


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML that :func:`geocl.methods.load_recipe` reads back to an equal recipe.

    OmegaConf writes it, so a string its loader would read as something else
    (``name: 1e5``) is quoted.
    """
    return OmegaConf.to_yaml(OmegaConf.create(recipe_to_dict(recipe)))


def save_recipe(recipe: Recipe, path: str | os.PathLike[str]) -> None:
    """Write :func:`recipe_to_yaml` to ``path`` atomically (temp file + rename)."""
    text = recipe_to_yaml(recipe)
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
