"""One mapper from pydantic's validation errors to geocl's one-line user errors.

Recipes and command options are pydantic models; whatever rejects a value (a type, a
range, a choice, an unknown key, a cross-field rule), :func:`validation_error` turns
the first error into one :class:`~geocl.errors.GeoclError` that names

* where: the dotted key (``data.batch_size``, ``augment.scale[1]``) or, for command
  options, the flag as the user typed it (``--size``), and the file it came from;
* what: the value and the rule in plain words (``invalid value 0 ...: must be at least
  1``), the choices and the closest one for a bad choice or a misspelt key ("did you
  mean"), the expected type otherwise;
* which ``dotted.key=value`` override set the value, when one did.

With a file (``source``) the message leads with the file and names the key in its
body: ``grass.yaml: invalid value 0 for data.batch_size (from override
'data.batch_size=0'): must be at least 1``. Without one, :class:`GeoclError` leads with
the key and the body does not repeat it: ``--size: invalid value 0: must be at least 8``.

The key is found by walking the model's fields along the error's ``loc``
(:mod:`geocl.recipes.locations`: nested models, list and tuple indices, dict keys and
the tags pydantic inserts for union members; a discriminated union's tag is the
selector's value: ``method.simclr.x`` is reported as ``method.x ... for method
'simclr'``). The ranges of a field come from its ``Field(ge=..., le=...)`` constraints,
so a message states the whole interval. One formatter per pydantic error type words
the message (``_FORMATTERS``).

Cross-field rules raise :func:`field_relation` errors whose message names other
fields by placeholder, so they read ``must be smaller than --window`` on the command
line and ``must be smaller than window`` elsewhere. The module imports only pydantic.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from geocl.errors import GeoclError
from geocl.recipes.locations import Location, bare_location, literal_values, locate, model_fields

#: Error type of :func:`field_relation`.
RELATION_ERROR = "field_relation"

_TYPE_WORDS: dict[str, str] = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "int_parsing_size": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "string_unicode": "a string",
    "path_type": "a path",
    "dict_type": "a mapping",
    "mapping_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "iterable_type": "a list",
    "none_required": "null",
}
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_PREFIXES = ("Value error, ", "Assertion failed, ")


def field_relation(template: str, **fields: str) -> PydanticCustomError:
    """A cross-field error for a validator to raise, naming other fields by placeholder.

    Args:
        template: the rule broken, with ``{placeholder}`` for each field it names; values
            are formatted in beforehand (double the braces of the placeholders in an
            f-string): ``f"must be smaller than {{window}} ({window} px), got {overlap}"``.
        fields: placeholder -> the name of the field it stands for, a sibling of the
            field being validated (``window="window"``).

    Returns:
        The error to raise. Pydantic's own message shows the field names;
        :func:`validation_error` shows each as its flag or dotted key.
    """
    return PydanticCustomError(RELATION_ERROR, template, {**fields, "template": template})


# ---------------------------------------------------------------------- wording


def _closest(word: str, options: Sequence[str]) -> str | None:
    """The option closest to ``word`` (case-insensitive), or None if none is close."""
    lowered = {option.lower(): option for option in options}
    if word.lower() in lowered:
        return lowered[word.lower()]
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1)
    return lowered[match[0]] if match else None


def _number(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _show(value: Any, raw: bool = False) -> str:
    """A value as the user would write it (YAML-like; ``raw``: as typed on a command line)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value if raw and re.fullmatch(r"[-+]?[\w.]+", value) else f"'{value}'"
    elif isinstance(value, PurePath):
        text = f"'{value}'"
    elif isinstance(value, (int, float)):
        text = _number(value)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{key}: {_show(item, raw)}" for key, item in value.items()) + "}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(item, raw) for item in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounds(metadata: Sequence[Any]) -> str | None:
    """The interval the constraints allow, in words (``must be in (0, 1]``)."""
    low = high = None  # (value, inclusive)
    for item in metadata:  # annotated_types Gt, Ge, Lt, Le and Interval
        for name in ("gt", "ge", "lt", "le"):
            bound = getattr(item, name, None)
            if bound is None:
                continue
            if name in ("gt", "ge"):
                low = (bound, name == "ge")
            else:
                high = (bound, name == "le")
    if low and high:
        return f"must be in {'[' if low[1] else '('}{_number(low[0])}, {_number(high[0])}{']' if high[1] else ')'}"
    if low:
        return f"must be {'at least' if low[1] else 'greater than'} {_number(low[0])}"
    if high:
        return f"must be {'at most' if high[1] else 'less than'} {_number(high[0])}"
    return None


