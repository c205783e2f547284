"""Where a pydantic validation error points in a model: the key in words, its declared type and rules.

A pydantic error's ``loc`` is the path to the value it rejects: field names, list and
tuple indices, dict keys and the tags pydantic inserts for union members.
:func:`locate` walks a model's fields along it and returns a :class:`Location`: the key
as a user writes it (``augment.scale[1]``; a discriminated union's tag is the selector's
value, so ``method.simclr.x`` becomes ``method.x ... for method 'simclr'``), the model
holding the last field, the declared type there and its ``Field(ge=..., le=...)``
constraints. :mod:`geocl.recipes.errors` puts them into words. The module imports only
pydantic.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic.fields import FieldInfo


@dataclass
class Location:
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


def model_fields(cls: Any) -> dict[str, FieldInfo] | None:
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


def literal_values(hint: Any) -> list[Any]:
    """The values of a Literal (or of the Literals of a union), else []."""
    hint, _, _ = _unwrap(hint)
    if typing.get_origin(hint) is Literal:
        return list(typing.get_args(hint))
    values: list[Any] = []
    for member in _union_members(hint):
        values.extend(literal_values(member))
    return values


def _member_for_tag(members: list[Any], tag: str, discriminator: str | None) -> Any:
    """The union member pydantic's ``loc`` tag names, or None."""
    for member in members:
        inner, _, _ = _unwrap(member)
        fields = model_fields(inner)
        if discriminator and fields and discriminator in fields:
            if tag in literal_values(fields[discriminator].annotation):
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


def locate(model: type, loc: Sequence[int | str]) -> Location:
    """Walk ``model``'s fields along ``loc``."""
    where = Location(hint=model)
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
        fields = model_fields(hint)
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


def bare_location(loc: Sequence[Any]) -> Location:
    """What ``loc`` points at without a model to walk: the key in words only."""
    where = Location()
    for segment in loc:
        if isinstance(segment, int) and where.parts:
            where.parts[-1] += f"[{segment}]"
        else:
            where.parts.append(str(segment))
            where.fields.append(str(segment))
    return where
