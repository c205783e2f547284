"""``geocl compare``'s options: nested settings as mappings; the probe's stages only where a probe reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from geocl.recipes.compare_options import CompareOptions
from geocl.recipes.errors import validation_error
from geocl.recipes.options import EvaluateOptions, FinetuneOptions


@pytest.mark.parametrize("protocol", ["finetune", "retrieval"])
def test_probe_stages_without_frozen_rows_are_refused_naming_them(protocol: str) -> None:
    # the finetune, natural-image and retrieval rows have no probe: the stages would be ignored
    with pytest.raises(ValidationError) as caught:
        CompareOptions(recipes=["a.yaml"], protocol=protocol, finetune={"probe_stages": [4, 5]})
    error = validation_error(caught.value, model=CompareOptions)
    assert error.key == "finetune.probe_stages"
    assert str(error) == (
        "finetune.probe_stages: applies to the frozen protocol alone (its dense linear probe): compare with "
        f"protocol frozen or both, not {protocol}"
    )
    # the command line names the flag
    error = validation_error(caught.value, model=CompareOptions, flags={"finetune.probe_stages": "--probe-stages"})
    assert error.key == "--probe-stages" and str(error).startswith("--probe-stages: applies to the frozen protocol")


@pytest.mark.parametrize("protocol", ["frozen", "both"])
def test_probe_stages_with_frozen_rows_are_kept_whatever_the_finetune_arch(protocol: str) -> None:
    # protocol both: finetune.arch is the finetune rows' decoder, the stages the frozen rows' probe
    options = CompareOptions(
        recipes=["a.yaml"], protocol=protocol, finetune={"arch": "deeplabv3plus", "probe_stages": [5, 4]}
    )
    assert options.finetune.probe_stages == [4, 5] and options.finetune.arch == "deeplabv3plus"
    assert CompareOptions(recipes=["a.yaml"]).finetune.probe_stages is None  # default: every stage


def test_a_stage_out_of_range_names_its_place() -> None:
    with pytest.raises(ValidationError) as caught:
        CompareOptions(recipes=["a.yaml"], protocol="frozen", finetune={"probe_stages": [0]})
    error = validation_error(caught.value, model=CompareOptions)
    assert error.key == "finetune.probe_stages[0]" and "invalid value 0: must be in [1, 5]" in str(error)


def test_compare_takes_nested_settings_as_mappings() -> None:
    options = CompareOptions(recipes=["a.yaml"], label_fractions=[0.2, 0.05, 0.2], finetune={"val_every": 5})
    assert options.label_fractions == [0.2, 0.05]  # repeats dropped, order kept
    assert options.finetune == FinetuneOptions(val_every=5) and options.evaluate == EvaluateOptions()
    assert (options.seeds, options.out, options.overrides) == (3, Path("runs/compare"), [])
    assert CompareOptions(recipes=["b.yaml"]).overrides is not options.overrides
