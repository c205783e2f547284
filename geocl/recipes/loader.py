"""Loading recipes: YAML file + dotted overrides -> a validated, read-only config.

Order of work in :func:`load_recipe`:

1. read the YAML (duplicate keys refused; ``1e-3`` is a float, ``2024-01-01`` a string,
   as OmegaConf reads them);
2. apply the ``dotted.key=value`` overrides to the plain data, remembering which key
   each override set so that errors can say where a bad value came from;
3. check every key against the schema, at every depth, before OmegaConf sees it:
   OmegaConf would refuse an unknown key too, but without the "did you mean";
4. merge into the structured schema (OmegaConf converts and checks types), build the
   ``method`` section from the registered method's dataclass, resolve interpolations;
5. refuse missing mandatory values, bad choices and out-of-range numbers.

Every user mistake becomes a :class:`~geocl.errors.GeoclError` naming the file, the
full dotted key and, for misspellings, the closest valid key. OmegaConf exceptions
are caught only around the calls that handle user data, so a bug in a schema still
raises with its traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from os import PathLike
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from geocl.errors import GeoclError
from geocl.io import atomic_path
from geocl.recipes.schema import (
    ACCELERATORS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULERS,
    SPLITS,
    Recipe,
    method_config_class,
    method_names,
)

# ---------------------------------------------------------------------------- YAML

_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: `1e-3` and
# `1.0e6` would be strings and then fail a float field. Recipes read them as numbers.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


def _recipe_resolvers(cls: type) -> type:
    """Give a PyYAML loader or dumper class the recipe reading of plain scalars.

    The dumper needs the same reading as the loader: it quotes a string only when the
    resolver would read it as something else, so a string field holding ``1e5`` is
    written quoted and reads back as a string.
    """
    cls.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789."))
    # Dates would be datetime objects, which OmegaConf cannot hold; keep them strings.
    cls.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in entries if tag != _TIMESTAMP_TAG]
        for first, entries in cls.yaml_implicit_resolvers.items()
    }
    return cls


@_recipe_resolvers
class _RecipeLoader(yaml.SafeLoader):
    """Safe loading that refuses duplicate keys: PyYAML keeps the last one silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            # `<<` merge keys may repeat keys on purpose; only literal keys are checked.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key_node.value}'", key_node.start_mark
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


@_recipe_resolvers
class _RecipeDumper(yaml.SafeDumper):
    """Block-style YAML with short scalar lists on one line (``scale: [0.2, 1.0]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.SequenceNode:
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_RecipeDumper.add_representer(list, _represent_list)


def _plain(value: Any) -> Any:
    """A fresh copy of loaded YAML data: aliases (`*x`) no longer share one object,
    so an override of one place cannot change another."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _read_yaml(path: Path) -> dict[Any, Any]:
    """The recipe file as plain data; a GeoclError naming the file for anything wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GeoclError("recipe file not found", path=path) from None
    except IsADirectoryError:
        raise GeoclError("is a folder, not a recipe file", path=path) from None
    except UnicodeDecodeError:
        raise GeoclError("not a text (UTF-8) file; a recipe is YAML", path=path) from None
    except OSError as exc:
        raise GeoclError(f"cannot read recipe: {exc.strerror or exc}", path=path) from None
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        # An unclosed bracket is found only at the end of the file; the context mark
        # points back at where it opened, which is where the fix goes.
        start = exc.context_mark
        if exc.problem and exc.context and start is not None and mark is not None and start.line != mark.line:
            problem += f" ({exc.context} started at line {start.line + 1})"
        raise GeoclError(f"invalid YAML{where}: {problem}", path=path) from None
    except yaml.YAMLError as exc:
        raise GeoclError(f"invalid YAML: {str(exc).splitlines()[0]}", path=path) from None
    if data is None:
        raise GeoclError("recipe file is empty", path=path)
    if not isinstance(data, dict):
        raise GeoclError(
            f"a recipe must be a mapping of sections (name, out, data, ...), not {_kind(data)}", path=path
        )
    return _plain(data)


# ------------------------------------------------------------------ error messages


@dataclass
class _Source:
    """Where the data being validated came from, for error messages.

    Attributes:
        path: the recipe file (None when validating data that has none).
        overrides: dotted key -> the override text that set it, in command-line order.
    """

    path: Path | None = None
    overrides: dict[str, str] = field(default_factory=dict)

    def note(self, key: str) -> str:
        """`` (from override '...')`` when an override set ``key`` or a key around it."""
        text = None
        for set_key, override in self.overrides.items():
            if set_key == key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
                text = override  # the last one wins, as it did when applied
        return f" (from override '{text}')" if text is not None else ""

    def error(self, key: str, head: str, tail: str = "") -> GeoclError:
        """A GeoclError for ``key``: ``head``, the override note, then ``tail``."""
        return GeoclError(f"{head}{self.note(key)}{tail}", path=self.path, key=key)


def _closest(word: str, options: Sequence[str]) -> str | None:
    """The option closest to ``word`` (case-insensitive), or None if none is close."""
    lowered = {option.lower(): option for option in options}
    if word.lower() in lowered:
        return lowered[word.lower()]
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1)
    return lowered[match[0]] if match else None


def _kind(value: Any) -> str:
    """What a value is, in words (for "must be a mapping, not ...")."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"the value {_show(value)}"


