"""Few-label 2D segmentation of NIfTI volumes: finetune, slice-wise inference on the input's grid, predict, pictures."""

from __future__ import annotations

import csv
import inspect
import json
import shutil
from pathlib import Path
from typing import Any, get_type_hints

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from geocl.cli import main
from geocl.data.medical.files import find_cases, write_nifti
from geocl.data.medical.split import split_cases
from geocl.data.medical.synthetic import make_volumes
from geocl.errors import GeoclError
from geocl.finetune.downstream import BudgetArguments
from geocl.finetune.medical import (
    CASES_FILE,
    MEDICAL_KEY,
    VolumeSegmenter,
    label_beside,
    plot_case,
    predict_volume,
    run_medical_finetune,
)
from geocl.finetune.volume_metrics import case_metrics
from geocl.recipes.options import FinetuneOptions


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_volumes(tmp_path_factory.mktemp("medical"), cases=5, min_size=24, max_size=30, seed=0).root


@pytest.fixture(scope="module")
def finetuned(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("finetune") / "run"
    return run_medical_finetune(
        data=volumes,
        out=out,
        encoder="test_resnet",
        label_fraction=0.5,
        seed=0,
        max_epochs=1,
        steps_per_epoch=2,
        batch_size=4,
        val_every=1,
        progress=False,
        accelerator="cpu",
    )


class Threshold(nn.Module):
    """A stand-in segmenter: foreground where the intensity, scaled to [0, 1], is above one half."""

    def forward(self, images: Tensor) -> Tensor:
        return torch.cat([0.5 - images, images - 0.5], dim=1)


def test_predictions_return_to_the_input_grid(tmp_path: Path) -> None:
    # a bright box in an anisotropic volume stored L-P-S: resampled to 1 mm, predicted slice by slice
    # in RAS, and put back, the prediction must sit on the box in the input's own voxels
    label = np.zeros((20, 18, 9), np.uint8)
    label[5:14, 4:12, 2:7] = 1
    rng = np.random.default_rng(0)
    image = (label.astype(np.float64) * 1000 + rng.normal(0, 20, label.shape)).astype(np.int16)
    affine = np.array([[-0.7, 0, 0, 10], [0, -0.7, 0, 5], [0, 0, 2.5, -3], [0, 0, 0, 1]])
    write_nifti(tmp_path / "v.nii.gz", image, affine)
    settings = {"spacing": [0.7, 0.7, 2.5], "slice_axis": 2, "intensity": "percentile", "image_size": 32}
    same = VolumeSegmenter(Threshold(), {"classes": [0, 1], MEDICAL_KEY: settings}, device="cpu")  # type: ignore[arg-type]
    assert np.array_equal(same.predict(tmp_path / "v.nii.gz"), label)  # reoriented only: exact
    meta = {"classes": [0, 1], MEDICAL_KEY: {**settings, "spacing": [1.0, 1.0, 1.0]}}
    segmenter = VolumeSegmenter(Threshold(), meta, device="cpu")  # type: ignore[arg-type]
    prediction = segmenter.predict(tmp_path / "v.nii.gz")
    assert prediction.shape == label.shape and prediction.dtype == np.uint8
    assert case_metrics(prediction, label, spacing=(0.7, 0.7, 2.5))["dice"] > 0.9  # resampled there and back
    sideways = VolumeSegmenter(Threshold(), {**meta, MEDICAL_KEY: {**meta[MEDICAL_KEY], "slice_axis": 0}}, device="cpu")  # type: ignore[arg-type]
    assert np.array_equal(sideways.predict(tmp_path / "v.nii.gz"), prediction)  # any slice axis, same map here
    with pytest.raises(GeoclError, match="below the window"):
        VolumeSegmenter(Threshold(), meta, overlap=32, device="cpu")  # type: ignore[arg-type]


def test_finetune_scores_the_test_cases(finetuned: Any, volumes: Path) -> None:
    out = finetuned.out
    record = json.loads((out / "metrics.json").read_text())
    splits = split_cases(find_cases(volumes), volumes, val_fraction=0.2)
    assert record["test_cases"] == [case.id for case in splits.test]
    assert set(record["labelled_cases"]) <= {case.id for case in splits.train}
    assert len(record["labelled_cases"]) == 2  # ceil(0.5 * 3 labelled train cases), by case
    rows = list(csv.DictReader((out / CASES_FILE).open()))
    assert [row["case"] for row in rows] == record["test_cases"]
    for name in ("dice", "jaccard", "hd95", "asd"):
        assert record[name] == pytest.approx(np.mean([float(row[name]) for row in rows]), abs=1e-5)
        assert np.isfinite(getattr(finetuned, name))
    assert 0.0 <= finetuned.val_miou <= 1.0  # the best monitored slice mIoU
    # the per-case numbers are those of the written label map against the case's own
    case = splits.test[0]
    written = nib.load(out / "predictions" / f"{case.id}.nii.gz")
    stored = nib.load(case.image)
    assert np.array_equal(written.affine, stored.affine) and written.shape == stored.shape
    expected = case_metrics(
        np.asanyarray(written.dataobj),
        np.asanyarray(nib.load(case.label).dataobj).astype(int),
        spacing=stored.header.get_zooms(),
    )
    assert float(rows[0]["dice"]) == pytest.approx(expected["dice"], abs=1e-5)
    assert float(rows[0]["hd95"]) == pytest.approx(expected["hd95"], abs=1e-4)
    assert (out / "plots" / f"{case.id}.png").stat().st_size > 1000
    checkpoint = torch.load(finetuned.checkpoint, weights_only=True, map_location="cpu")
    assert checkpoint["geocl_segmenter"][MEDICAL_KEY]["image_size"] % 32 == 0


def test_compare_rows_pass_the_finetune_options_and_a_logger() -> None:
    """``geocl compare``'s Dice rows pass every ``FinetuneOptions`` field (:mod:`geocl.evaluation.medical`)."""
    parameters = inspect.signature(run_medical_finetune).parameters
    assert len(parameters) <= 20
    accepted = set(parameters) | set(get_type_hints(BudgetArguments))
    # probe_stages is the frozen protocol's (tiles only): left out of the options when unset,
    # and compare refuses the frozen protocol for volumes before any row is built
    assert set(FinetuneOptions.model_fields) - {"probe_stages"} | {"logger"} <= accepted
    assert "probe_stages" not in FinetuneOptions().model_dump()
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochs'"):
        run_medical_finetune(data="missing", out="missing", epochs=2)  # type: ignore[call-arg]


def test_a_folder_holding_a_run_is_refused(finetuned: Any, volumes: Path) -> None:
    with pytest.raises(GeoclError, match="holds a finetuning run"):
        run_medical_finetune(data=volumes, out=finetuned.out, encoder="test_resnet", progress=False)
    with pytest.raises(GeoclError, match="multiple of 32"):
        run_medical_finetune(data=volumes, out=finetuned.out.parent / "other", image_size=40, progress=False)


def test_predict_keeps_the_input_affine(finetuned: Any, volumes: Path, tmp_path: Path) -> None:
    volume = volumes / "images" / "case_001.nii.gz"
    label = label_beside(volume)
    assert label == volumes / "labels" / "case_001.nii.gz"
    result = predict_volume(finetuned.checkpoint, volume, tmp_path / "pred" / "case_001.nii.gz", label=label)
    written, stored = nib.load(result.path), nib.load(volume)
    assert np.array_equal(written.affine, stored.affine)
    assert written.shape == stored.shape
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1}
    assert result.png.is_file() and result.csv is not None and result.metrics is not None
    row = next(csv.DictReader(result.csv.open()))
    assert row["case"] == "case_001" and float(row["dice"]) == pytest.approx(result.metrics["dice"], abs=1e-5)
    unlabelled = predict_volume(finetuned.checkpoint, volume, tmp_path / "bare.nii")
    assert unlabelled.csv is None and np.array_equal(nib.load(unlabelled.path).affine, stored.affine)


