"""TorchGeo benchmark datasets as tile sets: tiny copies in each dataset's on-disk layout, exported
and checked against hand counts, refused with one clear line, and run through one compare row each.

The copies follow what TorchGeo's classes read (torchgeo/datasets/{potsdam,vaihingen,loveda}.py):
Potsdam: ``4_Ortho_RGBIR/<area>_RGBIR.tif`` (4-band GeoTIFF, read by rasterio) with
``<area>_label.tif`` (RGB colour-coded) beside the folder; Vaihingen: ``top/<area>.tif`` (RGB,
read by PIL) with the colour-coded mask of the same name beside it; LoveDA:
``{Train,Val}/{Urban,Rural}/{images_png,masks_png}/<n>.png`` (masks: 0 no-data, 1-7 classes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from PIL import Image
from torchgeo.datasets import LoveDA, Potsdam2D, Vaihingen2D

from geocl.cli import main
from geocl.data.benchmarks import BENCHMARKS, ensure_recipe_tiles, export_benchmark
from geocl.data.benchmarks.export import _starts
from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset
from geocl.errors import GeoclError
from geocl.methods import load_recipe
from geocl.recipes.compare_options import CompareOptions
from geocl.recipes.options import FinetuneOptions
from geocl.recipes.schema import BENCHMARK_DATASETS

PAPER_RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "paper"


@dataclass
class Copy:
    """A tiny dataset copy: its root and, per image, the pixels, labels and official split written."""

    root: Path
    images: dict[str, np.ndarray] = field(default_factory=dict)  # id -> [C, H, W] uint8
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # id -> [H, W] class values
    official: dict[str, str] = field(default_factory=dict)  # id -> "train" | "test"


def _labels(height: int, width: int, seed: int, values: list[int]) -> np.ndarray:
    """16 px blocks of classes drawn from ``values``."""
    blocks = np.random.default_rng(seed).choice(values, size=(math.ceil(height / 16), math.ceil(width / 16)))
    return np.kron(blocks, np.ones((16, 16), dtype=int))[:height, :width]


def _pixels(bands: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(100 + seed).integers(0, 256, (bands, height, width), dtype=np.uint8)


def _colour_coded(labels: np.ndarray) -> np.ndarray:
    return np.asarray(Potsdam2D.colormap, dtype=np.uint8)[labels]


def write_potsdam(root: Path, train: int = 3, test: int = 1, side: int = 64) -> Copy:
    copy = Copy(root)
    names = [(name, "train") for name in Potsdam2D.splits["train"][:train]]
    names += [(name, "test") for name in Potsdam2D.splits["test"][:test]]
    (root / "4_Ortho_RGBIR").mkdir(parents=True)
    for seed, (name, split) in enumerate(names):
        pixels, labels = _pixels(4, side, side, seed), _labels(side, side, seed, list(range(6)))
        profile = {"driver": "GTiff", "width": side, "height": side, "count": 4, "dtype": "uint8"}
        with rasterio.open(root / "4_Ortho_RGBIR" / f"{name}_RGBIR.tif", "w", **profile) as dst:
            dst.write(pixels)
        Image.fromarray(_colour_coded(labels)).save(root / f"{name}_label.tif")
        copy.images[name], copy.labels[name], copy.official[name] = pixels, labels, split
    return copy


def write_vaihingen(root: Path, train: int = 3, test: int = 1, sides: dict[int, tuple[int, int]] | None = None) -> Copy:
    """Images 64 x 64 px unless ``sides`` gives (height, width) for an image's position."""
    copy = Copy(root)
    names = [(name.removesuffix(".tif"), "train") for name in Vaihingen2D.splits["train"][:train]]
    names += [(name.removesuffix(".tif"), "test") for name in Vaihingen2D.splits["test"][:test]]
    (root / "top").mkdir(parents=True)
    for seed, (name, split) in enumerate(names):
        height, width = (sides or {}).get(seed, (64, 64))
        pixels, labels = _pixels(3, height, width, seed), _labels(height, width, seed, list(range(6)))
        Image.fromarray(pixels.transpose(1, 2, 0)).save(root / "top" / f"{name}.tif")
        Image.fromarray(_colour_coded(labels)).save(root / f"{name}.tif")
        copy.images[name], copy.labels[name], copy.official[name] = pixels, labels, split
    return copy


