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

The key is found by walking the model's fields along the error's ``loc``: nested
models, list and tuple indices, dict keys and the tags pydantic inserts for union
members (a discriminated union's tag is the selector's value: ``method.simclr.x`` is
reported as ``method.x ... for method 'simclr'``). The ranges of a field come from its
``Field(ge=..., le=...)`` constraints, so a message states the whole interval.

Cross-field rules raise :func:`field_relation` errors whose message names other
fields by placeholder, so they read ``must be smaller than --window`` on the command
line and ``must be smaller than window`` elsewhere. The module imports only pydantic.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from geocl.errors import GeoclError

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


# ------------------------------------------------------------------ walking models


@dataclass
class _Location:
    """What a pydantic ``loc`` points at.

    Attributes:
        parts: the key in words, one entry a level (``["data", "scale[1]"]``).
        fields: the field names on the way, without indices or union tags (the key of
            the ``flags`` mapping).
        parent: the model class holding the last field (or lacking the unknown key).
        hint: the declared type at the location (Annotated and Optional unwrapped).
        metadata: the constraints at the location (``annotated_types.Ge`` ...).
        context: words after an unknown key (`` for method 'simclr'``).
        discriminator: the selector field of a discriminated union at the location.
    """

    parts: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    parent: type | None = None
    hint: Any = None
    metadata: list[Any] = field(default_factory=list)
    context: str = ""
    discriminator: str | None = None

    @property
    def key(self) -> str:
        return ".".join(self.parts)


def _model_fields(cls: Any) -> dict[str, FieldInfo] | None:
    """The fields of a pydantic model or pydantic dataclass, else None."""
    if isinstance(cls, type):
        fields = getattr(cls, "__pydantic_fields__", None)
        if isinstance(fields, dict):
            return fields
    return None


def _unwrap(hint: Any) -> tuple[Any, list[Any], str | None]:
    """(type without Annotated/Optional, its constraints, a union discriminator)."""
    metadata: list[Any] = []
    discriminator: str | None = None
    while True:
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extra = typing.get_args(hint)
            for item in extra:
                if isinstance(item, FieldInfo):
                    metadata.extend(item.metadata)
                    if isinstance(item.discriminator, str):
                        discriminator = item.discriminator
                else:
                    metadata.append(item)
            continue
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            if len(args) == 1:
                hint = args[0]
                continue
        return hint, metadata, discriminator


