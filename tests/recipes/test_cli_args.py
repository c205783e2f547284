"""Arguments derived from an option model: flags, nargs, booleans, choices, defaults in help, errors by flag."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from geocl.errors import GeoclError
from geocl.recipes.cli_args import FLAGS_ATTRIBUTE, add_model_arguments, options_from_args
from geocl.recipes.errors import field_relation


class ArgsInner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_epochs: int = Field(15, ge=1, description="epochs")
    batch_size: int = Field(8, ge=1, description="tiles per step")


class ArgsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    scene: Path = Field(description="the scene")
    out: Path = Field(description="output folder")
    tile_size: int = Field(256, ge=8, description="tile side in px (100% of it)")
    fractions: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="split fractions")
    labels: list[float] = Field([0.01, 0.05], description="label fractions")
    arch: Literal["unet", "dpt"] = Field("unet", description="decoder")
    freeze: bool = Field(False, description="freeze the encoder")
    resize: bool = Field(True, description="resize the images")
    note: str | None = Field(None, description="free text")
    overrides: list[str] = Field([], description="recipe overrides")
    window: int = Field(64, ge=16, description="window")
    overlap: int = Field(16, ge=0, description="overlap")
    inner: ArgsInner = Field(default_factory=ArgsInner, description="inner settings")

    @field_validator("overlap")
    @classmethod
    def _inside(cls, overlap: int, info: ValidationInfo) -> int:
        window = info.data.get("window")
        if window is not None and overlap >= window:
            raise field_relation(f"must be smaller than {{window}} ({window} px), got {overlap}", window="window")
        return overlap


def _parser(model: type[BaseModel] = ArgsOptions) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geocl test", exit_on_error=False)
    add_model_arguments(
        parser,
        model,
        positional=("scene",),
        flags={"inner.max_epochs": "--epochs", "overrides": "--override"},
        arguments={"overrides": {"action": "append", "metavar": "KEY=VALUE"}},
    )
    return parser


def _options(*argv: str) -> ArgsOptions:
    return options_from_args(ArgsOptions, _parser().parse_args(list(argv)))


def test_every_field_kind_becomes_an_argument() -> None:
    options = _options(
        "a.tif",
        "--out",
        "o",
        "--tile-size",
        "64",
        "--fractions",
        "0.5",
        "0.25",
        "0.25",
        "--labels",
        "0.1",
        "--arch",
        "dpt",
        "--freeze",
        "--no-resize",
        "--note",
        "hi",
        "--override",
        "a=1",
        "--override",
        "b=2",
        "--epochs",
        "3",
        "--inner-batch-size",
        "4",
    )
    assert options == ArgsOptions(
        scene=Path("a.tif"),
        out=Path("o"),
        tile_size=64,
        fractions=(0.5, 0.25, 0.25),
        labels=[0.1],
        arch="dpt",
        freeze=True,
        resize=False,
        note="hi",
        overrides=["a=1", "b=2"],
        inner=ArgsInner(max_epochs=3, batch_size=4),
    )


def test_flags_left_out_keep_the_model_defaults() -> None:
    namespace = _parser().parse_args(["a.tif", "--out", "o"])
    # argparse stores nothing for them: the model's default applies
    assert {key for key in vars(namespace) if key != FLAGS_ATTRIBUTE} == {"scene", "out"}
    assert options_from_args(ArgsOptions, namespace) == ArgsOptions(scene="a.tif", out="o")


def test_help_shows_descriptions_defaults_and_choices() -> None:
    text = _parser().format_help()
    assert "--tile-size TILE_SIZE" in text and "tile side in px (100% of it) (default: 256)" in text
    assert "--fractions FRACTIONS FRACTIONS FRACTIONS" in text and "(default: 0.7 0.15 0.15)" in text
    assert "--labels LABELS [LABELS ...]" in text and "(default: 0.01 0.05)" in text
    assert "--arch {unet,dpt}" in text and "--freeze " in text and "--resize, --no-resize" in text
    assert "--override KEY=VALUE" in text and "--epochs EPOCHS" in text and "--inner-batch-size" in text
    assert "inner settings:" in text  # the nested model's group
    assert "--out OUT" in text and "SCENE" in text


def test_help_default_follows_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    info = ArgsOptions.model_fields["tile_size"]
    monkeypatch.setattr(info, "default", 512)
    assert "(default: 512)" in _parser().format_help()


def test_bad_values_are_named_by_their_flag() -> None:
    cases = [
        (["--tile-size", "4"], "--tile-size: invalid value 4: must be at least 8"),
        (["--tile-size", "big"], "--tile-size: invalid value big: expected an integer"),
        (["--arch", "unt"], "--arch: invalid value unt; did you mean 'unet'? (choices: unet, dpt)"),
        (["--epochs", "0"], "--epochs: invalid value 0: must be at least 1"),
        (["--overlap", "64"], "--overlap: must be smaller than --window (64 px), got 64"),
    ]
    for extra, expected in cases:
        with pytest.raises(GeoclError) as caught:
            _options("a.tif", "--out", "o", *extra)
        assert str(caught.value) == expected
        assert caught.value.key == expected.split(":")[0]


def test_a_positional_is_named_by_its_metavar() -> None:
    class ArgsPositional(BaseModel):
        count: int = Field(ge=1, description="how many")

    parser = argparse.ArgumentParser()
    add_model_arguments(parser, ArgsPositional, positional=("count",))
    with pytest.raises(GeoclError, match=r"^COUNT: invalid value 0: must be at least 1$"):
        options_from_args(ArgsPositional, parser.parse_args(["0"]))


def test_excluded_fields_are_left_out() -> None:
    parser = argparse.ArgumentParser()
    add_model_arguments(parser, ArgsOptions, positional=("scene",), exclude=("note", "inner.batch_size"))
    text = parser.format_help()
    assert "--note" not in text and "--inner-batch-size" not in text and "--inner-max-epochs" in text