def _show(value: Any) -> str:
    """A value as the user would write it in YAML, kept short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = f"'{value}'"
    elif isinstance(value, (dict, list)):
        text = yaml.dump(value, Dumper=_RecipeDumper, default_flow_style=True, width=10_000).strip()
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key(
    src: _Source, prefix: str, key: Any, valid: Sequence[str], context: str = ""
) -> GeoclError:
    """Unknown ``prefix + key``: suggest the closest valid key, else list them all."""
    dotted = f"{prefix}{key}"
    match = _closest(str(key), valid)
    tail = f"; did you mean '{prefix}{match}'?" if match else f"; valid keys: {', '.join(valid)}"
    return src.error(dotted, f"unknown key '{dotted}'{context}", tail)


def _describe(hint: Any) -> str | None:
    """A type hint in words (``an integer``); None when it says nothing useful."""
    if hint is None or hint is Any:
        return None
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = [_describe(arg) for arg in args if arg is not type(None)]
        if None in kinds:
            return None
        text = " or ".join(kinds)  # type: ignore[arg-type]
        return text + " or null" if type(None) in args else text
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        item = _describe(args[0]) if args else None
        return f"a list (each {item})" if item else "a list"
    if origin in (dict, Mapping) or hint is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    if isinstance(hint, type) and issubclass(hint, Enum):
        return "one of " + ", ".join(member.name for member in hint)
    return getattr(hint, "__name__", None) or str(hint)


# ---------------------------------------------------------------- schema walking


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> type of a dataclass, with string annotations resolved."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a class from a notebook cell may not resolve; raw types still describe
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _section_class(hint: Any) -> tuple[type | None, bool]:
    """(the dataclass a field holds or None, whether null is allowed)."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint, False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0], True
    return None, False


def _check_keys(
    mapping: dict[Any, Any],
    cls: type,
    prefix: str,
    src: _Source,
    *,
    extra: Sequence[str] = (),
    context: str = "",
) -> dict[Any, Any]:
    """Refuse keys ``cls`` does not have, at every depth of nested dataclass sections.

    Returns a copy in which an empty section (``data:`` with nothing under it) is
    dropped, so that it keeps its defaults instead of failing as null.

    Args:
        mapping: the user's data for this section.
        cls: the section's dataclass.
        prefix: dotted path of the section, with a trailing dot (``""`` at the top).
        src: the data's origin, for messages.
        extra: further valid key names (``name`` in the method section).
        context: words after the key in the message (`` for method 'grass'``).
    """
    types_ = _field_types(cls)
    valid = [*extra, *(f.name for f in dataclasses.fields(cls))]
    checked: dict[Any, Any] = {}
    for key, value in mapping.items():
        if key not in valid:
            raise _unknown_key(src, prefix, key, valid, context)
        section, nullable = _section_class(types_.get(key))
        if section is not None:
            if value is None and not nullable:
                continue
            if value is not None:
                if not isinstance(value, dict):
                    keys = ", ".join(f.name for f in dataclasses.fields(section))
                    raise src.error(
                        f"{prefix}{key}",
                        f"invalid value {_show(value)} for {prefix}{key}",
                        f": expected a mapping (a section with keys {keys})",
                    )
                value = _check_keys(value, section, f"{prefix}{key}.", src)
        checked[key] = value
    return checked


