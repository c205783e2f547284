"""The one mapper of pydantic errors: dotted key or flag, the rule in words, "did you mean", the override."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from geocl.errors import GeoclError
from geocl.recipes.errors import field_relation, validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MapperData(_Strict):
    tiles: str
    split: Literal["train", "val", "test"] = "train"
    batch_size: int = Field(32, ge=1)
    scale: list[Annotated[float, Field(gt=0, le=1)]] = [0.2, 1.0]
    val_fraction: float = Field(0.2, ge=0, lt=1)


class MapperSimCLR(_Strict):
    name: Literal["simclr"]
    temperature: float = Field(0.1, gt=0)


class MapperGrass(_Strict):
    name: Literal["grass"]
    temperature: float = Field(0.5, gt=0)
    threshold_ratio: float = Field(0.5, ge=0, le=1)


class MapperTrainer(_Strict):
    devices: int | Literal["auto"] = 1
    max_epochs: int = 3
    window: int = Field(256, ge=16)
    overlap: int = Field(64, ge=0)

    @field_validator("max_epochs")
    @classmethod
    def _unlimited(cls, value: int) -> int:
        if value < 1 and value != -1:
            raise ValueError("must be at least 1, or -1 (no limit)")
        return value

    @field_validator("overlap")
    @classmethod
    def _inside(cls, overlap: int, info: ValidationInfo) -> int:
        window = info.data.get("window")
        if window is not None and overlap >= window:
            raise field_relation(f"must be smaller than {{window}} ({window} px), got {overlap}", window="window")
        return overlap


class MapperRecipe(_Strict):
    name: str
    seed: int = Field(0, ge=0, lt=2**32)
    data: MapperData
    method: Annotated[MapperSimCLR | MapperGrass, Field(discriminator="name")]
    trainer: MapperTrainer = MapperTrainer()
    augment: dict[str, Any] = {}
    stages: list[MapperTrainer] = []


GOOD: dict[str, Any] = {"name": "r", "data": {"tiles": "t"}, "method": {"name": "grass"}}


def _with(path: str, value: Any) -> dict[str, Any]:
    import copy

    data = copy.deepcopy(GOOD)
    node = data
    *sections, last = path.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    return data


def _error(data: dict[str, Any], **kwargs: Any) -> GeoclError:
    with pytest.raises(ValidationError) as caught:
        MapperRecipe.model_validate(data)
    return validation_error(caught.value, **kwargs)


def test_good_data_validates() -> None:
    recipe = MapperRecipe.model_validate(GOOD)
    assert isinstance(recipe.method, MapperGrass)


@pytest.mark.parametrize(
    ("path", "value", "key", "expected"),
    [
        ("data.batch_size", 0, "data.batch_size", "invalid value 0 for data.batch_size: must be at least 1"),
        ("data.batch_size", "abc", "data.batch_size", "invalid value 'abc' for data.batch_size: expected an integer"),
        ("data.val_fraction", 1, "data.val_fraction", "must be in [0, 1)"),
        ("seed", -1, "seed", "must be in [0, 4294967296)"),
        ("data.scale", [0.5, 2], "data.scale[1]", "invalid value 2 for data.scale[1]: must be in (0, 1]"),
        ("data", 5, "data", "expected a mapping (a section with keys tiles, split, batch_size, scale, val_fraction)"),
        (
            "method.temperature",
            "hot",
            "method.temperature",
            "invalid value 'hot' for method.temperature: expected a number",
        ),
        ("trainer.max_epochs", -2, "trainer.max_epochs", "must be at least 1, or -1 (no limit)"),
        (
            "stages",
            [{}, {"window": 4}],
            "stages[1].window",
            "invalid value 4 for stages[1].window: must be at least 16",
        ),
    ],
)
def test_wrong_values_name_the_dotted_key_and_the_rule(path: str, value: Any, key: str, expected: str) -> None:
    error = _error(_with(path, value), source="recipe.yaml")
    assert error.key == key and error.path == "recipe.yaml"
    assert str(error) == f"recipe.yaml: {expected}" or expected in str(error)


def test_without_a_file_the_key_leads_and_is_not_repeated() -> None:
    error = _error(_with("data.batch_size", 0))
    assert str(error) == "data.batch_size: invalid value 0: must be at least 1"


def test_bad_choice_suggests_the_closest() -> None:
    error = _error(_with("data.split", "trian"), source="r.yaml")
    assert error.key == "data.split"
    assert "invalid value 'trian' for data.split; did you mean 'train'? (choices: train, val, test)" in str(error)


@pytest.mark.parametrize(
    ("path", "suggestion"),
    [("data.batchsize", "data.batch_size"), ("method.treshold_ratio", "method.threshold_ratio"), ("sede", "seed")],
)
def test_unknown_key_did_you_mean(path: str, suggestion: str) -> None:
    error = _error(_with(path, 1), source="r.yaml")
    assert error.key == path
    assert f"unknown key '{path}'" in str(error) and f"; did you mean '{suggestion}'?" in str(error)


def test_unknown_key_with_nothing_close_lists_the_valid_keys() -> None:
    error = _error(_with("zzz", 1), source="r.yaml")
    assert "unknown key 'zzz'; valid keys: name, seed, data, method, trainer, augment, stages" in str(error)


def test_unknown_key_in_a_list_item() -> None:
    error = _error(_with("stages", [{"windw": 3}]), source="r.yaml")
    assert error.key == "stages[0].windw"
    assert "unknown key 'stages[0].windw'; did you mean 'stages[0].window'?" in str(error)


def test_unknown_key_of_a_discriminated_union_names_the_member() -> None:
    error = _error({**GOOD, "method": {"name": "simclr", "threshold_ratio": 0.3}}, source="r.yaml")
    assert error.key == "method.threshold_ratio"
    assert "unknown key 'method.threshold_ratio' for method 'simclr'" in str(error)


def test_unknown_discriminator_value_suggests_the_closest() -> None:
    error = _error({**GOOD, "method": {"name": "grss"}}, source="r.yaml")
    assert error.key == "method.name"
    assert "invalid value 'grss' for method.name; did you mean 'grass'? (choices: simclr, grass)" in str(error)
    missing = _error({**GOOD, "method": {"temperature": 1}}, source="r.yaml")
    assert missing.key == "method.name" and "missing value for method.name" in str(missing)


def test_missing_value() -> None:
    data = _with("data", {})
    error = _error(data, source="r.yaml")
    assert error.key == "data.tiles" and str(error).endswith("missing value for data.tiles")


def test_union_of_a_number_and_a_word_lists_both() -> None:
    error = _error(_with("trainer.devices", "two"), source="r.yaml")
    assert error.key == "trainer.devices"
    assert "expected an integer or 'auto'" in str(error)


def test_union_member_with_the_right_type_says_what_is_wrong_with_the_value() -> None:
    class MapperDevices(_Strict):
        devices: Annotated[int, Field(ge=1)] | Literal["auto", "all"] = 1

    with pytest.raises(ValidationError) as caught:
        MapperDevices(devices=0)
    assert str(validation_error(caught.value, model=MapperDevices)) == "devices: invalid value 0: must be at least 1"
    with pytest.raises(ValidationError) as caught:
        MapperDevices(devices="al")
    message = str(validation_error(caught.value, model=MapperDevices))
    assert message == "devices: invalid value 'al': expected an integer, 'auto' or 'all'"


def test_dict_keys_are_part_of_the_dotted_key() -> None:
    class MapperDict(_Strict):
        sizes: dict[str, Annotated[int, Field(ge=1)]] = {}

    with pytest.raises(ValidationError) as caught:
        MapperDict(sizes={"a": 1, "b": 0})
    error = validation_error(caught.value, model=MapperDict)
    assert error.key == "sizes.b" and "must be at least 1" in str(error)


def test_the_override_that_set_the_value_is_named() -> None:
    overrides = {"data.batch_size": "data.batch_size=0"}
    error = _error(_with("data.batch_size", 0), source="r.yaml", overrides=overrides)
    assert "(from override 'data.batch_size=0')" in str(error)
    # an override of a whole section counts for the keys below it, and the last one wins
    overrides = {"data": "data={batch_size: 1}", "data.batchsize": "data.batchsize=3"}
    error = _error(_with("data.batchsize", 3), source="r.yaml", overrides=overrides)
    assert "(from override 'data.batchsize=3'); did you mean 'data.batch_size'?" in str(error)


def test_cross_field_rule_names_the_other_field_as_the_user_knows_it() -> None:
    data = _with("trainer", {"window": 32, "overlap": 40})
    error = _error(data, source="r.yaml")
    assert error.key == "trainer.overlap"
    assert "trainer.overlap: must be smaller than trainer.window (32 px), got 40" in str(error)
    flags = {"trainer.window": "--window", "trainer.overlap": "--overlap"}
    error = _error(data, flags=flags)
    assert error.key == "--overlap"
    assert str(error) == "--overlap: must be smaller than --window (32 px), got 40"


def test_flags_name_the_option_as_typed() -> None:
    error = _error(_with("data.batch_size", "0"), flags={"data.batch_size": "--batch-size"})
    assert error.key == "--batch-size"
    assert str(error) == "--batch-size: invalid value 0: must be at least 1"


def test_a_validator_assertion_reads_as_the_rule() -> None:
    class MapperWhole(_Strict):
        a: int = 1

        @field_validator("a")
        @classmethod
        def _odd(cls, value: int) -> int:
            assert value % 2, "must be odd"
            return value

    with pytest.raises(ValidationError) as caught:
        MapperWhole(a=2)
    error = validation_error(caught.value, source=Path("x.yaml"))
    assert str(error) == "x.yaml: invalid value 2 for a: must be odd"


def test_a_model_validator_error_names_no_key() -> None:
    class MapperPair(_Strict):
        low: int = 0
        high: int = 1

        @model_validator(mode="after")
        def _ordered(self) -> MapperPair:
            if self.low > self.high:
                raise ValueError("low must not exceed high")
            return self

    with pytest.raises(ValidationError) as caught:
        MapperPair(low=3)
    error = validation_error(caught.value, source="x.yaml")
    assert error.key is None and str(error) == "x.yaml: low must not exceed high"