def test_predict_command_routes_volumes(
    finetuned: Any, volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    volume = volumes / "images" / "case_003.nii.gz"
    out = tmp_path / "labels.nii.gz"
    assert main(["predict", str(finetuned.checkpoint), str(volume), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"prediction: {out}" in printed and "Dice" in printed and "labels.csv" in printed
    assert np.array_equal(nib.load(out).affine, nib.load(volume).affine)
    assert main(["predict", str(finetuned.checkpoint), str(volume), "--out", str(tmp_path / "labels.tif")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "labels.tif: must be a .nii or .nii.gz file" in line


def test_a_tile_checkpoint_is_refused(finetuned: Any, volumes: Path, tmp_path: Path) -> None:
    stored = torch.load(finetuned.checkpoint, weights_only=True, map_location="cpu")
    del stored["geocl_segmenter"][MEDICAL_KEY]
    tiles = tmp_path / "tiles.ckpt"
    torch.save(stored, tiles)
    with pytest.raises(GeoclError, match="finetuned on tiles, not volumes"):
        predict_volume(tiles, volumes / "images" / "case_000.nii.gz", tmp_path / "p.nii.gz")


def test_plot_case_shows_the_foreground_slices() -> None:
    label = np.zeros((10, 10, 20), np.uint8)
    label[3:7, 3:7, 8:16] = 1  # foreground on slices 8..15: a quarter, half and three quarters in
    figure = plot_case(np.zeros((10, 10, 20)), label, label, affine=np.eye(4), count=3, title="t")
    assert [axes.get_title() for axes in figure.axes] == ["slice 10 of 20", "slice 12 of 20", "slice 13 of 20"]
    # the slice axis is a RAS axis: a volume stored (S, R, A) is cut across its first voxel axis
    stored = np.transpose(label, (2, 0, 1))
    affine = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    figure = plot_case(np.zeros(stored.shape), stored, None, affine=affine, count=1)
    assert [axes.get_title() for axes in figure.axes] == ["slice 12 of 20"]


def test_label_beside_needs_the_layout(tmp_path: Path) -> None:
    shutil.copy(__file__, tmp_path / "x.nii.gz")
    assert label_beside(tmp_path / "x.nii.gz") is None
