"""Template captions from masks (hand-made masks with known relations), user captions, class names, natural images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geocl.data.natural_dataset import NaturalDataset
from geocl.data.natural_toy import write_toy_image_folder
from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset
from geocl.data.tiler import TilingOptions, read_metadata, tile_scene
from geocl.errors import GeoclError
from geocl.retrieval.captions import (
    CaptionConfig,
    class_names_for,
    dataset_captions,
    mask_attributes,
    negation_caption,
    read_caption_csv,
    relation_caption,
    template_captions,
)
from tests.conftest import RasterWriter, coordinate_image

NAMES = ["water", "forest", "cropland", "roads", "grassland"]
WATER, FOREST, CROPLAND, ROADS, GRASSLAND = range(5)
CONFIG = CaptionConfig()


def _forest_with_road_and_cropland() -> np.ndarray:
    """20 x 20: forest 65 %, a road (cols 4-5, 10 %) through it, cropland (cols 15-19, 25 %) beside it."""
    mask = np.full((20, 20), FOREST)
    mask[:, 4:6] = ROADS
    mask[:, 15:] = CROPLAND
    return mask


def test_attributes_of_a_tile_with_a_road_through_forest_next_to_cropland() -> None:
    atoms, present = mask_attributes(_forest_with_road_and_cropland(), NAMES, CONFIG)
    assert present == ["forest", "cropland", "roads"]  # by share
    assert atoms == {
        ("has", "forest"),
        ("has", "cropland"),
        ("has", "roads"),
        ("mostly", "forest"),
        ("next_to", "cropland", "forest"),
        ("next_to", "forest", "roads"),
        ("crossing", "roads", "forest"),
        ("without", "water"),
        ("without", "grassland"),
    }


def test_full_caption_and_statements_say_exactly_their_attributes() -> None:
    atoms, present = mask_attributes(_forest_with_road_and_cropland(), NAMES, CONFIG)
    captions = template_captions(atoms, present, CONFIG)
    full = captions[0]
    assert (
        full.text
        == "mostly forest with cropland and roads, roads crossing forest, forest next to cropland, forest next to roads"
    )
    assert full.attributes == atoms - {("without", "water"), ("without", "grassland")}
    texts = {caption.text: caption.attributes for caption in captions}
    assert texts["roads crossing forest"] == {("crossing", "roads", "forest"), ("has", "roads"), ("has", "forest")}
    assert texts["mostly forest"] == {("has", "forest"), ("mostly", "forest")}
    assert texts["forest without water"] == {("has", "forest"), ("without", "water")}
    assert all(caption.attributes <= atoms for caption in captions)  # every caption is true of its tile
    without_negation = template_captions(atoms, present, CaptionConfig(negation=False))
    assert not any("without" in caption.text for caption in without_negation)


def test_next_to_is_symmetric_and_crossing_is_not_a_road_that_ends_or_clips_a_corner() -> None:
    assert relation_caption(("next_to", "cropland", "forest"), ["forest", "cropland"]).text == "forest next to cropland"
    assert (
        relation_caption(("next_to", "cropland", "forest")).attributes
        == relation_caption(("next_to", "cropland", "forest"), ["forest", "cropland"]).attributes
    )
    ending = np.full((20, 20), FOREST)
    ending[:10, 4:6] = ROADS  # a dead end inside the forest: one piece of forest
    assert ("crossing", "roads", "forest") not in mask_attributes(ending, NAMES, CONFIG)[0]
    corner = np.full((20, 20), FOREST)
    rows, cols = np.indices(corner.shape)
    corner[(rows + cols >= 2) & (rows + cols <= 3)] = ROADS  # cuts off a 3-pixel corner (< 2 % of the tile)
    corner[10:, 10] = ROADS  # and a dead end elsewhere: roads are present
    atoms = mask_attributes(corner, NAMES, CaptionConfig(min_share=0.02))[0]
    assert ("has", "roads") in atoms and ("crossing", "roads", "forest") not in atoms
    diagonal = np.full((20, 20), FOREST)
    for step in range(20):  # a one-pixel diagonal road cuts a 4-connected forest in two
        diagonal[step, step] = ROADS
    assert ("crossing", "roads", "forest") in mask_attributes(diagonal, NAMES, CaptionConfig(min_share=0.02))[0]


def test_next_to_needs_the_dilated_masks_to_touch() -> None:
    mask = np.full((20, 20), GRASSLAND)
    mask[:, :8] = FOREST
    mask[:, 11:] = WATER  # a 3 px strip of grassland between forest and water: 4 px apart
    assert ("next_to", "forest", "water") not in mask_attributes(mask, NAMES, CaptionConfig(touch_px=3))[0]
    assert ("next_to", "forest", "water") in mask_attributes(mask, NAMES, CaptionConfig(touch_px=4))[0]


def test_shares_count_only_labelled_pixels_and_small_classes_are_not_present() -> None:
    mask = np.full((20, 20), IGNORE_INDEX)
    mask[:10] = WATER
    mask[10:, :] = FOREST
    mask[19, :3] = CROPLAND  # 3 of 400 px: below 5 %
    atoms, present = mask_attributes(mask, NAMES, CONFIG)
    assert present == ["water", "forest"]
    assert ("has", "cropland") not in atoms and ("without", "cropland") not in atoms  # neither present nor absent
    mask[10:] = IGNORE_INDEX
    mask[10, :5] = FOREST  # 200 water + 5 forest labelled: water is "mostly"
    assert ("mostly", "water") in mask_attributes(mask, NAMES, CONFIG)[0]
    assert mask_attributes(np.full((4, 4), IGNORE_INDEX), NAMES, CONFIG) == (frozenset(), [])


def test_negation_caption() -> None:
    caption = negation_caption("forest", "bare_soil")
    assert caption.text == "forest without bare soil" and caption.attributes == {
        ("has", "forest"),
        ("without", "bare_soil"),
    }


def test_tile_set_captions_use_the_scene_class_names(tiny_tiles: Path) -> None:
    dataset = TileDataset(tiny_tiles, "train", with_mask=False, progress=False)
    captions = dataset_captions(dataset, CONFIG)
    metadata = read_metadata(tiny_tiles)
    from geocl.data.synthetic import CLASS_NAMES

    assert captions.class_names == [CLASS_NAMES[value] for value in metadata["classes"]]
    assert len(captions.captions) == len(dataset) and all(captions.captions)
    for found, attributes in zip(captions.captions, captions.attributes, strict=True):
        assert all(caption.attributes <= attributes for caption in found)
    with pytest.raises(GeoclError, match="method.captions.class_names"):
        class_names_for(tiny_tiles, metadata, CaptionConfig(class_names=["a"]))
    renamed = class_names_for(tiny_tiles, metadata, CaptionConfig(class_names=[f"c{i}" for i in metadata["classes"]]))
    assert renamed[0] == f"c{metadata['classes'][0]}"


@pytest.fixture
def unlabelled_tiles(tmp_path: Path, write_raster: RasterWriter) -> Path:
    scene = write_raster(tmp_path / "scene.tif", coordinate_image(64, 64, bands=4), nodata=0)
    out = tmp_path / "tiles"
    tile_scene(scene, out, options=TilingOptions(size=32, stride=32, split_block=32, seed=1), progress=False)
    return out


def test_a_tile_set_without_masks_needs_user_captions(unlabelled_tiles: Path, tmp_path: Path) -> None:
    dataset = TileDataset(unlabelled_tiles, None, with_mask=False, progress=False)
    with pytest.raises(GeoclError, match="--mask or give method.captions.csv"):
        dataset_captions(dataset, CONFIG)
    paths = [str(path) for path in dataset.index["path"]]
    csv = tmp_path / "captions.csv"
    csv.write_text(
        f"path,caption\n{paths[0]},River next to  FARMLAND\n{Path(paths[1]).name},a road\n"
        f'{(unlabelled_tiles / paths[0]).resolve()},"forest, dense"\n'
    )
    captions = dataset_captions(dataset, CaptionConfig(csv=str(csv)))
    assert [caption.text for caption in captions.captions[0]] == ["river next to farmland", "forest dense"]
    assert captions.captions[1][0].attributes == {("text", "a road")}
    assert captions.captions[2] == [] and captions.class_names == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("images/nope.tif,a caption\n", "no tile"),
        ("{first},\n", "expected 'tile path, caption'"),
        ("{first},!!!\n", "no words"),
        ("", "captions none of the tiles"),
    ],
)
def test_bad_caption_files_name_the_file_and_line(
    unlabelled_tiles: Path, tmp_path: Path, content: str, message: str
) -> None:
    dataset = TileDataset(unlabelled_tiles, None, with_mask=False, progress=False)
    paths = [str(path) for path in dataset.index["path"]]
    csv = tmp_path / "bad.csv"
    csv.write_text(content.format(first=paths[0]))
    with pytest.raises(GeoclError, match=message) as error:
        read_caption_csv(csv, paths, unlabelled_tiles)
    assert str(csv) in str(error.value)


def test_natural_images_are_captioned_with_their_class_name(tmp_path: Path) -> None:
    from geocl.data.image_folder import ImageFolderDataset

    root = write_toy_image_folder(tmp_path / "images", ["sea_lion", "tree"], per_class=3, size=16)
    dataset = ImageFolderDataset(root, "train", val_fraction=0.0)
    assert isinstance(dataset, NaturalDataset)
    captions = dataset_captions(dataset, CONFIG)
    texts = sorted({found[0].text for found in captions.captions})
    assert texts == ["sea lion", "tree"] and captions.class_names == ["sea_lion", "tree"]
    with pytest.raises(GeoclError, match="method.captions.csv"):
        dataset_captions(dataset, CaptionConfig(csv="x.csv"))


def test_user_captions_keep_their_unicode_words_as_queries_read_them(unlabelled_tiles: Path, tmp_path: Path) -> None:
    from geocl.retrieval.text import WordTokenizer

    dataset = TileDataset(unlabelled_tiles, None, with_mask=False, progress=False)
    paths = [str(path) for path in dataset.index["path"]]
    csv = tmp_path / "captions.csv"
    csv.write_text(f"{paths[0]},Forêt près de l'EAU 🌲\n{paths[1]},FORE\u0302T\n", encoding="utf-8")
    captions = dataset_captions(dataset, CaptionConfig(csv=str(csv)))
    assert captions.captions[0][0].text == "forêt près de l eau 🌲"
    assert captions.captions[1][0].attributes == {("text", "forêt")}  # the same word, however it was typed
    tokenizer = WordTokenizer.fit(captions.texts(), capacity=64)
    assert tokenizer.check("Forêt 🌲") == [tokenizer.ids["forêt"], tokenizer.ids["🌲"]]
