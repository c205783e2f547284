"""The finetune and frozen protocols' settings: the probe's stages belong to the frozen rows alone.

A comparison reuses a row only when the settings its ``row.json`` records are unchanged
(:mod:`geocl.experiments`): stages given are among the frozen rows' settings, stages left
unset are not (rows made before the option existed are reused), and the finetune rows
never record them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import geocl.evaluation.segmentation as segmentation
from geocl.errors import GeoclError
from geocl.evaluation import FrozenLinearProbe, SegmentationFinetune
from geocl.experiments import CompareOptions, run_compare
from geocl.recipes.options import FinetuneOptions
from tests.experiments.test_runner import Fakes, _recipe

#: What every row of the protocols recorded before ``probe_stages`` existed: the finetune options.
OPTIONS_BEFORE = set(FinetuneOptions.model_fields) - {"probe_stages", "progress"}


def test_stages_are_a_setting_of_the_frozen_rows_only_when_given() -> None:
    assert set(FrozenLinearProbe(FinetuneOptions()).settings()["options"]) == OPTIONS_BEFORE
    frozen = FrozenLinearProbe(FinetuneOptions(probe_stages=[5, 4]))
    assert frozen.settings()["options"]["probe_stages"] == [4, 5] and frozen.options["arch"] == "linear"
    assert FrozenLinearProbe({"probe_stages": (5, 4, 4)}).options["probe_stages"] == [4, 5]  # a mapping too
    # protocol both: the finetune rows get the same options, without the stages
    both = CompareOptions(recipes=["a.yaml"], protocol="both", finetune={"probe_stages": [4, 5]})
    finetune = SegmentationFinetune.from_options(both)
    assert set(finetune.settings()["options"]) == OPTIONS_BEFORE and "probe_stages" not in finetune.options
    assert FrozenLinearProbe.from_options(both).options["probe_stages"] == [4, 5]
    # rows that have no probe refuse the stages rather than ignore them
    with pytest.raises(GeoclError, match="frozen protocol .* not to the finetune rows") as caught:
        SegmentationFinetune(FinetuneOptions(probe_stages=[4, 5]))
    assert caught.value.key == "probe_stages"


def test_a_rerun_with_other_stages_redoes_the_frozen_rows_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    recipe = _recipe(folder, "a", "alpha")
    out = tmp_path / "cmp"

    def compare(stages: list[int] | None) -> tuple[Fakes, list[str]]:
        # the real evaluations (from_options and all), their training replaced by the fake
        fakes, printed = Fakes(out, failing="none"), []
        monkeypatch.setattr(segmentation, "default_finetune", lambda: fakes.finetune)
        finetune = {} if stages is None else {"probe_stages": stages}
        options = CompareOptions(
            recipes=[recipe], label_fractions=[0.5], seeds=1, out=out, protocol="both", finetune=finetune
        )
        run_compare(options, pretrain_fn=fakes.pretrain, echo=printed.append)
        return fakes, printed

    first, _ = compare(None)  # alpha and random init, each a finetune and a frozen row
    assert sorted((call["arch"], "probe_stages" in call) for call in first.finetuned) == [
        ("linear", False),
        ("linear", False),
        ("unet", False),
        ("unet", False),
    ]
    frozen_row = out / "frozen" / "alpha-f0.5-s0"
    assert "probe_stages" not in (frozen_row / "row.json").read_text()  # as recorded before the option existed

    again, _ = compare(None)  # no stages: every row reused
    assert again.finetuned == [] and again.pretrained == []

    deep, printed = compare([4, 5])  # the frozen rows redone with the deep stages, the finetune rows reused
    assert sorted((call["out"].parent.name, call["arch"], call["probe_stages"]) for call in deep.finetuned) == [
        ("frozen", "linear", [4, 5]),
        ("frozen", "linear", [4, 5]),
    ]
    assert (frozen_row.parent / "alpha-f0.5-s0.stale-1" / "metrics.json").exists()  # the old row moved aside
    assert not list((out / "finetune").glob("*.stale-*"))
    assert any("frozen probe_stages unset, now [4, 5]" in line and "stale-1" in line for line in printed), printed
    recorded = json.loads((frozen_row / "row.json").read_text())["settings"]["evaluation"]["options"]
    assert recorded["probe_stages"] == [4, 5]

    same, _ = compare([4, 5])  # the same stages: reused
    assert same.finetuned == []
    every, _ = compare(None)  # back to every stage: the deep-stage rows are not that
    assert len(every.finetuned) == 2 and all("probe_stages" not in call for call in every.finetuned)
