"""MONAI preprocessing and the 2D-slice and 3D-patch datasets of NIfTI volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geocl.data.medical.files import find_cases, write_nifti
from geocl.data.medical.nifti import NiftiSliceDataset, NiftiVolumeDataset, Preprocessing, load_case, open_slice_dataset
from geocl.data.medical.split import split_cases
from geocl.data.medical.synthetic import make_volumes
from geocl.data.tile_dataset import IGNORE_INDEX
from geocl.errors import GeoclError


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_volumes(tmp_path_factory.mktemp("medical"), cases=5, min_size=24, max_size=30, seed=2).root


def _case(root: Path, image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, name: str = "a") -> None:
    write_nifti(root / "images" / f"{name}.nii.gz", image, affine)
    if label is not None:
        write_nifti(root / "labels" / f"{name}.nii.gz", label, affine)


def test_resampling_to_a_spacing_and_normalising(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = (rng.normal(500, 50, size=(20, 20, 5))).astype(np.int16)
    label = np.zeros((20, 20, 5), np.uint8)
    label[5:15, 5:15, 1:4] = 1
    _case(tmp_path, image, label, np.diag([0.5, 0.5, 2.0, 1.0]))
    (case,) = find_cases(tmp_path)
    loaded = load_case(case, Preprocessing((1.0, 1.0, 1.0), "zscore"))
    # MONAI keeps the span between the first and last voxel centres: (n - 1) * old / new + 1 voxels
    assert loaded.image.shape == (10, 10, 9)
    assert loaded.image.dtype == np.float32 and loaded.label is not None and loaded.label.dtype == np.int64
    assert abs(loaded.image.mean()) < 1e-4 and loaded.image.std() == pytest.approx(1.0, abs=1e-3)
    assert set(np.unique(loaded.label)) == {0, 1}  # nearest: no fractional classes
    assert loaded.label.sum() == pytest.approx(5 * 5 * 6, rel=0.35)  # 5 x 5 x 6 mm of organ
    scaled = load_case(case, Preprocessing((1.0, 1.0, 1.0), "percentile"), with_label=False)
    assert scaled.label is None and scaled.image.min() >= 0.0 and scaled.image.max() <= 1.0


def test_a_label_map_with_fractional_values_is_refused(tmp_path: Path) -> None:
    _case(tmp_path, np.zeros((6, 6, 6), np.int16), np.full((6, 6, 6), 0.5, np.float32), np.eye(4))
    (case,) = find_cases(tmp_path)
    with pytest.raises(GeoclError, match=r"216 voxels that are no class number \(0.5\)") as error:
        load_case(case, Preprocessing((1.0, 1.0, 1.0)))
    assert str(error.value).startswith(str(case.label))
    negative = np.zeros((6, 6, 6), np.int16)
    negative[0, 0, :2] = -1
    _case(tmp_path / "negative", np.zeros((6, 6, 6), np.int16), negative, np.eye(4))
    with pytest.raises(GeoclError, match=r"2 voxels outside the class numbers 0..65535 \(-1\)"):
        load_case(find_cases(tmp_path / "negative")[0], Preprocessing((1.0, 1.0, 1.0)))
    _case(tmp_path / "image", np.zeros((6, 6, 6), np.int16), np.arange(216, dtype=np.int16).reshape(6, 6, 6), np.eye(4))
    with pytest.raises(GeoclError, match="216 distinct values.*is it an image"):
        load_case(find_cases(tmp_path / "image")[0], Preprocessing((1.0, 1.0, 1.0)))
    with pytest.raises(GeoclError, match="three positive sizes"):
        Preprocessing((1.0, 0.0, 1.0))


def test_sparse_class_numbers_are_classes_as_in_tile_masks(tmp_path: Path) -> None:
    # {0, 2, 7} are three classes (not eight), {0, 255} two: masks hold their positions, as TileDataset's
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:4] = 2
    label[5:7] = 7
    _case(tmp_path, np.ones((8, 8, 4), np.int16), label, np.eye(4))
    dataset = NiftiSliceDataset(find_cases(tmp_path), Preprocessing((1.0, 1.0, 1.0)), with_mask=True, image_size=8)
    assert dataset.classes == [0, 2, 7]
    assert set(np.unique(dataset[0]["mask"].numpy())) == {0, 1, 2}
    with pytest.raises(GeoclError, match=r"label map holds class 7, which is none of the model's classes \(0, 2\)"):
        NiftiSliceDataset(find_cases(tmp_path), Preprocessing((1.0, 1.0, 1.0)), with_mask=True, classes=[0, 2])
    patches = NiftiVolumeDataset(find_cases(tmp_path), Preprocessing((1.0, 1.0, 1.0)), (8, 8, 4))
    assert patches.classes == [0, 2, 7] and patches[0]["mask"].max() == 2


def test_slices_follow_the_tile_contract(volumes: Path) -> None:
    cases = find_cases(volumes)
    train = split_cases(cases, volumes).train
    preprocessing = Preprocessing((1.0, 1.0, 1.5))
    dataset = NiftiSliceDataset(train, preprocessing, with_mask=True, multiple=32)
    assert dataset.image_size % 32 == 0 and dataset.band_count == 1 and dataset.classes == [0, 1]
    assert dataset.metadata["band_stats"] == {"mean": [0.0], "std": [1.0]}
    assert len(dataset) == sum(volume.image.shape[2] for volume in dataset.volumes)
    sample = dataset[len(dataset) // 2]
    assert (
        sample["image"].shape == (1, dataset.image_size, dataset.image_size) and sample["image"].dtype == torch.float32
    )
    assert sample["mask"].shape == sample["image"].shape[1:] and sample["mask"].dtype == torch.long
    volume = next(v for v in dataset.volumes if v.case.id == sample["case"])
    height, width = volume.image.shape[:2]
    # the slice sits centred in the padded square; the padding is ignored by losses and metrics
    top, left = (dataset.image_size - height) // 2, (dataset.image_size - width) // 2
    inside = sample["image"][0, top : top + height, left : left + width].numpy()
    assert np.array_equal(inside, volume.image[:, :, sample["slice"]])
    padding = torch.ones_like(sample["mask"], dtype=torch.bool)
    padding[top : top + height, left : left + width] = False
    assert (sample["mask"][padding] == IGNORE_INDEX).all() and (sample["image"][0][padding] == 0).all()
    flags = [bool((dataset[i]["mask"] > 0).any()) for i in range(len(dataset))]
    assert flags == list(dataset.has_foreground) and any(flags) and not all(flags)


def test_slices_of_a_volume_stored_in_another_orientation_are_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 1000, size=(12, 10, 6)).astype(np.int16)
    _case(tmp_path / "ras", image, None, np.diag([1.0, 1.0, 2.0, 1.0]))
    # the same voxels stored L-P-S and with the axes permuted (S, L, P): the world is unchanged
    lps = np.array([[-1.0, 0, 0, 11], [0, -1.0, 0, 9], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    _case(tmp_path / "lps", image[::-1, ::-1, :], None, lps)
    permuted = np.array([[0, -1.0, 0, 11], [0, 0, -1.0, 9], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    _case(tmp_path / "perm", np.transpose(image[::-1, ::-1, :], (2, 0, 1)), None, permuted)
    preprocessing = Preprocessing((1.0, 1.0, 2.0))
    reference = NiftiSliceDataset(find_cases(tmp_path / "ras"), preprocessing)
    for stored in ("lps", "perm"):
        other = NiftiSliceDataset(find_cases(tmp_path / stored), preprocessing)
        assert len(other) == len(reference) == 6
        for item in range(len(reference)):
            assert torch.allclose(other[item]["image"], reference[item]["image"], atol=1e-5)


def test_open_slice_dataset_takes_the_split_s_cases(volumes: Path) -> None:
    splits = split_cases(find_cases(volumes), volumes, val_fraction=0.2)
    for split in ("train", "val", "test"):
        dataset = open_slice_dataset(volumes, split, val_fraction=0.2)
        assert {sample_case for sample_case in (dataset[i]["case"] for i in range(len(dataset)))} == {
            case.id for case in splits.of(split)
        }
    with pytest.raises(GeoclError, match="no val cases"):
        open_slice_dataset(volumes, "val", val_fraction=0.0)


def test_patches_are_drawn_toward_the_foreground(volumes: Path) -> None:
    cases = find_cases(volumes)
    preprocessing = Preprocessing((1.0, 1.0, 1.5))
    always = NiftiVolumeDataset(cases, preprocessing, (12, 12, 8), foreground_fraction=1.0, samples_per_case=4, seed=0)
    patches = [always[i] for i in range(len(always))]
    assert all(p["image"].shape == (1, 12, 12, 8) and p["mask"].shape == (12, 12, 8) for p in patches)
    assert all(bool((p["mask"] > 0).any()) for p in patches)
    uniform = NiftiVolumeDataset(cases, preprocessing, (12, 12, 8), foreground_fraction=0.0, samples_per_case=8, seed=0)
    share = np.mean([bool((uniform[i]["mask"] > 0).any()) for i in range(len(uniform))])
    assert share < 0.9  # without the bias many patches miss a small organ
    # reproducible by (seed, epoch, item); another epoch draws other patches
    assert torch.equal(always[3]["image"], always[3]["image"])
    before = always[3]["image"]
    always.set_epoch(1)
    assert not torch.equal(always[3]["image"], before)


def test_unlabelled_cases_give_patches_without_masks(tmp_path: Path) -> None:
    _case(tmp_path, np.ones((6, 6, 4), np.int16), None, np.eye(4))
    dataset = NiftiVolumeDataset(find_cases(tmp_path), Preprocessing((1.0, 1.0, 1.0)), (8, 8, 8))
    sample = dataset[0]
    assert sample["image"].shape == (1, 8, 8, 8) and "mask" not in sample and sample["labelled"] is False