def write_loveda(root: Path, side: int = 64) -> Copy:
    """Train: 2 urban + 1 rural image; Val (the test split here): 1 of each. Masks hold no-data (0) too."""
    copy = Copy(root)
    layout = [
        ("Train", "Urban", "1366"),
        ("Train", "Urban", "1367"),
        ("Train", "Rural", "0"),
        ("Val", "Urban", "3514"),
        ("Val", "Rural", "2522"),
    ]
    for seed, (split, scene, number) in enumerate(layout):
        pixels, labels = _pixels(3, side, side, seed), _labels(side, side, seed, list(range(8)))
        for kind, array in (("images_png", pixels.transpose(1, 2, 0)), ("masks_png", labels.astype(np.uint8))):
            folder = root / split / scene / kind
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / f"{number}.png")
        name = f"{scene.lower()}_{number}"
        copy.images[name], copy.labels[name] = pixels, labels
        copy.official[name] = "train" if split == "Train" else "test"
    return copy


WRITERS = {"potsdam": write_potsdam, "vaihingen": write_vaihingen, "loveda": write_loveda}


def test_registry_is_the_schema_s_list_of_torchgeo_classes() -> None:
    assert tuple(BENCHMARKS) == BENCHMARK_DATASETS
    assert BENCHMARKS["potsdam"].dataset_class is Potsdam2D
    assert BENCHMARKS["vaihingen"].dataset_class is Vaihingen2D
    assert {BENCHMARKS[name].dataset_class for name in ("loveda", "loveda-urban", "loveda-rural")} == {LoveDA}


def test_tile_origins_end_flush_with_the_image_edge() -> None:
    assert _starts(64, 32, 32) == [0, 32]
    assert _starts(80, 32, 32) == [0, 32, 48]
    assert _starts(32, 32, 32) == [0]
    assert _starts(100, 32, 16) == [0, 16, 32, 48, 64, 68]


