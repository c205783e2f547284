"""Row records: a recipe key the schema gained since a row was recorded does not make the row count as changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.experiments.records import differing_keys, encoder_identity, with_todays_defaults
from geocl.methods import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _settings(recipe: Any, *, random: bool = False) -> dict[str, Any]:
    # as row_settings records them: JSON data, keys sorted
    return json.loads(json.dumps({"encoder": encoder_identity(recipe, random=random), "seed": 1}, sort_keys=True))


def test_a_key_added_since_the_record_takes_its_default() -> None:
    today = _settings(load_recipe(RECIPES / "grass.yaml"))
    recorded = json.loads(json.dumps(today))
    del recorded["encoder"]["recipe"]["method"]["box_placement"]  # a row from before the key existed
    assert recorded != today
    assert with_todays_defaults(recorded) == today


def test_a_changed_value_still_counts_as_changed() -> None:
    today = _settings(load_recipe(RECIPES / "grass.yaml"))
    recorded = json.loads(json.dumps(today))
    recorded["encoder"]["recipe"]["method"]["threshold_ratio"] = 0.7
    del recorded["encoder"]["recipe"]["method"]["box_placement"]
    assert differing_keys(with_todays_defaults(recorded), today) == ["encoder.recipe.method.threshold_ratio"]
    # a non-default value of the new key is a change too
    recorded = json.loads(json.dumps(today))
    recorded["encoder"]["recipe"]["method"]["box_placement"] = "random"
    assert differing_keys(with_todays_defaults(recorded), today) == ["encoder.recipe.method.box_placement"]


def test_a_random_init_record_takes_todays_defaults_too() -> None:
    today = _settings(load_recipe(RECIPES / "simclr.yaml"), random=True)
    assert with_todays_defaults(today) == today
    recorded = json.loads(json.dumps(today))
    del recorded["encoder"]["random_init"]["data"]["slice_axis"]  # from before the key existed
    del recorded["encoder"]["random_init"]["encoder"]["weights"]
    assert with_todays_defaults(recorded) == today
    recorded["encoder"]["random_init"]["encoder"]["name"] = "resnet50"  # a change stays one
    assert differing_keys(with_todays_defaults(recorded), today) == ["encoder.random_init.encoder.name"]


def test_a_random_init_row_does_not_depend_on_how_pretraining_batches_are_shaped() -> None:
    recipe = load_recipe(RECIPES / "simclr.yaml")
    today = _settings(recipe, random=True)
    assert not {"batch_size", "num_workers"} & set(today["encoder"]["random_init"]["data"])
    # a row recorded before these keys were left out, by a first recipe with other batches
    recorded = json.loads(json.dumps(today))
    recorded["encoder"]["random_init"]["data"].update(batch_size=8, num_workers=0)
    assert with_todays_defaults(recorded) == today
    # the view size stays: retrieval trains the random-init row's dual encoder at it
    recorded["encoder"]["random_init"]["data"]["view_size"] = 128
    assert differing_keys(with_todays_defaults(recorded), today) == ["encoder.random_init.data.view_size"]
    recorded["encoder"]["random_init"]["data"]["view_size"] = today["encoder"]["random_init"]["data"]["view_size"]
    # what the rows are evaluated on still counts
    recorded["encoder"]["random_init"]["data"]["tiles"] = "elsewhere/tiles"
    assert differing_keys(with_todays_defaults(recorded), today) == ["encoder.random_init.data.tiles"]


def test_settings_without_a_valid_recipe_are_returned_as_recorded() -> None:
    random = _settings(load_recipe(RECIPES / "simclr.yaml"), random=True)
    random["encoder"]["random_init"]["data"]["batch_size"] = 0  # no longer valid
    assert with_todays_defaults(random) is random
    broken = _settings(load_recipe(RECIPES / "simclr.yaml"))
    broken["encoder"]["recipe"]["method"]["temprature"] = 0.1  # no longer a valid recipe
    assert with_todays_defaults(broken) is broken
