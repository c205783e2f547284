"""The retrieval evaluation: its recipe per row, a held-out gallery apart from the train tiles, metrics recomputed
by hand, a real run read back, and `geocl compare` over it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch

from geocl.data.tile_dataset import TileDataset
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.errors import GeoclError
from geocl.evaluation import ALL_LABELS, get_evaluation
from geocl.evaluation.retrieval import (
    EXTRA_COLUMNS,
    METRIC_COLUMNS,
    TextRetrieval,
    evaluate_retrieval,
    gallery_dataset,
    retrieval_recipe,
)
from geocl.methods import load_recipe
from geocl.retrieval.captions import CaptionConfig, class_names_for, mask_attributes, template_captions
from geocl.retrieval.model import load_towers
from tests.conftest import write_recipe
from tests.retrieval.helpers import untrained_checkpoint, write_retrieval_recipe

SIMCLR = {"name": "simclr", "hidden_dim": 8, "output_dim": 4}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("eval"), tiny_tiles)


def _tiny_retrieval_recipe(folder: Path, tiles: Path) -> Path:
    return write_retrieval_recipe(folder, tiles)


def test_a_row_trains_the_retrieval_recipe_on_its_data_from_its_encoder(tmp_path: Path, tiny_tiles: Path) -> None:
    import geocl.methods  # noqa: F401

    compared = load_recipe(write_recipe(tmp_path / "simclr", tiny_tiles, SIMCLR, data={"view_size": 48}))
    dual = retrieval_recipe(
        compared,
        tmp_path / "simclr.ckpt",
        seed=2,
        out=tmp_path / "out",
        recipe=_tiny_retrieval_recipe(tmp_path, tiny_tiles),
        max_steps=5,
        batch_size=4,
        overrides=["method.embed_dim=8"],
    )
    assert dual.method.name == "retrieval" and dual.method.init_checkpoint == str(tmp_path / "simclr.ckpt")
    assert dual.method.embed_dim == 8 and dual.method.text_width == 16  # the retrieval recipe's, overridden
    assert dual.encoder.name == "test_resnet" and dual.data.view_size == 48 and dual.data.tiles == str(tiny_tiles)
    assert dual.data.batch_size == 4 and dual.data.split == "train"
    assert (dual.seed, dual.out, dual.trainer.max_steps, dual.trainer.max_epochs) == (2, str(tmp_path / "out"), 5, -1)
    random = retrieval_recipe(
        compared, None, seed=0, out=tmp_path / "r", recipe=_tiny_retrieval_recipe(tmp_path, tiny_tiles)
    )
    assert random.method.init_checkpoint == "" and random.trainer.max_steps == -1


def test_the_default_recipe_loads_and_a_wrong_one_is_named(tmp_path: Path, tiny_tiles: Path) -> None:
    import geocl.methods  # noqa: F401

    compared = load_recipe(write_recipe(tmp_path / "simclr", tiny_tiles, SIMCLR))
    default = retrieval_recipe(compared, None, seed=0, out=tmp_path / "out")
    assert default.method.embed_dim == 256 and default.augment.scale == (1.0, 1.0)
    with pytest.raises(GeoclError, match="not a retrieval one"):
        retrieval_recipe(compared, None, seed=0, out=tmp_path / "out", recipe=tmp_path / "simclr" / "recipe.yaml")
    with pytest.raises(GeoclError, match="no retrieval recipe here"):
        retrieval_recipe(compared, None, seed=0, out=tmp_path / "out", recipe=tmp_path / "missing.yaml")
    with pytest.raises(GeoclError, match="unknown retrieval options"):
        TextRetrieval({"epochs": 3})


def test_no_gallery_tile_overlaps_a_training_tile(scene512, tmp_path: Path) -> None:
    tiles = tmp_path / "overlapping"
    # stride < size: neighbouring tiles overlap, also across split blocks
    tile_scene(
        scene512.image,
        tiles,
        mask=scene512.mask,
        options=TilingOptions(size=64, stride=40, max_nodata=0.3, split_block=160, seed=2),
        progress=False,
    )
    gallery = gallery_dataset("tiles", tiles)
    train = TileDataset(tiles, "train", with_mask=False, progress=False)
    assert len(gallery) > 0 and set(gallery.index["split"].iloc[gallery.rows]) == {"test"}
    test_boxes = shapely.box(*gallery.bounds[gallery.rows].numpy().T)
    train_boxes = shapely.box(*train.bounds[train.rows].numpy().T)
    overlap = shapely.intersection(test_boxes[:, None], train_boxes[None, :])
    assert float(shapely.area(overlap).max()) == 0.0


def test_metrics_equal_a_computation_by_hand(checkpoint: Path, tiny_tiles: Path, tmp_path: Path) -> None:
    report = evaluate_retrieval(checkpoint, data_format="tiles", data=tiny_tiles, out=tmp_path)
    numbers = report.numbers
    # by hand: the test tiles' masks, captions and attributes; the checkpoint's towers; ranks with pessimistic ties
    towers = load_towers(checkpoint)
    test = TileDataset(tiny_tiles, "test", with_mask=True, progress=False)
    config = CaptionConfig(**towers.settings["captions"])
    names = class_names_for(tiny_tiles, test.metadata, config)
    attributes, queries = [], []
    for item in range(len(test)):
        atoms, present = mask_attributes(test[item]["mask"].numpy(), names, config)
        attributes.append(atoms)
        queries.append(template_captions(atoms, present, config)[0])
    images = towers.embed_images(torch.stack([test[item]["image"] for item in range(len(test))])).numpy()
    scores = towers.embed_texts([query.text for query in queries]).numpy() @ images.T
    attr_ranks, pair_ranks = [], []
    for q, query in enumerate(queries):
        relevant = [query.attributes <= have for have in attributes]
        best = max(scores[q][n] for n in range(len(test)) if relevant[n])
        attr_ranks.append(1 + sum(s > best or (s == best and not r) for s, r in zip(scores[q], relevant, strict=True)))
        pair_ranks.append(1 + int((scores[q] > scores[q][q]).sum()))
    assert numbers["gallery_size"] == numbers["queries"] == len(test) == 8
    assert numbers["attr_mrr"] == pytest.approx(np.mean([1 / r for r in attr_ranks]), abs=1e-6)
    assert numbers["pair_mrr"] == pytest.approx(np.mean([1 / r for r in pair_ranks]), abs=1e-6)
    assert numbers["attr_hit3"] == pytest.approx(np.mean([r <= 3 for r in attr_ranks]))
    assert numbers["pair_hit1"] == pytest.approx(np.mean([r <= 1 for r in pair_ranks]))
    for prefix in ("attr_", "pair_"):
        hit1, mrr = numbers[f"{prefix}hit1"], numbers[f"{prefix}mrr"]
        assert hit1 <= mrr <= (1 + hit1) / 2 + 1e-9
        assert numbers[f"{prefix}hit10"] == 1.0  # 8 tiles: every query hits within 10
    for k in (1, 3, 5, 10):  # attribute-level relevance holds the exact pair: never fewer hits
        assert numbers[f"attr_hit{k}"] >= numbers[f"pair_hit{k}"]
    assert numbers["random_pair_mrr"] == pytest.approx(np.mean([1 / r for r in range(1, 9)]))
    assert numbers["relation_queries"] > 0 and 0 <= numbers["swap_agreement"] <= 1
    assert numbers["negation_queries"] > 0 and 0 <= numbers["negation_violation"] <= 1
    record = json.loads(report.path.read_text())
    assert {*METRIC_COLUMNS, *EXTRA_COLUMNS} <= set(record) and record["split"] == "test"
    assert {probe["kind"] for probe in record["probes"]} == {"relation", "negation"}
    assert (tmp_path / "retrieval.png").stat().st_size > 0


def test_one_row_trains_and_is_read_back(tmp_path: Path, tiny_tiles: Path) -> None:
    import geocl.methods  # noqa: F401

    compared = load_recipe(write_recipe(tmp_path / "simclr", tiny_tiles, SIMCLR))
    evaluation = get_evaluation("retrieval").from_options(
        type("Options", (), {"retrieval": {"recipe": _tiny_retrieval_recipe(tmp_path, tiny_tiles), "max_steps": 2}})()
    )
    assert evaluation.subsets([0.01, 0.2]) == [ALL_LABELS]
    out = tmp_path / evaluation.run_folder("random-init", ALL_LABELS, 0)
    measured = evaluation.run(None, recipe=compared, subset=ALL_LABELS, seed=0, out=out)
    assert set(measured.metrics) == set(METRIC_COLUMNS) and all(math.isfinite(v) for v in measured.metrics.values())
    assert measured.extra["gallery_size"] == 8 and Path(measured.checkpoint).is_file()
    assert json.loads((out / "train" / "metrics.json").read_text())["global_step"] == 2
    again = evaluation.read_finished(out)
    assert again is not None and again.metrics == pytest.approx(measured.metrics)
    assert again.extra["relation_mrr"] == pytest.approx(measured.extra["relation_mrr"])


@pytest.mark.slow  # pretrains SimCLR, then trains and scores two dual encoders: about a minute on 2 cores
def test_compare_ranks_image_encoder_initialisations_by_retrieval(tmp_path: Path, tiny_tiles: Path) -> None:
    from geocl.experiments import run_compare
    from geocl.recipes.compare_options import CompareOptions

    simclr = write_recipe(tmp_path / "simclr", tiny_tiles, SIMCLR)
    evaluation = TextRetrieval({"recipe": _tiny_retrieval_recipe(tmp_path, tiny_tiles), "max_steps": 3})
    results = run_compare(
        CompareOptions(recipes=[simclr], seeds=2, out=tmp_path / "compare"), evaluation=evaluation, echo=None
    )
    assert results["recipe"].tolist() == ["simclr", "simclr", "random-init", "random-init"]
    assert (results["status"] == "ok").all() and results["attr_mrr"].between(0, 1).all()
    assert "MRR" in (tmp_path / "compare" / "results.md").read_text()


def test_the_progress_option_reaches_the_trainer_not_the_retrieval_recipe(tmp_path: Path, tiny_tiles: Path) -> None:
    from geocl.methods import load_recipe
    from geocl.training.pretrain import build_trainer

    quiet = TextRetrieval({"max_steps": 3, "progress": False})
    assert quiet.progress is False and quiet.options == {"max_steps": 3}
    assert TextRetrieval(None).progress is True
    recipe = load_recipe(write_recipe(tmp_path, tiny_tiles, SIMCLR))
    assert build_trainer(recipe, tmp_path / "run", [], progress=False).progress_bar_callback is None
    assert build_trainer(recipe, tmp_path / "run", []).progress_bar_callback is not None