def _union_members(hint: Any) -> list[Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return []


def _literal_values(hint: Any) -> list[Any]:
    """The values of a Literal (or of the Literals of a union), else []."""
    hint, _, _ = _unwrap(hint)
    if typing.get_origin(hint) is Literal:
        return list(typing.get_args(hint))
    values: list[Any] = []
    for member in _union_members(hint):
        values.extend(_literal_values(member))
    return values


def _member_for_tag(members: list[Any], tag: str, discriminator: str | None) -> Any:
    """The union member pydantic's ``loc`` tag names, or None."""
    for member in members:
        inner, _, _ = _unwrap(member)
        fields = _model_fields(inner)
        if discriminator and fields and discriminator in fields:
            if tag in _literal_values(fields[discriminator].annotation):
                return member
        if getattr(inner, "__name__", None) == tag:
            return member
    return None


def _item_type(hint: Any, index: int) -> Any:
    """The declared type of item ``index`` of a list or tuple type."""
    args = typing.get_args(hint)
    if not args:
        return None
    if typing.get_origin(hint) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return args[index] if index < len(args) else None
    return args[0]


def _locate(model: type, loc: Sequence[int | str]) -> _Location:
    """Walk ``model``'s fields along ``loc``."""
    where = _Location(hint=model)
    hint: Any = model
    tag_context = ""  # set by a discriminated union's tag, for the key right after it
    for segment in loc:
        hint, metadata, discriminator = _unwrap(hint)
        if isinstance(segment, int):
            if where.parts:
                where.parts[-1] += f"[{segment}]"
            else:
                where.parts.append(f"[{segment}]")
            hint = _item_type(hint, segment)
            continue
        fields = _model_fields(hint)
        if fields is not None:
            where.parent = hint
            where.parts.append(segment)
            where.fields.append(segment)
            info = fields.get(segment)
            # Annotated with the FieldInfo: its constraints (ge, le...) and discriminator
            hint = None if info is None else typing.Annotated[info.annotation, info]
            where.context, tag_context = tag_context, ""
            continue
        members = _union_members(hint)
        if members:
            # A tag pydantic put into the location: the selector's value of a
            # discriminated union, or the name of the member type otherwise.
            member = _member_for_tag(members, segment, discriminator)
            if discriminator and member is not None and where.parts:
                tag_context = f" for {where.parts[-1]} '{segment}'"
            hint = member
            continue
        if typing.get_origin(hint) in (dict, Mapping) or hint is dict:
            where.parts.append(str(segment))
            where.fields.append(str(segment))
            args = typing.get_args(hint)
            hint = args[1] if len(args) == 2 else None
            continue
        where.parts.append(str(segment))
        where.fields.append(str(segment))
        hint = None
    where.hint, where.metadata, where.discriminator = _unwrap(hint)
    return where


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


def _choices(where: _Location, ctx: Mapping[str, Any]) -> list[str]:
    values = _literal_values(where.hint)
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
        return [f"'{choice}'" for choice in _choices(_Location(), error.get("ctx") or {})]
    return []


def _either(words: Sequence[str]) -> str:
    """``a, b or c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


# ---------------------------------------------------------------------- mapper


class _Namer:
    """Shows a field path as its flag (command options) or its dotted key."""

    def __init__(self, flags: Mapping[str, str] | None) -> None:
        self.flags = dict(flags or {})

    def flag(self, where: _Location) -> str | None:
        return self.flags.get(".".join(where.fields)) if where.fields else None

    def name(self, where: _Location) -> str:
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


def _map(
    first: Mapping[str, Any],
    errors: Sequence[Mapping[str, Any]],
    cls: type | None,
    source: str | os.PathLike[str] | None,
    overrides: Mapping[str, str] | None,
    flags: Mapping[str, str] | None,
) -> GeoclError:
    """:func:`validation_error` of the error ``first`` among all ``errors``."""
    where = _locate(cls, first["loc"]) if cls is not None else _bare_location(first["loc"])
    namer = _Namer(flags)
    flag = namer.flag(where)
    key = namer.name(where)
    ctx: Mapping[str, Any] = first.get("ctx") or {}
    kind = first["type"]
    value = first.get("input")
    note = _override_note(overrides, where.key)
    named = source is not None  # the message body names the key (the file leads)
    shown = _show(value, raw=flag is not None)
    for_key = f" for {key}" if named else ""

    def done(body: str, at: str | None = key) -> GeoclError:
        return GeoclError(body, path=source, key=at or None)

    def invalid(tail: str, at: str | None = key) -> GeoclError:
        return done(f"invalid value {shown}{for_key}{note}{tail}", at)

    if not where.parts:  # a rule of the whole model (a model validator)
        return done(_message(first) if kind not in _TYPE_WORDS else f"expected {_TYPE_WORDS[kind]}", None)
    if kind == "extra_forbidden":
        head = f"unknown key '{key}'" if named or flag else "unknown key"
        siblings = list(_model_fields(where.parent) or {}) if where.parent is not None else []
        prefix = key[: -len(where.parts[-1])] if where.parts else ""
        match = _closest(where.parts[-1], siblings) if where.parts and siblings else None
        if match:
            tail = f"; did you mean '{namer.path('.'.join([*where.fields[:-1], match])) if flag else prefix + match}'?"
        elif siblings:
            tail = f"; valid keys: {', '.join(siblings)}"
        else:
            tail = ""
        return done(f"{head}{where.context}{note}{tail}")
    if kind == "missing" and first["loc"] and isinstance(first["loc"][-1], int):
        # a fixed-length tuple given too few items: pydantic reports the first one absent
        parent = _locate(cls, first["loc"][:-1]) if cls is not None else where
        length = len(typing.get_args(parent.hint)) or "more"
        got = len(value) if isinstance(value, Sequence) else "fewer"
        shown = _show(value, raw=flag is not None)
        key = namer.name(parent)
        for_key = f" for {key}" if named else ""
        return done(f"invalid value {shown}{for_key}{note}: expected {length} values, got {got}", key)
    if kind == "missing":
        return done(f"missing value for {key}{note}" if named else f"missing value{note}")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        selector = str(ctx.get("discriminator", "")).strip("'\"") or where.discriminator or ""
        at = f"{key}.{selector}" if selector else key
        if kind == "union_tag_not_found":
            return done(f"missing value for {at}{note}" if named else f"missing value{note}", at)
        tag = str(ctx.get("tag", ""))
        known = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        match = _closest(tag, known) if known else None
        tail = (f"; did you mean '{match}'?" if match else "") + (f" (choices: {', '.join(known)})" if known else "")
        return done(f"invalid value '{tag}'{f' for {at}' if named else ''}{note}{tail}", at)
    if kind in ("literal_error", "enum"):
        choices = _choices(where, ctx)
        match = _closest(str(value), choices) if choices else None
        tail = f"; did you mean '{match}'?" if match else ""
        return invalid(f"{tail} (choices: {', '.join(choices)})")
    if kind == RELATION_ERROR:
        prefix = where.fields[:-1]
        template = str(ctx.get("template", first.get("msg", "")))
        body = re.sub(
            r"\{(\w+)\}",
            lambda m: namer.path(".".join([*prefix, str(ctx[m.group(1)])])) if m.group(1) in ctx else m.group(0),
            template,
        )
        return done(f"{key}{note}: {body}" if named else f"{body}{note}")
    if kind in _RANGE_ERRORS:
        return invalid(f": {_bounds(where.metadata) or _range_from_context(kind, ctx)}")
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        return invalid(f": {_length_rule(kind, ctx, where)}")
    # A value no member of a union accepts: each member's error comes with a tag in
    # its location. One with the right type but a bad value says most; else list them.
    group = [e for e in errors if _same_place(cls, e["loc"], first["loc"], where)]
    if len(group) > 1:
        specific = next((e for e in group if e["type"] not in _TYPE_WORDS and e["type"] != "literal_error"), None)
        if specific is not None and specific is not first:
            return _map(specific, [specific], cls, source, overrides, flags)
        words = list(dict.fromkeys(word for e in group for word in _expectations(e)))
        if words:
            return invalid(f": expected {_either(words)}")
    if kind in _TYPE_WORDS:
        tail = f": expected {_TYPE_WORDS[kind]}"
        section = _model_fields(where.hint)
        if _TYPE_WORDS[kind] == "a mapping" and section:
            tail += f" (a section with keys {', '.join(section)})"
        return invalid(tail)
    return invalid(f": {_message(first)}")


def _length_rule(kind: str, ctx: Mapping[str, Any], where: _Location) -> str:
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


def _same_place(cls: type | None, loc: Sequence[Any], first: Sequence[Any], where: _Location) -> bool:
    if loc == first:
        return True
    other = _locate(cls, loc) if cls is not None else _bare_location(loc)
    return other.key == where.key


def _bare_location(loc: Sequence[Any]) -> _Location:
    where = _Location()
    for segment in loc:
        if isinstance(segment, int) and where.parts:
            where.parts[-1] += f"[{segment}]"
        else:
            where.parts.append(str(segment))
            where.fields.append(str(segment))
    return where


def _model_by_title(title: str) -> type | None:
    """The model class named ``title`` (pydantic's error title), if one is loaded.

    Ambiguous names (two loaded models with one name) give None; pass ``model`` then.
    """
    found: list[type] = []
    pending: list[type] = [BaseModel]
    seen: set[type] = set()
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
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

    holder = create_model(f"Section_{key}", **{key: (model, ...)})
    data = value.model_dump() if isinstance(value, BaseModel) else dict(value or {})
    try:
        return getattr(holder.model_validate({key: data}), key)
    except ValidationError as exc:
        raise validation_error(exc, model=holder) from None
