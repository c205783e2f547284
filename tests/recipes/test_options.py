"""Command option models: ranges, choices, cross-field rules, and defaults equal to the library's."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from geocl.recipes.compare_options import CompareOptions
from geocl.recipes.errors import validation_error
from geocl.recipes.options import EvaluateCommand, FinetuneCommand, FinetuneOptions, PredictOptions, TileOptions

REQUIRED: dict[type[BaseModel], dict[str, Any]] = {
    TileOptions: {"scene": "scene.tif", "out": "tiles"},
    FinetuneCommand: {"tiles": "tiles", "out": "runs/ft"},
    EvaluateCommand: {"data": "cifar", "format": "cifar", "encoder": "resnet18"},
    PredictOptions: {"checkpoint": "best.ckpt", "scene": "scene.tif", "out": "pred.tif"},
    CompareOptions: {"recipes": ["a.yaml"]},
}


def _message(model: type[BaseModel], **values: Any) -> tuple[str | None, str]:
    with pytest.raises(ValidationError) as caught:
        model(**{**REQUIRED.get(model, {}), **values})
    error = validation_error(caught.value, model=model)
    return error.key, str(error)


@pytest.mark.parametrize(
    ("model", "values", "key", "expected"),
    [
        # int range
        (TileOptions, {"size": 0}, "size", "invalid value 0: must be at least 8"),
        (CompareOptions, {"seeds": 0}, "seeds", "must be at least 1"),
        (FinetuneCommand, {"seed": 2**32}, "seed", "must be in [0, 4294967296)"),
        (PredictOptions, {"window": 8}, "window", "must be at least 16"),
        (EvaluateCommand, {"k": 0}, "k", "must be at least 1"),
        # float range
        (TileOptions, {"max_nodata": 1.5}, "max_nodata", "invalid value 1.5: must be in [0, 1]"),
        (FinetuneCommand, {"label_fraction": 0}, "label_fraction", "must be in (0, 1]"),
        (FinetuneCommand, {"lr": -1}, "lr", "must be greater than 0"),
        (EvaluateCommand, {"temperature": 0}, "temperature", "must be greater than 0"),
        (CompareOptions, {"label_fractions": [0.1, 2]}, "label_fractions[1]", "invalid value 2: must be in (0, 1]"),
        # type
        (TileOptions, {"size": "big"}, "size", "invalid value 'big': expected an integer"),
        (TileOptions, {"size": 1.5}, "size", "expected an integer"),
        (CompareOptions, {"seeds": True}, "seeds", "invalid value true: expected an integer"),
        (FinetuneCommand, {"lr": True}, "lr", "expected a number"),
        # choice
        (FinetuneCommand, {"arch": "unt"}, "arch", "did you mean 'unet'? (choices: unet, deeplabv3plus, dpt, linear)"),
        (EvaluateCommand, {"format": "imagefolder"}, "format", "did you mean 'image_folder'?"),
        # bool
        (FinetuneCommand, {"freeze_encoder": "maybe"}, "freeze_encoder", "expected true or false"),
        (EvaluateCommand, {"momentum_encoder": "perhaps"}, "momentum_encoder", "expected true or false"),
        # list length
        (TileOptions, {"split": (0.5, 0.5)}, "split", "expected 3 values, got 2"),
        (CompareOptions, {"recipes": []}, "recipes", "must not be empty"),
        (CompareOptions, {"label_fractions": []}, "label_fractions", "must not be empty"),
        # unknown key
        (FinetuneCommand, {"epochs": 3}, "epochs", "unknown key; did you mean 'max_epochs'?"),
        (CompareOptions, {"finetune": {"batchsize": 2}}, "finetune.batchsize", "did you mean 'finetune.batch_size'?"),
        # what compare sets itself is no finetune or evaluate setting
        (CompareOptions, {"finetune": {"seed": 1}}, "finetune.seed", "unknown key"),
        (CompareOptions, {"evaluate": {"data": "x"}}, "evaluate.data", "unknown key"),
        # cross-field
        (PredictOptions, {"overlap": 256}, "overlap", "must be smaller than window (256 px), got 256"),
        (TileOptions, {"stride": 64, "split_block": 32}, "split_block", "must be at least stride (64 px), got 32"),
        (TileOptions, {"size": 8, "stride": 40}, "split_block", "defaults to 4 x size (32 px)"),
        (TileOptions, {"split": (0.5, 0.5, 0.5)}, "split", "fractions must sum to 1, got 1.5"),
        (TileOptions, {"split": (1.2, -0.1, -0.1)}, "split", "must not be negative"),
        (EvaluateCommand, {"checkpoint": "a.ckpt"}, "encoder", "give checkpoint or encoder, not both"),
        (EvaluateCommand, {"encoder": None}, "encoder", "give checkpoint (a pretrain checkpoint) or encoder"),
        # the dense linear probe's encoder stages: 1 (stem) to 5 (deepest), at least one, for arch linear
        (FinetuneCommand, {"arch": "linear", "probe_stages": [0]}, "probe_stages[0]", "value 0: must be in [1, 5]"),
        (FinetuneCommand, {"arch": "linear", "probe_stages": [4, 6]}, "probe_stages[1]", "invalid value 6: must be in"),
        (FinetuneCommand, {"arch": "linear", "probe_stages": []}, "probe_stages", "must not be empty"),
        (FinetuneCommand, {"probe_stages": [4, 5]}, "probe_stages", "applies to the dense linear probe only"),
        (FinetuneCommand, {"arch": "dpt", "probe_stages": [5]}, "probe_stages", "give arch linear, not dpt"),
    ],
)
def test_one_wrong_value_names_the_key_and_the_fix(
    model: type[BaseModel], values: dict[str, Any], key: str, expected: str
) -> None:
    found_key, message = _message(model, **values)
    assert found_key == key
    assert message.startswith(f"{key}: ") and expected in message, message


def test_defaults_resolve_and_derived_defaults_follow_the_size() -> None:
    options = TileOptions(scene="s.tif", out="t")
    assert (options.size, options.stride, options.split_block) == (256, 256, 1024)
    assert options.split == (0.7, 0.15, 0.15) and options.max_nodata == 0.2 and not options.quiet
    small = TileOptions(scene="s.tif", out="t", size=32)
    assert (small.stride, small.split_block) == (32, 128)
    assert options.scene == [Path("s.tif")]  # one scene given: a list of one (several run on Dask)


def test_defaults_equal_the_library_functions() -> None:
    """The models hold the defaults; the functions they call must agree (imports torch)."""
    from geocl.evaluation.evaluate import run_evaluation
    from geocl.finetune.downstream import TrainingBudget
    from geocl.finetune.inference import predict_with_checkpoint
    from geocl.finetune.train import run_finetune

    def defaults(function: Any) -> dict[str, Any]:
        parameters = inspect.signature(function).parameters
        found = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
        if "budget" in parameters:  # ``**budget: Unpack[BudgetArguments]``: the TrainingBudget's keywords
            found |= {item.name: item.default for item in dataclasses.fields(TrainingBudget)}
        return found

    for model, function in [
        (FinetuneCommand, run_finetune),
        (EvaluateCommand, run_evaluation),
        (PredictOptions, predict_with_checkpoint),
    ]:
        library = defaults(function)
        fields = model.model_fields
        names = set(fields) & set(library) - {"encoder"}  # evaluate: None = "give a checkpoint"
        assert names, model
        for name in names:
            assert fields[name].default == library[name], (model.__name__, name)
        # every field is a keyword of the function: model_dump() feeds it
        assert set(fields) <= set(inspect.signature(function).parameters) | set(library) | {"polygons"}, model.__name__
    assert FinetuneCommand.model_fields["encoder"].default == defaults(run_finetune)["encoder"]


def test_probe_stages_sorted_once_each_and_left_out_of_the_dump_when_unset() -> None:
    from geocl.finetune.linear_probe import ENCODER_STAGES
    from geocl.recipes.options import PROBE_STAGES

    assert PROBE_STAGES == ENCODER_STAGES  # repeated in the options (no torch there): they must agree
    options = FinetuneCommand(tiles="t", out="o", arch="linear", probe_stages=[5, 4, 5])
    assert options.probe_stages == [4, 5] and options.model_dump()["probe_stages"] == [4, 5]
    # unset (every stage) it is no keyword at all: the trainings without a probe take the dump as keywords
    assert FinetuneOptions().probe_stages is None and "probe_stages" not in FinetuneOptions().model_dump()
    assert set(FinetuneOptions().model_dump()) == set(FinetuneOptions.model_fields) - {"probe_stages"}
    # a section of the finetune settings alone may hold them (compare's protocol decides, see compare_options)
    assert FinetuneOptions(probe_stages=[3]).model_dump()["probe_stages"] == [3]