def _hint_at(cls: type | None, dotted: str) -> Any:
    """The declared type at ``dotted`` (``data.batch_size``, ``sizes[0]``) below ``cls``."""
    hint: Any = cls
    for part in dotted.split("."):
        name, _, index = part.partition("[")
        section, _ = _section_class(hint)
        if section is None:
            return None
        hint = _field_types(section).get(name)
        if index:
            args = typing.get_args(hint)
            hint = args[0] if args else None
    return hint


def _value_at(data: Any, dotted: str) -> tuple[bool, Any]:
    """(found, value) at ``dotted`` in plain data; list items as ``name[0]``."""
    for part in dotted.split("."):
        name, _, rest = part.partition("[")
        if not isinstance(data, dict) or name not in data:
            return False, None
        data = data[name]
        for index in re.findall(r"(\d+)\]", "[" + rest if rest else ""):
            if not isinstance(data, list) or int(index) >= len(data):
                return False, None
            data = data[int(index)]
    return True, data


def _from_omegaconf(
    exc: OmegaConfBaseException, src: _Source, prefix: str, cls: type | None, data: Any
) -> GeoclError:
    """An OmegaConf exception about user data, as a GeoclError naming the dotted key.

    Args:
        exc: the exception; its ``full_key`` is relative to the config that raised it.
        src: the data's origin.
        prefix: dotted path of that config (``method.`` for the method section).
        cls: that config's dataclass, to name the expected type.
        data: the plain data merged into it, to show the offending value.
    """
    relative = str(getattr(exc, "full_key", "") or "")
    key = f"{prefix}{relative}" if relative else prefix.rstrip(".")
    detail = str(getattr(exc, "msg", "") or exc).splitlines()[0]
    if isinstance(exc, InterpolationResolutionError):
        return src.error(key, f"cannot resolve the value of {key}", f": {detail}")
    if isinstance(exc, MissingMandatoryValue):
        return src.error(key, f"missing value for {key}")
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        return src.error(key, f"unknown key '{key}'")
    if isinstance(exc, ValidationError) and relative:
        found, value = _value_at(data, relative)
        expected = _describe(_hint_at(cls, relative))
        head = f"invalid value {_show(value)} for {key}" if found else f"invalid value for {key}"
        return src.error(key, head, f": expected {expected}" if expected else f": {detail}")
    return src.error(key, f"invalid recipe value for {key or 'the recipe'}", f": {detail}")


# ------------------------------------------------------------------- overrides

# Segments as recipe keys are written; `+key`/`~key` (Hydra's add/delete) are not
# supported and fall out as malformed.
_OVERRIDE_KEY = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")


def _parse_override(text: str) -> tuple[str, Any]:
    """``dotted.key=value`` -> (key, value parsed as YAML)."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not _OVERRIDE_KEY.fullmatch(key):
        raise GeoclError(
            f"malformed override '{text}': expected dotted.key=value, e.g. trainer.max_epochs=1", key=text
        )
    if not value_text.strip():
        return key, ""  # `key=` means an empty string, as in Hydra; write `key=null` for null
    try:
        value = yaml.load(value_text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GeoclError(f"cannot parse the value of override '{text}' as YAML: {problem}", key=key) from None
    return key, _plain(value)


def _merge_into(target: dict[Any, Any], update: dict[Any, Any]) -> None:
    """Deep-merge ``update`` into ``target``: `data={batch_size: 8}` keeps data.tiles."""
    for key, value in update.items():
        if isinstance(target.get(key), dict) and isinstance(value, dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def _apply_override(data: dict[Any, Any], key: str, value: Any, text: str, src: _Source) -> None:
    """Set ``key`` in the plain recipe data, creating sections on the way."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise GeoclError(
                f"cannot apply override '{text}': {where} holds {_show(child)}, not a section",
                path=src.path,
                key=where,
            )
        node = child
    last = parts[-1]
    if isinstance(node.get(last), dict) and isinstance(value, dict):
        _merge_into(node[last], value)
    else:
        node[last] = value


