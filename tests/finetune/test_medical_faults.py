"""No silent wrong results on NIfTI volumes (issue 21): predict never writes onto its inputs, damaged volumes,
NaN voxels and label maps without class numbers are named in one line before any work, sparse class numbers
are classes (as in tile masks), a full disk names the file and leaves the inputs as they were."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

import geocl.finetune.downstream as downstream
from geocl.cli import main
from geocl.data.medical.files import write_nifti
from geocl.data.medical.nifti import Preprocessing, apply_transform
from geocl.data.medical.synthetic import make_volumes
from geocl.errors import GeoclError
from geocl.finetune.medical import run_medical_finetune
from geocl.finetune.medical_semi_supervised import run_medical_semi_supervised
from geocl.finetune.semi_supervised import FBAOptions
from geocl.finetune.volume_metrics import case_metrics
from tests.outputs import error_line, snapshot

TINY = {
    "encoder": "test_resnet",
    "label_fraction": 0.5,
    "seed": 0,
    "max_epochs": 1,
    "steps_per_epoch": 2,
    "batch_size": 4,
    "val_every": 1,
    "progress": False,
    "accelerator": "cpu",
    "pictures": 0,
}
TINY_FBA = {**TINY, "fba": FBAOptions(labelled_bs=2, decoder_channels=[16, 8, 8, 8, 8], embedding_dim=16), "crop": 32}
#: The test case of the 5-case set (val_fraction 0.2): damaged there, a run would only fail after training.
TEST_CASE = "case_002"


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_volumes(tmp_path_factory.mktemp("medical"), cases=5, min_size=24, max_size=30, seed=0).root


@pytest.fixture(scope="module")
def checkpoint(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finetune") / "run"
    return run_medical_finetune(data=volumes, out=out, **TINY).checkpoint


def _copy(volumes: Path, target: Path) -> Path:
    shutil.copytree(volumes, target)
    return target


def _rewrite(path: Path, change: Any, dtype: Any = None) -> None:
    """Rewrite a volume in place with ``change(voxels)`` (on its own grid)."""
    stored = nib.load(path)
    dtype = dtype or stored.get_data_dtype()
    write_nifti(path, np.asarray(change(np.asanyarray(stored.dataobj).astype(dtype))).astype(dtype), stored.affine)


def _predict(checkpoint: Path, volume: Path, out: Path | str) -> list[str]:
    return ["predict", str(checkpoint), str(volume), "--out", str(out)]


# ------------------------------------------------------------------ 1: output onto an input


@pytest.mark.parametrize(
    "given",
    [
        "images/case_002.nii.gz",  # the volume itself
        "labels/case_002.nii.gz",  # its label map: would then be scored against itself (Dice 1)
        "images/../labels/case_002.nii.gz",  # the same through ..
        "link.nii.gz",  # a link to the label map
        "preview-link/p.nii.gz",  # its picture p.png is a link to the volume
        "labels/case_000.nii.gz",  # another case's label map: the data folder is read as cases
        "images/new.nii.gz",  # a new file among the images: read as a case next time
    ],
)
def test_predict_never_writes_onto_its_inputs(
    checkpoint: Path, volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    data = _copy(volumes, tmp_path / "data")
    (data / "link.nii.gz").symlink_to(data / "labels" / "case_002.nii.gz")
    (data / "preview-link").mkdir()
    (data / "preview-link" / "p.png").symlink_to(data / "images" / "case_002.nii.gz")
    before = snapshot(data)
    line = error_line(main(_predict(checkpoint, data / "images" / "case_002.nii.gz", data / given)), capsys)
    shown = str(data / given).replace(".nii.gz", ".png") if given.startswith("preview") else str(data / given)
    assert line.startswith(f"geocl predict: error: {shown}: ") and "--out" in line
    assert "would overwrite" in line or "would be written inside" in line
    assert snapshot(data) == before  # nothing written, nothing changed


def test_predict_beside_the_data_folder_scores_against_the_real_label(
    checkpoint: Path, volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(volumes)
    out = tmp_path / "pred" / "case_002.nii.gz"
    assert main(_predict(checkpoint, volumes / "images" / "case_002.nii.gz", out)) == 0
    printed = capsys.readouterr().out
    label = np.asanyarray(nib.load(volumes / "labels" / "case_002.nii.gz").dataobj)
    prediction = np.asanyarray(nib.load(out).dataobj)
    expected = case_metrics(prediction, label, spacing=nib.load(out).header.get_zooms())["dice"]
    assert f"Dice {expected:.4f}" in printed and snapshot(volumes) == before


def test_a_full_disk_while_predicting_names_the_file(
    checkpoint: Path, volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Path, data: bytes) -> int:
        with open(self, "wb") as file:
            file.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    before = snapshot(volumes)
    out = tmp_path / "pred" / "p.nii.gz"
    line = error_line(main(_predict(checkpoint, volumes / "images" / "case_002.nii.gz", out)), capsys)
    assert line.startswith(f"geocl predict: error: {out}: cannot write") and "No space left on device" in line
    assert list(out.parent.iterdir()) == []  # no half-written file, under its name or a temporary one
    assert snapshot(volumes) == before


# ------------------------------------------------------- 5, 6, 12: volumes read once, named


def _nan(voxels: np.ndarray) -> np.ndarray:
    voxels[:3, :2, 0] = np.nan
    voxels[0, 0, 1] = np.inf
    return voxels


def test_predict_names_a_bad_volume_or_label_map(
    checkpoint: Path, volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _copy(volumes, tmp_path / "data")
    image, label = data / "images" / "case_002.nii.gz", data / "labels" / "case_002.nii.gz"
    out = tmp_path / "pred" / "p.nii.gz"

    def refused() -> str:
        before = snapshot(data)
        line = error_line(main(_predict(checkpoint, image, out)), capsys)
        assert snapshot(data) == before and not out.exists()
        return line

    def label_map(change: Any, dtype: Any = None) -> None:
        shutil.copy(volumes / "labels" / "case_002.nii.gz", label)
        _rewrite(label, change, dtype)

    label_map(lambda v: np.where(v > 0, 0.6, 0.0), np.float32)  # fractional: once read as background
    line = refused()
    assert f"{label}: label map holds" in line and "no class number (0.6)" in line
    label_map(lambda v: np.where(v > 0, 7, 0))  # a class the model does not know
    assert refused().endswith(f"{label}: label map holds class 7, which is none of the model's classes (0, 1)")
    label_map(lambda v: v[:-1])  # on another grid
    assert refused().endswith(f"{label}: label map is not on the grid of {image}")
    shutil.copy(volumes / "labels" / "case_002.nii.gz", label)
    _rewrite(image, _nan, np.float32)  # once: the whole volume predicted as background, Dice 0, exit 0
    assert f"{image}: holds 7 non-finite voxels (NaN or inf) of " in refused()
    stored = (volumes / "images" / "case_002.nii.gz").read_bytes()
    image.write_bytes(stored[: len(stored) * 2 // 3])  # truncated: the header reads fine
    assert f"{image}: cannot read the voxels (a truncated or damaged file?): Compressed file ended" in refused()


@pytest.mark.parametrize("fault", ["truncated", "nan", "fractional", "empty"])
@pytest.mark.parametrize("run", [run_medical_finetune, run_medical_semi_supervised], ids=["finetune", "fba"])
def test_every_volume_is_read_before_training(
    volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, run: Any
) -> None:
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(downstream, "finetune_trainer", no_training)  # both trainings run on the skeleton
    data = _copy(volumes, tmp_path / "data")
    image, label = data / "images" / f"{TEST_CASE}.nii.gz", data / "labels" / f"{TEST_CASE}.nii.gz"
    if fault == "truncated":
        stored = image.read_bytes()
        image.write_bytes(stored[: len(stored) // 2])
        expected = f"{image}: cannot read the voxels (a truncated or damaged file?): Compressed file ended"
    elif fault == "nan":
        _rewrite(image, _nan, np.float32)
        expected = f"{image}: holds 7 non-finite voxels (NaN or inf) of "
    elif fault == "fractional":
        _rewrite(label, lambda v: v * 0.5, np.float32)
        expected = f"{label}: label map holds "
    else:
        for path in (data / "labels").iterdir():
            _rewrite(path, np.zeros_like)
        expected = f"{data}: no label map holds a class other than 0 (background)"
    before = snapshot(data)
    with pytest.raises(GeoclError) as error:
        run(data=data, out=tmp_path / "run", **(TINY if run is run_medical_finetune else TINY_FBA))
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)
    assert snapshot(data) == before


def test_sparse_class_numbers_train_one_output_a_class(volumes: Path, tmp_path: Path) -> None:
    # {0, 2, 7}: three classes, as tile masks, not an 8-class model whose 5 empty classes score Dice 1
    data = _copy(volumes, tmp_path / "data")
    for index, path in enumerate(sorted((data / "labels").iterdir())):
        _rewrite(path, lambda v, k=index: np.where(v > 0, 2 if k % 2 else 7, 0), np.uint8)
    result = run_medical_finetune(data=data, out=tmp_path / "run", **TINY)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["classes"] == [0, 2, 7]
    stored = torch.load(result.checkpoint, weights_only=True, map_location="cpu")
    assert stored["geocl_segmenter"]["classes"] == [0, 2, 7]
    assert stored["state_dict"]["model.segmentation_head.0.weight"].shape[0] == 3
    for path in (tmp_path / "run" / "predictions").iterdir():
        assert set(np.unique(np.asanyarray(nib.load(path).dataobj))) <= {0, 2, 7}  # written as the class numbers


def test_a_monai_failure_names_the_file_and_its_reason(volumes: Path) -> None:
    from monai.transforms import Compose, Lambdad, LoadImaged

    def broken(value: Any) -> Any:
        raise ValueError("the reason")

    pipeline = Compose([LoadImaged("image", image_only=True), Lambdad("image", broken)])
    image = volumes / "images" / "case_000.nii.gz"
    with pytest.raises(GeoclError) as error:
        apply_transform(pipeline, {"image": str(image)})
    assert str(error.value) == f"{image}: cannot read the volume: the reason"
    assert apply_transform(Preprocessing((1.0, 1.0, 1.0)).transform(False), {"image": str(image)})["image"].ndim == 4