@pytest.mark.parametrize("name", list(WRITERS))
def test_export_matches_a_hand_count(name: str, tmp_path: Path) -> None:
    copy = WRITERS[name](tmp_path / "data")
    out = tmp_path / "tiles"
    summary = export_benchmark(name, copy.root, out, size=32, val_fraction=0.34, seed=1, progress=False)

    benchmark = BENCHMARKS[name]
    metadata = json.loads((out / "tiles.json").read_text())
    index = gpd.read_file(out / "tiles.gpkg", layer="tiles")
    # classes: all of the dataset's, named as TorchGeo names them; LoveDA's 0 is no-data
    expected_values = list(range(1, 8)) if name == "loveda" else list(range(6))
    assert metadata["classes"] == summary.classes == expected_values
    names = LoveDA.classes[:7] if name == "loveda" else Potsdam2D.classes
    assert metadata["class_names"] == list(names)
    assert metadata["mask_nodata"] == (0 if name == "loveda" else None)
    # splits: whole images; official test kept, val one of the 3 official train images (round(0.34 * 3) = 1)
    split_of = index.groupby("image")["split"].unique()
    assert all(len(splits) == 1 for splits in split_of)
    split_of = split_of.map(lambda splits: splits[0]).to_dict()
    assert set(split_of) == set(copy.images)
    assert {image for image, split in split_of.items() if split == "test"} == {
        image for image, split in copy.official.items() if split == "test"
    }
    assert sorted(split_of.values()).count("val") == 1
    assert all(copy.official[image] == "train" for image, split in split_of.items() if split == "val")
    assert metadata["dataset"]["images"] == {
        split: sorted(image for image, s in split_of.items() if s == split) for split in ("train", "val", "test")
    }
    # 64 px images, 32 px tiles: 4 tiles an image
    counts = {split: 4 * list(split_of.values()).count(split) for split in ("train", "val", "test")}
    assert metadata["splits"] == summary.splits == counts
    assert len(index) == sum(counts.values()) == summary.written
    # labelled pixels per class and split, counted by hand on the labels written (no-data left out)
    for split in ("train", "val", "test"):
        stacked = np.concatenate([copy.labels[image].ravel() for image, s in split_of.items() if s == split])
        hand = {str(value): int((stacked == value).sum()) for value in expected_values}
        assert metadata["class_pixels"][split] == hand, split
    # band statistics: those of the train images' pixels
    train = np.concatenate(
        [copy.images[image].reshape(benchmark.bands, -1) for image, s in split_of.items() if s == "train"], axis=1
    )
    assert np.allclose(metadata["band_stats"]["mean"], train.mean(axis=1))
    assert np.allclose(metadata["band_stats"]["std"], train.std(axis=1))
    # a tile holds its window of the image, on the pixel grid its index row says
    row = index[(index["row"] == 1) & (index["col"] == 0)].iloc[0]
    with rasterio.open(out / row["path"]) as src:
        assert np.array_equal(src.read(), copy.images[row["image"]][:, 32:64, 0:32])
        assert src.crs is not None and "pixel grid" in src.crs.to_wkt()
        assert np.allclose(tuple(src.bounds), row.geometry.bounds)
        assert src.res == (benchmark.gsd, benchmark.gsd)
    with rasterio.open(out / row["mask_path"]) as src:
        assert np.array_equal(src.read(1), copy.labels[row["image"]][32:64, 0:32])
    assert not index.geometry.union_all().is_empty and index.geometry.area.sum() == pytest.approx(
        index.geometry.union_all().area
    )  # footprints never overlap
    # what training reads: class indices, no-data ignored
    dataset = TileDataset(out, "train", progress=False)
    mask = dataset[0]["mask"].numpy()
    raw = copy.labels[index.iloc[int(dataset.rows[0])]["image"]]
    assert set(np.unique(mask)) <= set(range(len(expected_values))) | {IGNORE_INDEX}
    if name == "loveda":
        assert (mask == IGNORE_INDEX).any() and (raw == 0).any()


def test_a_side_that_is_no_multiple_of_the_tile_gets_a_flush_last_tile(tmp_path: Path) -> None:
    copy = write_vaihingen(tmp_path / "data", train=2, test=1, sides={0: (64, 80)})
    out = tmp_path / "tiles"
    export_benchmark("vaihingen", copy.root, out, size=32, progress=False)

    index = gpd.read_file(out / "tiles.gpkg", layer="tiles")
    wide = next(image for image, pixels in copy.images.items() if pixels.shape[2] == 80)
    tiles = index[index["image"] == wide]
    assert len(tiles) == 2 * 3  # columns at 0, 32 and 48 px
    last = tiles[(tiles["row"] == 0) & (tiles["col"] == 2)].iloc[0]
    with rasterio.open(out / last["path"]) as src:
        assert np.array_equal(src.read(), copy.images[wide][:, 0:32, 48:80])