def _range_from_context(kind: str, ctx: Mapping[str, Any]) -> str:
    words = {
        "greater_than": ("greater than", "gt"),
        "greater_than_equal": ("at least", "ge"),
        "less_than": ("less than", "lt"),
        "less_than_equal": ("at most", "le"),
    }[kind]
    return f"must be {words[0]} {_number(ctx.get(words[1]))}"


def _choices(where: Location, ctx: Mapping[str, Any]) -> list[str]:
    values = literal_values(where.hint)
    if not values:
        values = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
    return [str(value) for value in values]


def _message(error: Mapping[str, Any]) -> str:
    text = str(error.get("msg", "")).splitlines()[0] if error.get("msg") else ""
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _expectations(error: Mapping[str, Any]) -> list[str]:
    """What a union member would have accepted, in words (``an integer``, ``'auto'``)."""
    kind = error["type"]
    if kind in _TYPE_WORDS:
        return [_TYPE_WORDS[kind]]
    if kind == "literal_error":
        return [f"'{choice}'" for choice in _choices(Location(), error.get("ctx") or {})]
    return []


def _either(words: Sequence[str]) -> str:
    """``a, b or c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


# ---------------------------------------------------------------------- mapper


class _Namer:
    """Shows a field path as its flag (command options) or its dotted key."""

    def __init__(self, flags: Mapping[str, str] | None) -> None:
        self.flags = dict(flags or {})

    def flag(self, where: Location) -> str | None:
        return self.flags.get(".".join(where.fields)) if where.fields else None

    def name(self, where: Location) -> str:
        return self.flag(where) or where.key

    def path(self, dotted: str) -> str:
        return self.flags.get(dotted, dotted)


def _override_note(overrides: Mapping[str, str] | None, key: str) -> str:
    """`` (from override '...')`` when an override set ``key`` or a key around it."""
    text = None
    for set_key, override in (overrides or {}).items():
        if set_key == key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
            text = override  # the last one wins, as it did when applied
    return f" (from override '{text}')" if text is not None else ""


def validation_error(
    error: ValidationError,
    *,
    source: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
    model: type[BaseModel] | None = None,
) -> GeoclError:
    """Pydantic's first validation error as one clear :class:`GeoclError`.

    Args:
        error: what ``Model.model_validate`` (or the constructor) raised.
        source: the file the data came from (the message leads with it).
        overrides: dotted key -> the ``dotted.key=value`` text that set it, in the order
            applied; a bad value set by one is reported with it.
        flags: dotted field path (``finetune.max_epochs``) -> the flag or positional
            name the user typed (``--epochs``); such fields are named by their flag.
        model: the model that raised ``error``; found from the error's title when
            omitted (the top-level model class by name, as pydantic records it).

    Returns:
        The error to raise (``raise validation_error(exc, ...) from None``); its ``key``
        is the flag or dotted key at fault and its ``path`` the source.
    """
    errors = error.errors(include_url=False)
    if not errors:
        return GeoclError(str(error), path=source)
    cls = model if model is not None else _model_by_title(error.title)
    return _map(errors[0], errors, cls, source, overrides, flags)


@dataclass
class _Report:
    """One pydantic error being put into words, and what every message about it shares.

    Attributes:
        first: the error reported (pydantic's error dict).
        errors: all the errors it came with (a union's members err together).
        cls: the model that raised them, None when unknown.
        source: the file the data came from (it leads the message, the body names the key).
        overrides: dotted key -> the override that set it.
        namer: shows a field path as its flag or dotted key.
        where: what ``first["loc"]`` points at.
    """

    first: Mapping[str, Any]
    errors: Sequence[Mapping[str, Any]]
    cls: type | None
    source: str | os.PathLike[str] | None
    overrides: Mapping[str, str] | None
    namer: _Namer
    where: Location

    @property
    def kind(self) -> str:
        return str(self.first["type"])

    @property
    def ctx(self) -> Mapping[str, Any]:
        return self.first.get("ctx") or {}

    @property
    def flag(self) -> str | None:
        return self.namer.flag(self.where)

    @property
    def key(self) -> str:
        return self.namer.name(self.where)

    @property
    def note(self) -> str:
        return _override_note(self.overrides, self.where.key)

    @property
    def named(self) -> bool:
        """Whether the message body names the key (it does when the file leads)."""
        return self.source is not None

    def locate(self, loc: Sequence[Any]) -> Location:
        return locate(self.cls, loc) if self.cls is not None else bare_location(loc)

    def done(self, body: str, at: str | None = None) -> GeoclError:
        """The error with message ``body`` about the key ``at`` (default: the key at fault)."""
        return GeoclError(body, path=self.source, key=(at or self.key) or None)

    def invalid(self, tail: str) -> GeoclError:
        """``invalid value <value> [for <key>]<note><tail>``."""
        shown = _show(self.first.get("input"), raw=self.flag is not None)
        for_key = f" for {self.key}" if self.named else ""
        return self.done(f"invalid value {shown}{for_key}{self.note}{tail}")


def _map(
    first: Mapping[str, Any],
    errors: Sequence[Mapping[str, Any]],
    cls: type | None,
    source: str | os.PathLike[str] | None,
    overrides: Mapping[str, str] | None,
    flags: Mapping[str, str] | None,
) -> GeoclError:
    """:func:`validation_error` of the error ``first`` among all ``errors``: one formatter per error type."""
    where = locate(cls, first["loc"]) if cls is not None else bare_location(first["loc"])
    report = _Report(first, errors, cls, source, overrides, _Namer(flags), where)
    if not where.parts:  # a rule of the whole model (a model validator)
        kind = report.kind
        return GeoclError(_message(first) if kind not in _TYPE_WORDS else f"expected {_TYPE_WORDS[kind]}", path=source)
    return _FORMATTERS.get(report.kind, _mismatch)(report)


def _unknown_key(report: _Report) -> GeoclError:
    where, key, flag = report.where, report.key, report.flag
    head = f"unknown key '{key}'" if report.named or flag else "unknown key"
    siblings = list(model_fields(where.parent) or {}) if where.parent is not None else []
    prefix = key[: -len(where.parts[-1])] if where.parts else ""
    match = _closest(where.parts[-1], siblings) if where.parts and siblings else None
    if match:
        tail = (
            f"; did you mean '{report.namer.path('.'.join([*where.fields[:-1], match])) if flag else prefix + match}'?"
        )
    elif siblings:
        tail = f"; valid keys: {', '.join(siblings)}"
    else:
        tail = ""
    return report.done(f"{head}{where.context}{report.note}{tail}")


def _missing(report: _Report) -> GeoclError:
    loc, note = report.first["loc"], report.note
    if loc and isinstance(loc[-1], int):
        # a fixed-length tuple given too few items: pydantic reports the first one absent
        parent = report.locate(loc[:-1]) if report.cls is not None else report.where
        length = len(typing.get_args(parent.hint)) or "more"
        value = report.first.get("input")
        got = len(value) if isinstance(value, Sequence) else "fewer"
        shown = _show(value, raw=report.flag is not None)
        key = report.namer.name(parent)
        for_key = f" for {key}" if report.named else ""
        return report.done(f"invalid value {shown}{for_key}{note}: expected {length} values, got {got}", key)
    return report.done(f"missing value for {report.key}{note}" if report.named else f"missing value{note}")


def _union_tag(report: _Report) -> GeoclError:
    ctx, key, note = report.ctx, report.key, report.note
    selector = str(ctx.get("discriminator", "")).strip("'\"") or report.where.discriminator or ""
    at = f"{key}.{selector}" if selector else key
    if report.kind == "union_tag_not_found":
        return report.done(f"missing value for {at}{note}" if report.named else f"missing value{note}", at)
    tag = str(ctx.get("tag", ""))
    known = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
    match = _closest(tag, known) if known else None
    tail = (f"; did you mean '{match}'?" if match else "") + (f" (choices: {', '.join(known)})" if known else "")
    return report.done(f"invalid value '{tag}'{f' for {at}' if report.named else ''}{note}{tail}", at)


def _bad_choice(report: _Report) -> GeoclError:
    choices = _choices(report.where, report.ctx)
    match = _closest(str(report.first.get("input")), choices) if choices else None
    tail = f"; did you mean '{match}'?" if match else ""
    return report.invalid(f"{tail} (choices: {', '.join(choices)})")


def _relation(report: _Report) -> GeoclError:
    ctx, prefix = report.ctx, report.where.fields[:-1]
    template = str(ctx.get("template", report.first.get("msg", "")))
    body = re.sub(
        r"\{(\w+)\}",
        lambda m: report.namer.path(".".join([*prefix, str(ctx[m.group(1)])])) if m.group(1) in ctx else m.group(0),
        template,
    )
    return report.done(f"{report.key}{report.note}: {body}" if report.named else f"{body}{report.note}")


def _out_of_range(report: _Report) -> GeoclError:
    return report.invalid(f": {_bounds(report.where.metadata) or _range_from_context(report.kind, report.ctx)}")


def _bad_length(report: _Report) -> GeoclError:
    return report.invalid(f": {_length_rule(report.kind, report.ctx, report.where)}")


def _mismatch(report: _Report) -> GeoclError:
    """A wrong type, or a value no member of a union accepts, or any other error type."""
    first, kind, where = report.first, report.kind, report.where
    # A value no member of a union accepts: each member's error comes with a tag in
    # its location. One with the right type but a bad value says most; else list them.
    group = [e for e in report.errors if _same_place(report, e["loc"])]
    if len(group) > 1:
        specific = next((e for e in group if e["type"] not in _TYPE_WORDS and e["type"] != "literal_error"), None)
        if specific is not None and specific is not first:
            return _map(specific, [specific], report.cls, report.source, report.overrides, report.namer.flags)
        words = list(dict.fromkeys(word for e in group for word in _expectations(e)))
        if words:
            return report.invalid(f": expected {_either(words)}")
    if kind in _TYPE_WORDS:
        tail = f": expected {_TYPE_WORDS[kind]}"
        section = model_fields(where.hint)
        if _TYPE_WORDS[kind] == "a mapping" and section:
            tail += f" (a section with keys {', '.join(section)})"
        return report.invalid(tail)
    return report.invalid(f": {_message(first)}")


#: Pydantic error type -> its formatter (any other type: :func:`_mismatch`).
_FORMATTERS: dict[str, typing.Callable[[_Report], GeoclError]] = {
    "extra_forbidden": _unknown_key,
    "missing": _missing,
    "union_tag_invalid": _union_tag,
    "union_tag_not_found": _union_tag,
    "literal_error": _bad_choice,
    "enum": _bad_choice,
    RELATION_ERROR: _relation,
    **dict.fromkeys(_RANGE_ERRORS, _out_of_range),
    **dict.fromkeys(("too_short", "too_long", "string_too_short", "string_too_long"), _bad_length),
}


def _length_rule(kind: str, ctx: Mapping[str, Any], where: Location) -> str:
    if kind.startswith("string"):
        least = ctx.get("min_length")
        if kind == "string_too_short":
            return "must not be empty" if least == 1 else f"must have at least {least} characters"
        return f"must have at most {ctx.get('max_length')} characters"
    actual = ctx.get("actual_length")
    if typing.get_origin(where.hint) is tuple:
        args = typing.get_args(where.hint)
        if args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"expected {len(args)} values, got {actual}"
    if kind == "too_short":
        least = ctx.get("min_length")
        return "must not be empty" if least == 1 else f"expected at least {least} values, got {actual}"
    return f"expected at most {ctx.get('max_length')} values, got {actual}"


def _same_place(report: _Report, loc: Sequence[Any]) -> bool:
    """Whether an error at ``loc`` is about the same key as the one reported."""
    return loc == report.first["loc"] or report.locate(loc).key == report.where.key


def _model_by_title(title: str) -> type | None:
    """The model class named ``title`` (pydantic's error title), if one is loaded.

    Ambiguous names (two loaded models with one name) give None; pass ``model`` then.
    """
    found: list[type] = []
    pending: list[type] = [BaseModel]
    seen: set[type] = set()
    while pending:
        subclasses: list[type] = pending.pop().__subclasses__()
        for sub in subclasses:
            if sub in seen:
                continue
            seen.add(sub)
            pending.append(sub)
            if sub.__name__ == title and not getattr(sub, "__pydantic_generic_metadata__", {}).get("origin"):
                found.append(sub)
    return found[0] if len(found) == 1 else None


def validated_section(key: str, model: type[BaseModel], value: Any) -> Any:
    """A section given as a model instance, a mapping or None (defaults), validated by ``model``.

    For Python callers that pass one section of a recipe (a method's ``optimizer``, the
    augmentation's parameters): errors name its dotted key (``optimizer.lr``), as they
    do in a recipe.
    """
    if isinstance(value, model):
        return value
    from pydantic import create_model

    fields: dict[str, Any] = {key: (model, ...)}
    holder = create_model(f"Section_{key}", **fields)
    data = value.model_dump() if isinstance(value, BaseModel) else dict(value or {})
    try:
        return getattr(holder.model_validate({key: data}), key)
    except ValidationError as exc:
        raise validation_error(exc, model=holder) from None
