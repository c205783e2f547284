"""The trainings a method brings in place of a pretraining are declared in finetune by method name, not imported
by the method: FBA's rows get their training from the table, with every recipe key in one typed object."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import geocl.finetune.semi_supervised as semi_supervised
from geocl.errors import GeoclError
from geocl.evaluation.segmentation import method_training
from geocl.finetune.method_trainings import (
    METHOD_TRAININGS,
    declared_training,
    train_fba_on_tiles,
    train_fba_on_volumes,
)
from geocl.finetune.semi_supervised import FBAOptions
from geocl.methods import FBA, SimCLR, load_recipe, parameters_model

ROOT = Path(__file__).resolve().parents[2]


def test_fba_is_declared_for_the_evaluations_it_serves_and_no_other() -> None:
    assert METHOD_TRAININGS["fba"] == {"finetune": train_fba_on_tiles, "dice": train_fba_on_volumes}
    assert set(METHOD_TRAININGS["fba"]) == set(FBA.serves)
    assert declared_training("fba", "frozen", None) is None
    assert declared_training("simclr", "finetune", None) is None


def test_the_method_module_imports_nothing_of_finetune() -> None:
    # methods sit below finetune (pyproject.toml's layers): not even a function-level import
    tree = ast.parse((ROOT / "geocl" / "methods" / "fba.py").read_text(encoding="utf-8"))
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert imported and not [name for name in imported if name.startswith("geocl.finetune")]


def test_the_method_says_which_rows_it_trains_and_refuses_those_it_cannot(tiny_tiles: Path) -> None:
    recipe = load_recipe(ROOT / "recipes" / "fba.yaml", [f"data.tiles={tiny_tiles}", "out=runs/ignored"])
    assert FBA.trains_rows_of("finetune", recipe.method) is True
    # pretraining nothing, FBA's rows of an evaluation it does not serve would score a random encoder
    with pytest.raises(GeoclError, match="'fba' pretrains no encoder and has no training of its own for the 'frozen'"):
        FBA.trains_rows_of("frozen", recipe.method)
    # a method that pretrains serves nothing: the evaluation finetunes its encoder
    assert SimCLR.serves == () and SimCLR.trains_rows_of("finetune", parameters_model(SimCLR)()) is False


def test_a_served_evaluation_missing_from_the_table_is_a_bug_not_a_recipe_error(
    tiny_tiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = load_recipe(ROOT / "recipes" / "fba.yaml", [f"data.tiles={tiny_tiles}", "out=runs/ignored"])
    monkeypatch.delitem(METHOD_TRAININGS["fba"], "finetune")
    with pytest.raises(LookupError, match=r"bug: method 'fba' serves the 'finetune' evaluation") as error:
        method_training(recipe, "finetune")
    assert not isinstance(error.value, GeoclError)  # a traceback, not the CLI's one line


def test_every_recipe_key_but_the_initial_checkpoint_is_an_fba_option() -> None:
    keys = set(parameters_model(FBA).model_fields)
    options = {item.name for item in dataclasses.fields(FBAOptions)}
    assert keys - options == {"init_checkpoint"} and not options - keys


def test_a_row_gets_the_declared_training_bound_to_the_recipe_keys(
    tiny_tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(semi_supervised, "run_semi_supervised", lambda **arguments: seen.append(arguments))
    overrides = [f"data.tiles={tiny_tiles}", "out=runs/ignored", "method.patch_size=[16,16,16]", "method.decoders=1"]
    recipe = load_recipe(ROOT / "recipes" / "fba.yaml", overrides)
    training = method_training(recipe, "finetune")
    assert training is not None
    training(tiles=tiny_tiles, out=tmp_path, encoder_checkpoint=None, seed=3)
    ((arguments),) = seen
    assert arguments["fba"].decoders == 1 and arguments["fba"].patch_size == [16, 16, 16]
    assert arguments["seed"] == 3 and arguments["tiles"] == tiny_tiles and arguments["encoder_checkpoint"] is None
    # a recipe of a method that pretrains trains with the evaluation's own function
    assert method_training(SimpleNamespace(method=SimpleNamespace(name="simclr")), "finetune") is None
    # keys that cannot serve the evaluation are refused by the method, before any training
    bad = load_recipe(ROOT / "recipes" / "fba.yaml", [*overrides, "method.spatial_dims=3"])
    with pytest.raises(GeoclError, match=r"method\.spatial_dims: tiles are 2D"):
        method_training(bad, "finetune")


def test_fba_options_from_a_method_section_copy_its_sequences_as_lists() -> None:
    section = SimpleNamespace(decoders=1, decoder_channels=(8, 8), patch_size=(16, 16, 8), unknown_key=True)
    options = FBAOptions.from_method(section)
    assert options.decoders == 1 and options.decoder_channels == [8, 8] and options.patch_size == [16, 16, 8]
    assert options.labelled_bs == FBAOptions().labelled_bs  # a key the section lacks keeps its default


def test_the_ramp_ends_at_forty_percent_of_the_budget_unless_given() -> None:
    # released: 40 units of 150 iterations = 6000 of 15000
    assert FBAOptions().rampup(15000) == 150
    assert FBAOptions().rampup(2) == 1  # at least one step a unit
    assert FBAOptions(rampup_iterations=7).rampup(15000) == 7