# ------------------------------------------------------------------ validation


def _method_params_node(raw: Any, src: _Source) -> tuple[str, DictConfig]:
    """(method name, structured config of its parameters) from the ``method`` section."""
    if raw is None or (isinstance(raw, dict) and raw.get("name") in (None, "???")):
        raise src.error("method.name", "missing value for method.name")
    if not isinstance(raw, dict):
        raise src.error(
            "method", f"invalid value {_show(raw)} for method", ": expected a mapping (name and parameters)"
        )
    name = raw["name"]
    config_cls = method_config_class(name) if isinstance(name, str) else None
    if config_cls is None:
        known = method_names()
        match = _closest(str(name), known) if known else None
        tail = f"; did you mean '{match}'?" if match else ""
        if known:
            tail += f" (known: {', '.join(known)})"
        else:  # a caller forgot the import that registers them
            tail += " (no methods are registered: import geocl.methods first)"
        raise src.error("method.name", f"unknown method {_show(name)}", tail)
    params = {key: value for key, value in raw.items() if key != "name"}
    params = _check_keys(params, config_cls, "method.", src, extra=("name",), context=f" for method '{name}'")
    schema = OmegaConf.structured(config_cls)  # outside the try: a broken dataclass is a bug
    try:
        node = OmegaConf.merge(schema, params)
    except OmegaConfBaseException as exc:
        raise _from_omegaconf(exc, src, "method.", config_cls, params) from None
    assert isinstance(node, DictConfig)
    return name, node


