"""Tests of the urban synthetic scene (geocl.data.synthetic.urban, make_scene(kind="urban"))."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from geocl.data.synthetic import (
    CLASS_NAMES,
    CLASS_NAMES_BY_KIND,
    DEFAULT_RESOLUTION,
    GENERATOR_VERSIONS,
    URBAN_CLASS_COLORS,
    URBAN_CLASS_NAMES,
    SceneFiles,
    make_scene,
)
from geocl.errors import GeoclError
from geocl.evaluation.spectral_baseline import nearest_class_mean_miou

IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE, CAR, CLUTTER = range(6)
NIR = 3
VIEW = 64 * 64  # pixels of the smallest view GraSS-style crops are compared with


@pytest.fixture(scope="module")
def urban(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """The urban scene at 1024 px (205 m at 0.2 m), seed 0."""
    return make_scene(tmp_path_factory.mktemp("urban"), kind="urban", size=1024, seed=0)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _component_areas(mask: np.ndarray) -> np.ndarray:
    """Areas in px of the 4-connected components of a boolean mask."""
    labels, count = ndimage.label(mask)
    return np.bincount(labels.ravel())[1:] if count else np.zeros(0, dtype=np.int64)


def test_legend_and_defaults() -> None:
    assert URBAN_CLASS_NAMES == ("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter")
    # the ISPRS 2D labelling colours
    assert URBAN_CLASS_COLORS == ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))
    assert CLASS_NAMES_BY_KIND == {"rural": CLASS_NAMES, "urban": URBAN_CLASS_NAMES}
    assert DEFAULT_RESOLUTION == {"rural": 1.0, "urban": 0.2}


def test_files_profiles_and_metadata(urban: SceneFiles) -> None:
    assert sorted(p.name for p in urban.image.parent.iterdir()) == ["image.tif", "mask.tif", "scene.json"]
    stamp = urban.metadata.stat().st_mtime_ns
    assert stamp >= urban.image.stat().st_mtime_ns and stamp >= urban.mask.stat().st_mtime_ns
    with rasterio.open(urban.image) as img, rasterio.open(urban.mask) as msk:
        assert img.count == 4 and img.dtypes == ("uint16",) * 4
        assert img.descriptions == ("blue", "green", "red", "nir")
        assert img.res == (0.2, 0.2) and (img.width, img.height) == (1024, 1024)
        assert img.nodata == 0 and img.block_shapes[0] == (256, 256)
        assert msk.dtypes == ("uint8",) and msk.nodata == 255 and msk.transform == img.transform
        assert msk.tags(1)["class_names"] == ",".join(URBAN_CLASS_NAMES)
        colormap = msk.colormap(1)
        assert [colormap[i][:3] for i in range(6)] == list(URBAN_CLASS_COLORS)
        image = img.read()
    mask = _read(urban.mask)[0]
    meta = json.loads(urban.metadata.read_text())
    assert meta["kind"] == "urban"
    assert meta["generator_version"] == GENERATOR_VERSIONS["urban"]
    assert meta["params"] == {"size": 1024, "seed": 0, "bands": 4, "resolution": 0.2, "epsg": 32633}
    assert meta["class_names"] == list(URBAN_CLASS_NAMES)
    counts = np.bincount(mask.ravel(), minlength=256)
    assert meta["class_pixels"] == {name: int(counts[i]) for i, name in enumerate(URBAN_CLASS_NAMES)}
    # an orthophoto tile: no nodata, every pixel >= 1 in every band
    assert meta["nodata_pixels"] == 0 and image.min() >= 1


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_scene(tmp_path / "a", kind="urban", size=512, seed=5)
    b = make_scene(tmp_path / "b", kind="urban", size=512, seed=5)
    c = make_scene(tmp_path / "c", kind="urban", size=512, seed=6)
    for name in ("image", "mask", "metadata"):
        assert _sha256(getattr(a, name)) == _sha256(getattr(b, name))
    assert not np.array_equal(_read(a.mask), _read(c.mask))


def test_every_class_occurs_in_isprs_like_shares(urban: SceneFiles) -> None:
    mask = _read(urban.mask)[0]
    shares = np.bincount(mask.ravel(), minlength=len(URBAN_CLASS_NAMES)) / mask.size
    assert set(np.unique(mask)) == set(range(len(URBAN_CLASS_NAMES)))
    # ISPRS Potsdam: about 1/3 impervious, 1/4 building, 1/5 low vegetation, 1/6 tree,
    # 2 % cars, 5 % clutter; here (seed 0): 0.34, 0.12, 0.24, 0.14, 0.027, 0.15
    assert shares.min() > 0.01
    assert 0.01 < shares[CAR] < 0.08
    assert shares.max() < 0.5


def test_many_objects_are_smaller_than_a_view(urban: SceneFiles) -> None:
    mask = _read(urban.mask)[0]
    cars = _component_areas(mask == CAR)
    # a car of 3.8-5.1 x 1.65-1.95 m at 0.2 m is 150-250 px (measured median 188)
    assert len(cars) > 100
    assert 120 < np.median(cars) < 300
    assert np.mean(cars < VIEW) > 0.99
    # tree crowns of 3-14 m (touching crowns of a grove merge), houses, garages, sheds
    assert np.median(_component_areas(mask == TREE)) < VIEW / 2  # measured 870
    assert np.median(_component_areas(mask == BUILDING)) < VIEW  # measured 2780
    assert np.median(_component_areas(mask == CLUTTER)) < VIEW / 8  # bins, containers, piles
    # and large objects too: the street network, lawns and parks span views
    assert _component_areas(mask == IMPERVIOUS).max() > 4 * 128 * 128
    assert _component_areas(mask == LOW_VEGETATION).max() > 128 * 128


def test_designed_spectral_overlap(urban: SceneFiles) -> None:
    """Building/impervious, tree/low vegetation and car/impervious overlap by design.

    Overlap figure: the distance between the two class mean spectra over the RMS
    within-class spread, |m_a - m_b| / sqrt((tr S_a + tr S_b) / 2) on the four bands.
    Designed to stay below 0.5: roofs are made of street materials, trees and lawns share
    one spectral distribution, cars take roof and asphalt colours, and shadows darken
    every class. Measured on this scene: 0.13 (building/impervious), 0.29 (tree/low
    vegetation), 0.24 (car/impervious); building and tree pairs at most 0.35 over seeds 0-9.
    """
    image = _read(urban.image).reshape(4, -1).astype(np.float64)
    mask = _read(urban.mask)[0].ravel()

    def overlap(a: int, b: int) -> float:
        xa, xb = image[:, mask == a], image[:, mask == b]
        spread = np.sqrt((xa.var(axis=1).sum() + xb.var(axis=1).sum()) / 2)
        return float(np.linalg.norm(xa.mean(axis=1) - xb.mean(axis=1)) / spread)

    assert overlap(BUILDING, IMPERVIOUS) < 0.5
    assert overlap(TREE, LOW_VEGETATION) < 0.5
    assert overlap(CAR, IMPERVIOUS) < 0.5


def test_shadows_darken_every_class(urban: SceneFiles) -> None:
    image = _read(urban.image)
    mask = _read(urban.mask)[0]
    for cls in (IMPERVIOUS, LOW_VEGETATION):
        nir = image[NIR][mask == cls].astype(np.float64)
        # cast shadows keep about 27 % of the NIR: a dark mode far below the sunlit
        # pixels (measured share 0.47 and 0.54 here; 0.27-0.54 over seeds 0-2)
        assert np.mean(nir < 0.45 * np.quantile(nir, 0.9)) > 0.2


def test_texture_not_spectrum_tells_trees_from_lawns(urban: SceneFiles) -> None:
    """Per pixel, no band separates tree from low vegetation; the crowns' texture does.

    Balanced accuracy (seed 0): best threshold on one band 0.60; threshold on the local
    (3 x 3) standard deviation of log NIR 0.79.
    """
    image = _read(urban.image).astype(np.float64)
    mask = _read(urban.mask)[0]
    tree, low = mask == TREE, mask == LOW_VEGETATION

    def balanced(values: np.ndarray, threshold: float) -> float:
        accuracy = 0.5 * (np.mean(values[tree] > threshold) + np.mean(values[low] <= threshold))
        return max(accuracy, 1 - accuracy)

    pixel = max(
        balanced(image[b], t) for b in range(4) for t in np.quantile(image[b][tree | low], np.linspace(0.02, 0.98, 49))
    )
    log_nir = np.log(image[NIR])
    mean = ndimage.uniform_filter(log_nir, 3)
    texture = np.sqrt(np.maximum(ndimage.uniform_filter(log_nir * log_nir, 3) - mean * mean, 0))
    threshold = 0.5 * (np.median(texture[tree]) + np.median(texture[low]))
    assert pixel < 0.7
    assert balanced(texture, threshold) > 0.75


def test_spectral_baseline_is_far_from_perfect(urban: SceneFiles) -> None:
    # measured: 0.196 here, 0.11-0.26 over seeds 0-9 at 1024 px, 0.15 at 4096 px
    # (the rural scene: 0.47)
    assert nearest_class_mean_miou(urban.image, urban.mask) < 0.35


def test_cache_and_kind_refusal(tmp_path: Path) -> None:
    files = make_scene(tmp_path, kind="urban", size=128, seed=1)
    stamps = {p: p.stat().st_mtime_ns for p in (files.image, files.mask, files.metadata)}
    time.sleep(0.02)
    assert make_scene(tmp_path, kind="urban", size=128, seed=1) == files
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a rural scene is not written over an urban one ...
    with pytest.raises(GeoclError) as info:
        make_scene(tmp_path, size=128, seed=1)
    assert info.value.path == str(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "urban" in message and "rural" in message and "overwrite" in message
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # ... unless asked to
    make_scene(tmp_path, size=128, seed=1, overwrite=True)
    meta = json.loads(files.metadata.read_text())
    assert meta["kind"] == "rural" and meta["class_names"] == list(CLASS_NAMES)
    with pytest.raises(GeoclError, match="holds a synthetic rural scene"):
        make_scene(tmp_path, kind="urban", size=128, seed=1)
    # other parameters of the same kind regenerate, as for the rural scene
    make_scene(tmp_path, size=128, seed=2)
    assert json.loads(files.metadata.read_text())["params"]["seed"] == 2


def test_a_scene_json_without_kind_is_rural(tmp_path: Path) -> None:
    files = make_scene(tmp_path, size=64, seed=0)
    meta = json.loads(files.metadata.read_text())
    del meta["kind"]  # as written before the urban kind existed
    files.metadata.write_text(json.dumps(meta))
    stamp = files.image.stat().st_mtime_ns
    assert make_scene(tmp_path, size=64, seed=0) == files
    assert files.image.stat().st_mtime_ns == stamp
    with pytest.raises(GeoclError, match="rural"):
        make_scene(tmp_path, kind="urban", size=64, seed=0)


@pytest.mark.parametrize("kind", ["city", "", None, 1])
def test_unknown_kind(tmp_path: Path, kind: object) -> None:
    with pytest.raises(GeoclError) as info:
        make_scene(tmp_path / "bad", kind=kind, size=64)  # type: ignore[arg-type]
    assert info.value.key == "kind" and "rural, urban" in str(info.value)
    assert not (tmp_path / "bad").exists()


def test_resolution_bands_and_small_sizes(tmp_path: Path) -> None:
    files = make_scene(tmp_path / "r", kind="urban", size=64, seed=0, bands=7, resolution=0.25)
    with rasterio.open(files.image) as src:
        assert src.res == (0.25, 0.25) and src.count == 7
        assert src.descriptions[-1] == "red_edge1"
    assert json.loads(files.metadata.read_text())["params"]["resolution"] == 0.25
    for size in (64, 100, 256):
        mask = _read(make_scene(tmp_path / f"s{size}", kind="urban", size=size, seed=3).mask)[0]
        assert mask.shape == (size, size) and mask.max() < len(URBAN_CLASS_NAMES)


def test_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    make_scene(tmp_path, kind="urban", size=1024, seed=2)
    assert time.perf_counter() - start < 10.0  # measured about 1 s on 2 cores


@pytest.mark.slow
def test_default_size_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    files = make_scene(tmp_path, kind="urban")
    assert time.perf_counter() - start < 60.0  # measured about 6 s on 2 cores
    with rasterio.open(files.image) as src:
        assert src.shape == (4096, 4096) and src.res == (0.2, 0.2)
    assert nearest_class_mean_miou(files.image, files.mask) < 0.35
