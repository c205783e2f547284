"""Loading recipes: YAML file + dotted overrides -> a validated, read-only recipe model.

Order of work in :func:`load_recipe`:

1. read the YAML with OmegaConf (duplicate keys refused; ``1e-3`` is a float,
   ``2024-01-01`` a string);
2. merge the ``dotted.key=value`` overrides with OmegaConf's own dot-list parser,
   remembering which override set each key so that errors can say where a bad value
   came from;
3. resolve ``${...}`` interpolations (OmegaConf), naming the key that fails;
4. validate the plain data with the pydantic model of the recipe's method
   (:func:`geocl.recipes.schema.recipe_model`); the first validation error becomes a
   :class:`~geocl.errors.GeoclError` through the one mapper of
   :mod:`geocl.recipes.errors` (dotted key, "did you mean", the override, the file).

Nothing here imports torch: a recipe is checked before any heavy import.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

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
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


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
    _merge(data, update)  # type: ignore[arg-type]
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
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
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
        dotted = f"{prefix}{key}"
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
        defaults[key] = Recipe.model_fields[key].annotation.model_construct().model_dump()  # type: ignore[union-attr]
    merged = {key: value for key, value in data.items() if not (key in _SECTIONS and value is None)}
    merged.setdefault("method", {})  # so that a recipe without one is told to name its method
    _merge(defaults, merged)
    return defaults


def validate_recipe(
    data: Mapping[str, Any], *, path: str | PathLike[str] | None = None, overrides: Mapping[str, str] | None = None
) -> Recipe:
    """Validate plain recipe data (interpolations resolved) into its method's recipe model.

    Raises:
        GeoclError: the first problem, with its dotted key, as :mod:`geocl.recipes.errors` words it.
    """
    import geocl.methods  # noqa: F401  (the built-in methods register their recipe sections on import)

    overrides = dict(overrides or {})
    source = Path(path) if path is not None else None
    model = recipe_model()
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise validation_error(exc, source=source, overrides=overrides, model=model) from None


def load_recipe(path: str | PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """Load, override and validate a recipe.

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
    path = Path(path)
    data = _read_yaml(path)
    if isinstance(overrides, str):  # one override passed bare would split into characters
        overrides = [overrides]
    by_key: dict[str, str] = {}
    for text in overrides:
        by_key[_apply_override(data, text, path)] = text  # the later override is the one that counts
    return validate_recipe(_resolve(_with_defaults(data), path, by_key), path=path, overrides=by_key)


def read_saved_recipe(path: str | PathLike[str]) -> dict[str, Any] | None:
    """A run's saved ``config.yaml`` as plain data, read as today's schema reads it.

    Keys the schema gained since the run was saved take their defaults, so a run made
    before a new recipe key existed still counts as the same recipe (for resuming it, or
    for ``geocl compare`` to reuse it).

    Returns:
        The resolved recipe, or None when the file is missing or no longer a valid recipe.
    """
    try:
        return recipe_to_dict(load_recipe(path))
    except GeoclError:
        return None


def method_params(recipe: Recipe | Mapping[str, Any]) -> tuple[str, MethodParams]:
    """The method a recipe selects and its validated parameters.

    Args:
        recipe: a recipe from :func:`load_recipe`, or plain recipe data with a ``method``
            section (e.g. the recipe stored in a checkpoint).

    Raises:
        GeoclError: no or an unknown method, bad or missing parameters.
    """
    section = recipe.method if isinstance(recipe, Recipe) else recipe.get("method")
    if isinstance(section, BaseModel):
        section = section.model_dump()
    # validated as the section of a one-key model, so that errors name `method.<key>`
    section_field = recipe_model().model_fields["method"]
    holder = create_model("MethodSection", method=(section_field.annotation, section_field))
    try:
        params = holder.model_validate({"method": section}).method  # type: ignore[attr-defined]
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
    """The recipe as YAML that :func:`load_recipe` reads back to an equal recipe.

    OmegaConf writes it, so a string its loader would read as something else
    (``name: 1e5``) is quoted.
    """
    return OmegaConf.to_yaml(OmegaConf.create(recipe_to_dict(recipe)))


def save_recipe(recipe: Recipe, path: str | os.PathLike[str]) -> None:
    """Write :func:`recipe_to_yaml` to ``path`` atomically (temp file + rename)."""
    text = recipe_to_yaml(recipe)
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
