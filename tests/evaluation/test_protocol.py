"""The downstream protocol: registry, choice by data format, options, and a new evaluation through compare.

The toy evaluation below stands for a future one (Dice, hit@k): registered here, it
runs through ``geocl compare`` and the report with no change to either.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pandas as pd
import pydantic
import pytest
import yaml

from geocl.errors import GeoclError
from geocl.evaluation import (
    ALL_LABELS,
    Evaluation,
    KnnProbe,
    Measurement,
    SegmentationFinetune,
    Subset,
    evaluation_for,
    evaluation_names,
    get_evaluation,
    register_evaluation,
)
from geocl.evaluation.protocol import option_kwargs
from geocl.experiments import CompareOptions, results_columns, run_compare
from geocl.experiments.results import results_table
from geocl.recipes import register_method_config, save_recipe


@dataclass
class _StandInConfig:
    """Parameters of a stand-in method, so recipes load without importing geocl.methods."""

    temperature: float = 0.5


register_method_config("protocol-stand-in", _StandInConfig)


@register_evaluation
class ToyRetrieval(Evaluation):
    """Two scores per run: hit@1 = label fraction / 2 + 0.1 x seed, MRR = hit@1 + 0.2 (pretrained encoders +0.1)."""

    name: ClassVar[str] = "toy-retrieval"
    formats: ClassVar[tuple[str, ...]] = ("tiles",)
    metric_columns: ClassVar[tuple[str, ...]] = ("hit_at_1", "mrr")
    metric_labels: ClassVar[dict[str, str]] = {"hit_at_1": "hit@1", "mrr": "MRR"}
    caption: ClassVar[str] = "Toy retrieval scores,"
    folder: ClassVar[str] = "retrieval"
    runs: ClassVar[list[str]] = []

    def run(self, checkpoint: Path | None, *, recipe: Any, subset: Subset, seed: int, out: Path) -> Measurement:
        self.runs.append(out.name)
        if seed == 2:
            return Measurement({"hit_at_1": math.nan, "mrr": 0.5})
        hit = subset.label_fraction / 2 + 0.1 * seed + (0.1 if checkpoint is not None else 0.0)
        metrics = {"hit_at_1": hit, "mrr": hit + 0.2}
        out.mkdir(parents=True, exist_ok=True)
        (out / self.result_file).write_text(json.dumps({**metrics, "seconds": 3.0}))
        return Measurement(metrics)


def test_registry_by_name_and_by_data_format() -> None:
    assert {"finetune", "knn-probe", "toy-retrieval"} <= set(evaluation_names())
    assert get_evaluation("finetune") is SegmentationFinetune and get_evaluation("knn-probe") is KnnProbe
    with pytest.raises(GeoclError, match="choose from"):
        get_evaluation("no-such-evaluation")
    # the first evaluation registered for a format is its default: a later one does not take over
    assert evaluation_for("tiles") is SegmentationFinetune
    assert evaluation_for("cifar") is KnnProbe and evaluation_for("image_folder") is KnnProbe
    with pytest.raises(GeoclError, match="no evaluation"):
        evaluation_for("volumes")


def test_registering_refuses_incomplete_classes_and_taken_names() -> None:
    class Nameless(Evaluation):
        formats = ("tiles",)
        metric_columns = ("x",)

        def run(self, checkpoint: Path | None, **kwargs: Any) -> Measurement:
            raise NotImplementedError

    with pytest.raises(ValueError, match="must set name"):
        register_evaluation(Nameless)
    Taken = type("Taken", (Nameless,), {"name": "finetune"})
    with pytest.raises(ValueError, match="already"):
        register_evaluation(Taken)
    assert get_evaluation("finetune") is SegmentationFinetune


def test_subsets_folders_and_metric_columns() -> None:
    segmentation, natural = SegmentationFinetune(), KnnProbe()
    assert segmentation.subsets([0.01, 0.2]) == [Subset(0.01), Subset(0.2)]
    assert natural.subsets([0.01, 0.2]) == [ALL_LABELS] and ALL_LABELS.label_fraction == 1.0
    assert segmentation.run_folder("alpha", Subset(0.01), 2) == "finetune/alpha-f0.01-s2"
    assert natural.run_folder("alpha", ALL_LABELS, 2) == "evaluate/alpha-s2"
    assert SegmentationFinetune.primary() == "miou" and KnnProbe.primary() == "probe_top1"
    assert ToyRetrieval.primary() == "hit_at_1" and ToyRetrieval.label("mrr") == "MRR"
    assert results_columns(KnnProbe) == [
        "recipe",
        "method",
        "evaluation",
        "pretrain_steps",
        "label_fraction",
        "subset_seed",
        "seed",
        "knn_top1",
        "probe_top1",
        "status",
        "seconds",
        "checkpoint",
        "few_test_pixels",
    ]


def test_settings_hold_every_option_that_changes_a_result() -> None:
    from geocl.evaluation import FrozenLinearProbe
    from geocl.recipes.options import FinetuneOptions

    plain = SegmentationFinetune(FinetuneOptions()).settings()
    assert plain["name"] == "finetune" and plain["options"]["arch"] == "unet" and plain["options"]["lr"] == 0.001
    assert "progress" not in plain["options"]  # a progress bar changes no number
    assert SegmentationFinetune(FinetuneOptions(progress=False)).settings() == plain
    assert SegmentationFinetune(FinetuneOptions(lr=0.01)).settings() != plain
    assert SegmentationFinetune(FinetuneOptions(arch="deeplabv3plus", max_epochs=3)).settings() != plain
    assert FrozenLinearProbe(FinetuneOptions()).settings()["options"]["arch"] == "linear"
    assert KnnProbe({"k": 7}).settings() == {"name": "knn-probe", "options": {"k": 7}}
    json.dumps(plain)  # plain JSON, recorded beside every row


def test_a_subset_of_every_label_is_one_subset_whatever_its_seed(tmp_path: Path) -> None:
    import geopandas as gpd
    import shapely

    natural, segmentation = KnnProbe(), SegmentationFinetune()
    recipe = SimpleNamespace(data=SimpleNamespace(tiles=tmp_path / "tiles"))
    assert natural.subset_identity(Subset(1.0, 0), recipe) == natural.subset_identity(Subset(1.0, 5), recipe)
    assert natural.subset_identity(Subset(0.5, 0), recipe) != natural.subset_identity(Subset(0.5, 1), recipe)
    # a tile set of 12 train tiles: 0.95 keeps ceil(11.4) = 12 of them, every label too
    (tmp_path / "tiles").mkdir()
    rows = [{"split": "train" if i < 12 else "test", "geometry": shapely.box(i, 0, i + 1, 1)} for i in range(16)]
    gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32633").to_file(
        tmp_path / "tiles" / "tiles.gpkg", layer="tiles"
    )
    every = segmentation.subset_identity(Subset(1.0, 0), recipe)
    assert segmentation.subset_identity(Subset(0.95, 3), recipe) == every
    assert segmentation.subset_identity(Subset(0.9, 3), recipe) != every  # ceil(10.8) = 11 of 12


def test_options_become_keyword_arguments_without_the_ones_compare_sets() -> None:
    class Model(pydantic.BaseModel):
        max_epochs: int = 15
        seed: int = 0  # an argument the evaluation sets: its default is no clash

    assert option_kwargs(Model(max_epochs=3), ("seed",), "finetune", "finetune") == {"max_epochs": 3}
    assert option_kwargs({"k": 7}, ("seed",), "evaluation", "evaluate") == {"k": 7}
    assert option_kwargs(None, ("seed",), "finetune", "finetune") == {}
    with pytest.raises(GeoclError, match="must not set seed") as caught:
        option_kwargs(Model(seed=3), ("seed",), "finetune", "finetune")
    assert caught.value.key == "finetune"
    with pytest.raises(GeoclError, match="evaluation options must not set out"):
        KnnProbe({"out": "x"})


def test_segmentation_run_calls_the_finetune_function(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def finetune(**kwargs: Any) -> SimpleNamespace:
        calls.append(kwargs)
        return SimpleNamespace(miou=0.4, checkpoint=tmp_path / "best.ckpt")

    recipe = SimpleNamespace(  # any read-only attribute tree does
        data=SimpleNamespace(format="tiles", tiles=str(tmp_path / "tiles")), encoder=SimpleNamespace(name="resnet18")
    )
    evaluation = SegmentationFinetune({"max_epochs": 2}, finetune_fn=finetune)
    measured = evaluation.run(None, recipe=recipe, subset=Subset(0.1), seed=1, out=tmp_path / "run")
    assert measured == Measurement({"miou": 0.4}, checkpoint=str(tmp_path / "best.ckpt"))
    assert calls == [
        {
            "tiles": tmp_path / "tiles",
            "encoder_checkpoint": None,
            "encoder": "resnet18",
            "label_fraction": 0.1,
            "seed": 1,
            "out": tmp_path / "run",
            "max_epochs": 2,
        }
    ]


def test_read_finished_needs_every_metric(tmp_path: Path) -> None:
    assert KnnProbe().read_finished(tmp_path) is None
    (tmp_path / "evaluation.json").write_text(json.dumps({"knn_top1": 0.5}))
    assert KnnProbe().read_finished(tmp_path) is None
    (tmp_path / "evaluation.json").write_text(json.dumps({"knn_top1": 0.5, "probe_top1": 0.6, "checkpoint": "c"}))
    finished = KnnProbe().read_finished(tmp_path)
    assert finished is not None and finished.metrics == {"knn_top1": 0.5, "probe_top1": 0.6}
    assert finished.checkpoint == "c" and math.isnan(finished.seconds)


# ------------------------------------------------------------ a new evaluation through compare


def _recipe(folder: Path, stem: str, name: str) -> Path:
    recipe = {
        "name": name,
        "data": {"tiles": str(folder / "tiles"), "batch_size": 8, "num_workers": 0, "view_size": 32},
        "encoder": {"name": "resnet18"},
        "method": {"name": "protocol-stand-in"},
        "trainer": {"max_epochs": 1, "devices": 1, "accelerator": "cpu"},
    }
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _pretrain(recipe: Any, resume: bool = False) -> SimpleNamespace:
    out = Path(recipe.out)
    save_recipe(recipe, out / "config.yaml")
    checkpoint = out / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text(str(recipe.name))
    (out / "metrics.json").write_text("{}")
    return SimpleNamespace(checkpoint=checkpoint)


def test_a_registered_evaluation_runs_through_compare_and_the_report(tmp_path: Path) -> None:
    paths = [_recipe(tmp_path, "a", "alpha")]
    out = tmp_path / "cmp"
    options = CompareOptions(recipes=paths, label_fractions=[0.2, 0.6], seeds=3, out=out)
    ToyRetrieval.runs.clear()
    results = run_compare(options, pretrain_fn=_pretrain, evaluation="toy-retrieval", echo=None)

    assert list(results.columns) == results_columns(ToyRetrieval)
    assert list(pd.read_csv(out / "results.csv").columns) == list(results.columns)
    assert set(results["evaluation"]) == {"toy-retrieval"}
    assert len(ToyRetrieval.runs) == 12 and (out / "retrieval" / "alpha-f0.2-s0" / "metrics.json").exists()
    alpha = results[(results["recipe"] == "alpha") & (results["seed"] < 2)]
    assert alpha["hit_at_1"].tolist() == pytest.approx([0.2, 0.3, 0.4, 0.5])
    # a non-finite metric fails its row only
    failed = results[results["seed"] == 2]
    assert set(failed["status"]) == {"failed: hit@1 is nan"} and failed["mrr"].isna().all()

    md = (out / "results.md").read_text()
    lines = md.splitlines()
    lines = lines[lines.index("") + 1 :]  # under the line on the pretrainings
    assert lines[0] == "| recipe | hit@1 @ 0.2 | hit@1 @ 0.6 | MRR @ 0.2 | MRR @ 0.6 | n |"
    # alpha @ 0.2: hit@1 0.2, 0.3 (+ one failed) -> mean 0.25, sample std 0.0707
    assert lines[2] == (
        "| alpha | 0.250 ± 0.071 (1 failed) | 0.450 ± 0.071 (1 failed) "
        "| 0.450 ± 0.071 (1 failed) | 0.650 ± 0.071 (1 failed) | 2 |"
    )
    assert lines[3].startswith("| random-init | 0.150 ± 0.071 (1 failed) |")
    assert "Toy retrieval scores, mean ± sample std" in md and "Columns: metric @ label fraction." in md
    assert "- alpha: hit@1 is nan" in lines
    # the CSV alone names its evaluation: the report reads it back to the same table
    assert md.split("\n\n", 1)[1].startswith(results_table(pd.read_csv(out / "results.csv")))
    # and under it, the paired differences to the first recipe
    assert "paired difference to alpha" in md and "| random-init | 0.2 |" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"

    # finished runs are read back, not rerun; the failed ones run again
    ToyRetrieval.runs.clear()
    again = run_compare(options, pretrain_fn=_pretrain, evaluation="toy-retrieval", echo=None)
    assert sorted(ToyRetrieval.runs) == sorted(
        f"{name}-f{fraction}-s2" for name in ("alpha", "random-init") for fraction in (0.2, 0.6)
    )
    assert set(again.loc[again["seed"] < 2, "seconds"]) == {3.0}


def test_an_evaluation_that_does_not_read_the_recipes_format_is_refused(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "a", "alpha")
    options = CompareOptions(recipes=[recipe], label_fractions=[0.5], seeds=1, out=tmp_path / "c")
    with pytest.raises(GeoclError, match="not one evaluation 'knn-probe' reads"):
        run_compare(options, pretrain_fn=_pretrain, evaluation="knn-probe", echo=None)
    assert not (tmp_path / "c").exists()


def test_default_evaluations_are_declared_not_taken_from_the_import_order() -> None:
    import geocl.evaluation  # noqa: F401  (the built-in evaluations register)
    from geocl.evaluation.protocol import DEFAULT_EVALUATIONS, evaluation_for

    assert {fmt: evaluation_for(fmt).name for fmt in DEFAULT_EVALUATIONS} == {
        "tiles": "finetune",
        "image_folder": "knn-probe",
        "cifar": "knn-probe",
        "nifti": "dice",
    }
