"""Command-line arguments derived from an option model, and the model back from them.

:func:`add_model_arguments` adds one argument a field: ``--kebab-case`` flags (or a
positional), ``nargs`` for lists and tuples, ``store_true`` for booleans that default to
false (``--x/--no-x`` for those that default to true), the choices of a ``Literal`` as the
metavar, and the help from the field's ``description`` plus its default, read from the
model. Nested models add their fields in an argument group, flags prefixed with the
field name (``--finetune-batch-size``) unless renamed.

argparse checks only the shape of the command line (which flags, how many values);
every value reaches the model as the string typed and :func:`options_from_args`
validates it there, so types, ranges, choices ("did you mean") and cross-field rules
have one implementation and one wording, with the flag as the user typed it. Flags
left out keep the model's default: argparse stores nothing for them.

This is the only module of the library that knows argparse.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from geocl.recipes.errors import validation_error

#: Namespace attribute holding the dotted field path -> flag (or metavar) of every
#: argument added by :func:`add_model_arguments` to the parser that produced it.
FLAGS_ATTRIBUTE = "_geocl_flags"


def _unwrap(hint: Any) -> Any:
    """The type without Annotated and Optional."""
    while True:
        if typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
            continue
        args = typing.get_args(hint)
        if type(None) in args and len(args) == 2:
            hint = next(arg for arg in args if arg is not type(None))
            continue
        return hint


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, BaseModel)


def _ordered(model: type[BaseModel]) -> list[str]:
    """Field names, those the model class declares itself first (a command's inputs
    before the settings it inherits)."""
    own = [name for name in model.model_fields if name in model.__dict__.get("__annotations__", {})]
    return own + [name for name in model.model_fields if name not in own]


def _default(info: FieldInfo) -> Any:
    return info.get_default(call_default_factory=True)


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(item) for item in value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _help(info: FieldInfo, required: bool) -> str:
    text = (info.description or "").replace("%", "%%")
    default = None if required else _default(info)
    if default is not None and default is not False and default != [] and not _is_model(type(default)):
        text += f" (default: {_shown(default).replace('%', '%%')})"
    return text


def _flag(path: str) -> str:
    return "--" + path.replace(".", "-").replace("_", "-")


def add_model_arguments(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    positional: Sequence[str] = (),
    exclude: Sequence[str] = (),
    flags: Mapping[str, str] | None = None,
    arguments: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Add one argument for each field of ``model`` to ``parser``.

    Args:
        parser: the (sub)command's parser.
        model: the option model.
        positional: fields given as positional arguments, in order (they come first;
            a list is ``nargs='+'``, an optional one ``nargs='?'``).
        exclude: dotted field paths to leave out (they keep their defaults).
        flags: dotted field path -> the flag to use instead of ``--kebab-case`` (or the
            metavar of a positional), e.g. ``{"max_epochs": "--epochs"}``.
        arguments: dotted field path -> further ``add_argument`` keywords, e.g.
            ``{"overrides": {"action": "append", "metavar": "KEY=VALUE"}}``.

    Returns:
        Dotted field path -> flag or metavar, for every argument added; also stored on
        the parser (see :data:`FLAGS_ATTRIBUTE`) for :func:`options_from_args`.
    """
    spec = _Spec(parser, tuple(exclude), dict(flags or {}), dict(arguments or {}))
    names = [*positional, *(name for name in _ordered(model) if name not in positional)]
    for name in names:
        spec.add(parser, model, name, "", positional=name in positional)
    known = dict(parser.get_default(FLAGS_ATTRIBUTE) or {})
    parser.set_defaults(**{FLAGS_ATTRIBUTE: {**known, **spec.added}})
    return spec.added


class _Spec:
    """What :func:`add_model_arguments` was asked for, and the arguments it added."""

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        exclude: tuple[str, ...],
        flags: dict[str, str],
        arguments: dict[str, Mapping[str, Any]],
    ) -> None:
        self.parser, self.exclude, self.flags, self.arguments = parser, exclude, flags, arguments
        self.added: dict[str, str] = {}

    def add(
        self,
        target: argparse.ArgumentParser | argparse._ArgumentGroup,
        model: type[BaseModel],
        name: str,
        prefix: str,
        *,
        positional: bool = False,
    ) -> None:
        """Add the argument of field ``name`` of ``model`` (at dotted ``prefix``) to ``target``."""
        path = f"{prefix}{name}"
        if path in self.exclude:
            return
        info = model.model_fields[name]
        hint = _unwrap(info.annotation)
        if _is_model(hint):  # a nested model: its fields in a group, flags prefixed
            group = self.parser.add_argument_group(info.description or name)
            for inner in _ordered(hint):
                self.add(group, hint, inner, f"{path}.")
            return
        required = info.is_required()
        kwargs: dict[str, Any] = {"help": _help(info, required), "default": argparse.SUPPRESS}
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        item = hint
        if origin in (list, tuple, Sequence):
            fixed = origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis)
            kwargs["nargs"] = len(args) if fixed else "+"
            item = _unwrap(args[0]) if args else str
        # choices shown, not enforced by argparse: the model refuses a bad one with the
        # closest choice
        choices = [str(value) for value in typing.get_args(item)] if typing.get_origin(item) is Literal else []
        shown_choices = "{" + ",".join(choices) + "}" if choices else None
        more = dict(self.arguments.get(path, {}))
        if positional:
            label = self.flags.get(path, name.upper())
            kwargs["metavar"] = shown_choices or label
            if not required:
                kwargs["nargs"] = "*" if "nargs" in kwargs else "?"
            target.add_argument(name, **{**kwargs, **more})
            self.added[path] = label
            return
        flag = self.flags.get(path, _flag(path))
        kwargs["dest"] = path
        if hint is bool:
            kwargs.pop("nargs", None)
            kwargs["action"] = argparse.BooleanOptionalAction if _default(info) is True else "store_true"
        else:
            kwargs["metavar"] = shown_choices or flag.lstrip("-").replace("-", "_").upper()
            if required:
                kwargs["required"] = True
        if more.get("action") == "append" and "nargs" not in more:
            kwargs.pop("nargs", None)  # one value an occurrence
        target.add_argument(flag, **{**kwargs, **more})
        self.added[path] = flag


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, info in model.model_fields.items():
        hint = _unwrap(info.annotation)
        if _is_model(hint):
            yield from _leaf_paths(hint, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def options_from_args(model: type[BaseModel], namespace: argparse.Namespace, **values: Any) -> Any:
    """The model validated from the parsed command line.

    Args:
        model: the model given to :func:`add_model_arguments`.
        namespace: what the parser returned; arguments the user left out are absent
            from it and take the model's defaults.
        values: further field values set by the caller (dotted paths as keywords are
            not supported; use nested dicts).

    Raises:
        GeoclError: the first invalid value, named by its flag.
    """
    given = vars(namespace)
    data: dict[str, Any] = {}
    for path in _leaf_paths(model):
        if path not in given:
            continue
        node = data
        *sections, last = path.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = given[path]
    data.update(values)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise validation_error(error, flags=given.get(FLAGS_ATTRIBUTE) or {}, model=model) from None
