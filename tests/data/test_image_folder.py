"""Image-folder datasets: pixels, class folders, deterministic splits, resizing, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geocl.data.image_folder import ImageFolderDataset, stratified_split
from geocl.data.natural_toy import write_toy_image_folder
from geocl.errors import GeoclError


def test_image_folder_pixels_classes_and_deterministic_stratified_split(tmp_path: Path) -> None:
    root = write_toy_image_folder(tmp_path / "images", ["cat", "dog", "owl"], per_class=10, size=20, seed=3)
    train = ImageFolderDataset(root, "train", val_fraction=0.2, seed=0)
    val = ImageFolderDataset(root, "val", val_fraction=0.2, seed=0)
    assert train.classes == ["cat", "dog", "owl"] and len(train) == 24 and len(val) == 6
    assert np.bincount(val.labels).tolist() == [2, 2, 2]
    train_paths = {path for path, _ in train.samples}
    val_paths = {path for path, _ in val.samples}
    assert not train_paths & val_paths and len(train_paths | val_paths) == 30
    assert val.samples == ImageFolderDataset(root, "val", val_fraction=0.2, seed=0).samples
    assert val.samples != ImageFolderDataset(root, "val", val_fraction=0.2, seed=1).samples
    path, label = val.samples[0]
    stored = np.asarray(Image.open(path)).transpose(2, 0, 1)
    assert np.array_equal(val.raw(0), stored) and Path(path).parent.name == val.classes[label]
    assert val.metadata["band_stats"] == train.metadata["band_stats"]


def test_stratified_split_by_hand() -> None:
    labels = [0] * 10 + [1] * 3 + [2] * 1
    train, val = stratified_split(labels, 0.2, seed=0)
    # class 0: round(2.0) = 2 held out; class 1: round(0.6) = 1; class 2: a single image stays in train
    assert np.bincount(np.asarray(labels)[val], minlength=3).tolist() == [2, 1, 0]
    assert sorted(train.tolist() + val.tolist()) == list(range(14))


def test_train_and_val_subfolders_are_the_splits_and_image_size_resizes(tmp_path: Path) -> None:
    root = write_toy_image_folder(tmp_path / "split", 2, per_class=3, size=24, val_per_class=2)
    train = ImageFolderDataset(root, "train", image_size=16)
    val = ImageFolderDataset(root, "val", image_size=16)
    assert len(train) == 6 and len(val) == 4 and all("/val/" in path for path, _ in val.samples)
    assert val[0]["image"].shape == (3, 16, 16)
    with pytest.raises(GeoclError, match="test"):
        ImageFolderDataset(root, "test")


def test_bad_image_folders_and_images_are_named(tmp_path: Path) -> None:
    with pytest.raises(GeoclError) as caught:
        ImageFolderDataset(tmp_path / "missing")
    assert caught.value.path == str(tmp_path / "missing")
    root = write_toy_image_folder(tmp_path / "images", 2, per_class=3, size=16)
    bad = root / "class1" / "zz_broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(GeoclError) as caught:
        ImageFolderDataset(root, val_fraction=0.0)
    assert caught.value.path == str(bad)
    bad.unlink()
    Image.fromarray(np.zeros((20, 16, 3), dtype=np.uint8)).save(root / "class1" / "zz_tall.png")
    dataset = ImageFolderDataset(root, val_fraction=0.0, band_stats={"mean": [0, 0, 0], "std": [1, 1, 1]})
    with pytest.raises(GeoclError, match="data.image_size"):
        dataset[len(dataset) - 1]