def _ordered_keys(cfg: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of ``cfg`` in file order, without reading missing values."""
    if not isinstance(cfg, DictConfig):
        return
    for key in cfg.keys():
        dotted = f"{prefix}{key}"
        yield dotted
        if not OmegaConf.is_missing(cfg, key):
            yield from _ordered_keys(cfg[key], dotted + ".")


def _first_unresolvable(cfg: Any, prefix: str = "") -> tuple[str, OmegaConfBaseException] | None:
    """(dotted key, error) of the first value whose interpolation fails, or None."""
    if isinstance(cfg, DictConfig):
        entries = [(key, f"{prefix}{key}") for key in cfg.keys()]
    elif isinstance(cfg, ListConfig):
        entries = [(index, f"{prefix.rstrip('.')}[{index}]") for index in range(len(cfg))]
    else:
        return None
    for key, dotted in entries:
        if OmegaConf.is_missing(cfg, key):
            continue  # reported as missing, with the others, afterwards
        try:
            value = cfg[key]
        except OmegaConfBaseException as exc:
            return dotted, exc
        failure = _first_unresolvable(value, dotted + ".")
        if failure is not None:
            return failure
    return None


def _check_choice(src: _Source, key: str, value: Any, choices: Sequence[str]) -> None:
    if value in choices:
        return
    match = _closest(str(value), choices)
    tail = f"; did you mean '{match}'?" if match else ""
    raise src.error(key, f"invalid value {_show(value)} for {key}", f"{tail} (choices: {', '.join(choices)})")


def _is_int(value: Any) -> bool:
    # bool is an int to Python, but `devices: true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_values(cfg: DictConfig, src: _Source) -> None:
    """Choices and ranges the types alone do not catch."""

    def require(key: str, ok: bool, rule: str) -> None:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise src.error(key, f"invalid value {_show(value)} for {key}", f": {rule}")

    _check_choice(src, "data.split", cfg.data.split, SPLITS)
    _check_choice(src, "optimizer.name", cfg.optimizer.name, OPTIMIZERS)
    _check_choice(src, "scheduler.name", cfg.scheduler.name, SCHEDULERS)
    _check_choice(src, "trainer.accelerator", cfg.trainer.accelerator, ACCELERATORS)
    _check_choice(src, "trainer.precision", cfg.trainer.precision, PRECISIONS)
    # Kept here rather than imported from geocl.data.natural, which pulls in torch.
    _check_choice(src, "data.format", cfg.data.format, ("tiles", "image_folder", "cifar"))
    for key in ("name", "out", "encoder.name", "trainer.strategy"):
        require(key, bool(str(OmegaConf.select(cfg, key)).strip()), "must not be empty")
    # The data folder is mandatory, but which key names it depends on the format.
    folder_key = "data.tiles" if cfg.data.format == "tiles" else "data.path"
    if not str(OmegaConf.select(cfg, folder_key)).strip():
        hint = "" if cfg.data.format == "tiles" else f" (data.format {cfg.data.format} reads its folder from data.path)"
        raise src.error(folder_key, f"missing value for {folder_key}", hint)
    if cfg.data.format == "tiles":
        require("data.image_size", cfg.data.image_size == 0, "tiles are not resized; only natural formats read it")
    else:
        require(
            "data.image_size", cfg.data.image_size == 0 or cfg.data.image_size >= 8,
            "must be 0 (images as stored) or at least 8 px",
        )
    require("data.val_fraction", 0 <= cfg.data.val_fraction < 1, "must be in [0, 1)")
    # numpy and Lightning take seeds as unsigned 32-bit integers.
    require("seed", 0 <= cfg.seed < 2**32, "must be between 0 and 4294967295")
    require("data.batch_size", cfg.data.batch_size >= 1, "must be at least 1")
    require("data.num_workers", cfg.data.num_workers >= 0, "must be at least 0")
    require("data.view_size", cfg.data.view_size >= 1, "must be at least 1")
    require("optimizer.lr", cfg.optimizer.lr > 0, "must be greater than 0")
    require("optimizer.weight_decay", cfg.optimizer.weight_decay >= 0, "must be at least 0")
    require("optimizer.momentum", 0 <= cfg.optimizer.momentum < 1, "must be in [0, 1)")
    require("scheduler.warmup_epochs", cfg.scheduler.warmup_epochs >= 0, "must be at least 0")
    trainer = cfg.trainer
    unlimited = "must be at least 1, or -1 (no limit)"
    require("trainer.max_epochs", trainer.max_epochs >= 1 or trainer.max_epochs == -1, unlimited)
    require("trainer.max_steps", trainer.max_steps >= 1 or trainer.max_steps == -1, unlimited)
    require("trainer.log_every_n_steps", trainer.log_every_n_steps >= 1, "must be at least 1")
    require("trainer.gradient_clip_val", trainer.gradient_clip_val >= 0, "must be at least 0 (0: no clipping)")
    devices = trainer.devices
    require(
        "trainer.devices",
        devices == "auto" or (_is_int(devices) and (devices >= 1 or devices == -1)),
        "expected a device count (at least 1), -1 (all) or 'auto'",
    )
    limit = trainer.limit_train_batches
    # Lightning reads an int as a number of batches and a float as a fraction of them.
    require(
        "trainer.limit_train_batches",
        (_is_int(limit) and limit >= 1) or (isinstance(limit, float) and 0 < limit <= 1),
        "expected a number of batches (integer, at least 1) or a fraction in (0, 1]",
    )


def _build(data: dict[Any, Any], src: _Source) -> DictConfig:
    """Validate plain recipe data and turn it into the read-only recipe config."""
    body = _check_keys(data, Recipe, "", src)
    method_raw = body.pop("method", None)
    augment = body.pop("augment", None)
    if augment is None:
        augment = {}
    elif not isinstance(augment, dict):
        raise src.error("augment", f"invalid value {_show(augment)} for augment", ": expected a mapping")
    method_name, method = _method_params_node(method_raw, src)
    with open_dict(method):
        method.name = method_name

    schema = OmegaConf.structured(Recipe)
    try:
        cfg = OmegaConf.merge(schema, body)
    except OmegaConfBaseException as exc:
        raise _from_omegaconf(exc, src, "", Recipe, body) from None
    assert isinstance(cfg, DictConfig)
    try:
        cfg.augment = augment
    except OmegaConfBaseException as exc:
        raise _from_omegaconf(exc, src, "augment.", None, augment) from None
    cfg.method = method
    # Resolve now, so that the run folder's config.yaml is exactly what ran and a bad
    # interpolation fails here rather than mid-run. OmegaConf.resolve does not say
    # which key failed, so each value is read first.
    failure = _first_unresolvable(cfg)
    if failure is not None:
        key, exc = failure
        detail = str(getattr(exc, "msg", "") or exc).splitlines()[0]
        raise src.error(key, f"cannot resolve the value of {key}", f": {detail}")
    OmegaConf.resolve(cfg)

    missing = OmegaConf.missing_keys(cfg)
    if missing:
        order = [key for key in _ordered_keys(cfg) if key in missing]
        order += sorted(missing - set(order))
        noun = "value" if len(order) == 1 else "values"
        raise src.error(order[0], f"missing {noun} for {', '.join(order)}")
    _check_values(cfg, src)
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_readonly(cfg, True)
    return cfg


# ------------------------------------------------------------------------ API


def load_recipe(path: str | PathLike[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Load, override and validate a recipe.

    Args:
        path: the recipe YAML file.
        overrides: ``dotted.key=value`` strings applied in order after the file; values
            are YAML (``data.batch_size=8``, ``augment.scale=[0.5,1.0]``, ``out=runs/x``).

    Returns:
        A read-only, struct-mode DictConfig of :class:`~geocl.recipes.schema.Recipe`
        with interpolations resolved; ``recipe.method`` is a structured config of the
        method's registered dataclass plus its ``name``; ``recipe.augment`` is a plain
        mapping.

    Raises:
        GeoclError: a missing or unreadable file, invalid YAML, a malformed override,
            an unknown key (with the closest valid one), a wrong type, a bad choice, an
            out-of-range number or a missing mandatory value.
    """
    path = Path(path)
    data = _read_yaml(path)
    if isinstance(overrides, str):  # one override passed bare would split into characters
        overrides = [overrides]
    src = _Source(path)
    for text in overrides:
        key, value = _parse_override(text)
        _apply_override(data, key, value, text, src)
        src.overrides.pop(key, None)  # re-insert: the later override is the one that counts
        src.overrides[key] = text
    return _build(data, src)


def read_saved_recipe(path: str | PathLike[str]) -> dict[str, Any] | None:
    """A run's saved ``config.yaml`` as plain data, read as today's schema reads it.

    Keys the schema gained since the run was saved take their defaults, so a run made
    before a new recipe key existed still counts as the same recipe (for resuming it, or
    for ``geocl compare`` to reuse it).

    Returns:
        The resolved recipe, or None when the file is missing or no longer a valid recipe.
    """
    try:
        return OmegaConf.to_container(load_recipe(path), resolve=True)  # type: ignore[return-value]
    except GeoclError:
        return None


def method_params(recipe: DictConfig) -> tuple[str, Any]:
    """The method a recipe selects and its parameters.

    Args:
        recipe: a recipe from :func:`load_recipe`, or any config with a ``method``
            section (e.g. the plain recipe stored in a checkpoint).

    Returns:
        ``(name, params)`` where ``params`` is an instance of the dataclass registered
        for ``name`` (without the ``name`` key).

    Raises:
        GeoclError: no or an unknown method, bad or missing parameters.
    """
    section = recipe.get("method") if isinstance(recipe, (DictConfig, Mapping)) else None
    raw = OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else section
    src = _Source()
    name, node = _method_params_node(_plain(raw) if raw is not None else None, src)
    try:
        return name, OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:
        raise _from_omegaconf(exc, src, "method.", method_config_class(name), raw) from None


def recipe_to_yaml(recipe: DictConfig) -> str:
    """The recipe, resolved, as YAML that :func:`load_recipe` reads back to an equal config."""
    data = OmegaConf.to_container(recipe, resolve=True, enum_to_str=True)
    assert isinstance(data, dict)
    method = data.get("method")
    if isinstance(method, dict) and "name" in method:
        # The selector first: it says how to read the keys below it.
        data["method"] = {"name": method["name"], **{k: v for k, v in method.items() if k != "name"}}
    return yaml.dump(
        data, Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )


def save_recipe(recipe: DictConfig, path: str | PathLike[str]) -> None:
    """Write :func:`recipe_to_yaml` to ``path`` atomically (temp file + rename)."""
    text = recipe_to_yaml(recipe)
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