def test_rerun_reuses_the_folder_and_names_a_changed_option(tmp_path: Path) -> None:
    copy = write_potsdam(tmp_path / "data", train=2, test=1)
    out = tmp_path / "tiles"
    export_benchmark("potsdam", copy.root, out, size=32, progress=False)
    first = {path: path.read_bytes() for path in sorted(out.rglob("*.tif"))}
    (out / "images" / sorted(first)[0].name).unlink()  # an interrupted run left one tile out

    again = export_benchmark("potsdam", copy.root, out, size=32, progress=False)
    assert (again.written, again.reused) == (1, len(first) // 2 - 1)
    assert {path: path.read_bytes() for path in sorted(out.rglob("*.tif"))} == first

    with pytest.raises(GeoclError) as error:
        export_benchmark("potsdam", copy.root, out, size=16, progress=False)
    assert error.value.key == "size" and "was 32, now 16" in str(error.value)
    with pytest.raises(GeoclError) as error:
        export_benchmark("vaihingen", write_vaihingen(tmp_path / "other").root, out, size=32, progress=False)
    assert error.value.key == "dataset" and "was potsdam, now vaihingen" in str(error.value)
    assert {path: path.read_bytes() for path in sorted(out.rglob("*.tif"))} == first  # refused before any write


def test_a_bad_name_or_a_missing_dataset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(GeoclError) as error:
        export_benchmark("potsdm", tmp_path, tmp_path / "out")
    assert error.value.key == "dataset" and "did you mean 'potsdam'" in str(error.value)
    with pytest.raises(GeoclError) as error:
        export_benchmark("potsdam", tmp_path / "nowhere", tmp_path / "out")
    assert error.value.key == "root" and error.value.path == str(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    expected_layouts = {"potsdam": "4_Ortho_RGBIR", "vaihingen": "top/top_mosaic_09cm_area", "loveda": "Train/Urban"}
    for name, expected in expected_layouts.items():
        with pytest.raises(GeoclError) as error:
            export_benchmark(name, empty, tmp_path / "out", progress=False)
        assert error.value.path == str(empty) and expected in str(error.value).replace("{Train,Val}", "Train")
        assert "nothing is downloaded" in str(error.value)
    assert list(empty.iterdir()) == []  # nothing fetched or written there

    status = main(["tile", "--dataset", "vaihingen", "--root", str(empty), "--out", str(tmp_path / "cli"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"geocl tile: error: {empty}: no ISPRS Vaihingen here (given by --root)")
    assert main(["tile", "--dataset", "vaihingn", "--root", str(empty), "--out", str(tmp_path / "cli")]) == 2
    assert "did you mean 'vaihingen'?" in capsys.readouterr().err


def test_geocl_tile_takes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = write_loveda(tmp_path / "data")
    out = tmp_path / "tiles"
    argv = ["tile", "--dataset", "loveda-urban", "--root", str(copy.root), "--out", str(out), "--size", "32", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "12 tiles" in printed and (out / "tiles.png").exists()  # urban: 2 train + 1 val images, 4 tiles each
    assert set(gpd.read_file(out / "tiles.gpkg", layer="tiles")["image"]) == {"urban_1366", "urban_1367", "urban_3514"}


def _recipe(folder: Path, name: str, root: Path, tiles: Path, **data: object) -> Path:
    recipe = {
        "name": name,
        "out": str(folder / "run"),
        "seed": 0,
        "data": {
            "tiles": str(tiles),
            "dataset": name,
            "root": str(root),
            "batch_size": 2,
            "num_workers": 0,
            "view_size": 32,
            **data,
        },
        "encoder": {"name": "test_resnet"},
        "method": {"name": "simclr", "hidden_dim": 16, "output_dim": 8},
        "optimizer": {"name": "adamw", "lr": 0.001},
        "trainer": {"max_epochs": 1, "limit_train_batches": 1, "accelerator": "cpu", "log_every_n_steps": 1},
    }
    path = folder / f"{name}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_recipe_names_a_benchmark(tmp_path: Path) -> None:
    import geocl.methods  # noqa: F401  (registers simclr's recipe section)

    copy = write_loveda(tmp_path / "data", side=256)
    path = _recipe(tmp_path, "loveda", copy.root, tmp_path / "tiles")
    with pytest.raises(GeoclError) as error:
        load_recipe(path, ["data.dataset=lovedaa"])
    assert error.value.key == "data.dataset" and "did you mean 'loveda'?" in str(error.value)
    with pytest.raises(GeoclError) as error:
        load_recipe(path, ["data.root="])
    assert error.value.key == "data.root"

    recipe = load_recipe(path)
    assert ensure_recipe_tiles(recipe, progress=False) == tmp_path / "tiles"  # prepared on first use
    metadata = json.loads((tmp_path / "tiles" / "tiles.json").read_text())
    assert metadata["options"]["size"] == 256 and sum(metadata["splits"].values()) == 5
    stamp = (tmp_path / "tiles" / "tiles.json").stat().st_mtime_ns
    assert ensure_recipe_tiles(recipe, progress=False) == tmp_path / "tiles"
    assert (tmp_path / "tiles" / "tiles.json").stat().st_mtime_ns == stamp  # used as it is

    vaihingen = write_vaihingen(tmp_path / "v-data")
    other = load_recipe(_recipe(tmp_path / "v", "vaihingen", vaihingen.root, tmp_path / "tiles"))
    with pytest.raises(GeoclError) as error:
        ensure_recipe_tiles(other, progress=False)
    assert error.value.key == "data.tiles" and "holds the tiles of dataset loveda" in str(error.value)
    missing = load_recipe(_recipe(tmp_path / "m", "potsdam", tmp_path / "nowhere", tmp_path / "p-tiles"))
    with pytest.raises(GeoclError) as error:
        ensure_recipe_tiles(missing, progress=False)
    assert error.value.key == "data.root" and "(given by data.root)" in str(error.value)


def test_each_benchmark_runs_one_compare_row(tmp_path: Path) -> None:
    """One comparison of one recipe a benchmark (each finetuned on its own tiles): one row each."""
    from geocl.experiments import run_compare

    recipes = []
    for name, write in WRITERS.items():
        tiles = tmp_path / name / "tiles"
        if name == "loveda":  # prepared by compare on first use, at the default 256 px
            copy = write_loveda(tmp_path / name / "data", side=256)
        else:  # tiled beforehand at 32 px: compare uses the folder as it is
            copy = write(tmp_path / name / "data")
            export_benchmark(name, copy.root, tiles, size=32, progress=False)
        recipes.append(_recipe(tmp_path / name, name, copy.root, tiles))
    options = CompareOptions(
        recipes=recipes,
        label_fractions=[1.0],
        seeds=1,
        out=tmp_path / "compare",
        finetune=FinetuneOptions(
            max_epochs=1, steps_per_epoch=1, val_every=1, batch_size=2, crop=32, accelerator="cpu", progress=False
        ),
    )
    results = run_compare(options, echo=None)

    for name in WRITERS:
        row = results[results["recipe"] == name].iloc[0]
        assert row["status"] == "ok" and math.isfinite(row["miou"]) and 0.0 <= row["miou"] <= 1.0, name
        tiles = json.loads((tmp_path / name / "tiles" / "tiles.json").read_text())
        assert tiles["options"]["dataset"] == name and tiles["options"]["size"] == (256 if name == "loveda" else 32)


#: The paper recipes on the benchmarks (the folder also holds other methods' paper-scale recipes).
BENCHMARK_RECIPES = sorted(
    path for path in PAPER_RECIPES.glob("*-*.yaml") if path.stem.split("-")[0] in {"potsdam", "vaihingen", "loveda"}
)


@pytest.mark.parametrize("path", BENCHMARK_RECIPES, ids=lambda path: path.name)
def test_paper_benchmark_recipes_load_with_the_paper_s_settings(path: Path) -> None:
    import geocl.methods  # noqa: F401

    recipe = load_recipe(path)
    assert recipe.data.dataset in BENCHMARKS and recipe.data.root and recipe.data.tiles
    assert path.stem.startswith(recipe.data.dataset) and recipe.name == path.stem
    assert (recipe.encoder.name, recipe.data.view_size, recipe.data.batch_size) == ("resnet50", 224, 256)
    assert (recipe.method.name, recipe.method.temperature, recipe.trainer.max_epochs) == (
        path.stem.rsplit("-", 1)[1],
        0.5,
        350,
    )
