"""FBA on NIfTI volumes: labelled cases by subset, the others without labels, 2D and 3D end to end, grids kept."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import Tensor, nn

import geocl.finetune.medical as medical
import geocl.finetune.medical_semi_supervised as medical_semi
from geocl.data.medical.files import find_cases, write_nifti
from geocl.data.medical.nifti import Preprocessing
from geocl.data.medical.split import split_cases
from geocl.data.medical.synthetic import make_volumes
from geocl.errors import GeoclError
from geocl.finetune.medical import CASES_FILE
from geocl.finetune.medical_semi_supervised import (
    SemiSupervisedVolumePredictor,
    label_budget_split,
    run_medical_semi_supervised,
)
from geocl.finetune.semi_supervised import FBAOptions
from geocl.finetune.semi_supervised_data import CaseSlices

BUDGET = {
    "max_epochs": 1,
    "steps_per_epoch": 2,
    "val_every": 1,
    "batch_size": 4,
    "accelerator": "cpu",
    "progress": False,
    "label_fraction": 0.5,
    "pictures": 1,
}
FBA_2D = FBAOptions(spatial_dims=2, labelled_bs=2, decoder_channels=[16, 8, 8, 8, 8], embedding_dim=16)
FBA_3D = FBAOptions(spatial_dims=3, labelled_bs=2, patch_size=[16, 16, 16], width=4, depth=3, embedding_dim=16)
TINY_2D: dict[str, Any] = {"encoder": "test_resnet", "crop": 32, "fba": FBA_2D}
TINY_3D: dict[str, Any] = {"fba": FBA_3D}


def stop_before_training(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record what a run hands the trainer (module, items, batch size, monitored score) instead of training."""
    seen: dict[str, Any] = {}
    loaders, run_downstream = medical_semi.SemiSupervisedVolumes.loaders, medical.run_downstream

    def stop(self: medical_semi.SemiSupervisedVolumes, module: Any, options: Any) -> None:
        train, _ = loaders(self, module, options)
        sampler = train.batch_sampler
        batch = sampler.labelled_bs + sampler.unlabelled_bs
        seen.update(module=module, labelled=self.train, unlabelled=self.other, val=self.val, batch_size=batch)
        raise KeyboardInterrupt  # the data is what these tests look at

    def spy(factory: Any, data: Any, options: Any) -> Any:
        seen["monitor"] = factory.monitor
        return run_downstream(factory, data, options)

    monkeypatch.setattr(medical_semi.SemiSupervisedVolumes, "loaders", stop)
    monkeypatch.setattr(medical, "run_downstream", spy)  # the trainer both medical runs share
    return seen


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_volumes(tmp_path_factory.mktemp("medical"), cases=6, min_size=24, max_size=30, seed=0).root


class Threshold(nn.Module):
    """A stand-in model: foreground where the intensity, scaled to [0, 1], is above one half (2 or 3 dims)."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.num_classes, self.spatial_dims = 2, spatial_dims

    def predict_probabilities(self, images: Tensor) -> tuple[Tensor, Tensor]:
        foreground = (images > 0.5).float()
        both = torch.cat([1 - foreground, foreground], dim=1)
        return both, both


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_predictions_return_to_the_input_grid(tmp_path: Path, spatial_dims: int) -> None:
    # a bright box in a volume stored L-P-S: predicted in RAS (by slices or whole) and put back on the stored voxels
    label = np.zeros((20, 18, 9), np.uint8)
    label[5:14, 4:12, 2:7] = 1
    image = (label.astype(np.float64) * 1000 + np.random.default_rng(0).normal(0, 20, label.shape)).astype(np.int16)
    affine = np.array([[-0.7, 0, 0, 10], [0, -0.7, 0, 5], [0, 0, 2.5, -3], [0, 0, 0, 1]])
    write_nifti(tmp_path / "v.nii.gz", image, affine)
    model: Any = Threshold(spatial_dims)
    preprocessing = Preprocessing((0.7, 0.7, 2.5), "percentile")
    predictor = SemiSupervisedVolumePredictor(model, preprocessing, window=32, device="cpu")
    prediction = predictor.predict(tmp_path / "v.nii.gz")
    assert prediction.dtype == np.uint8 and np.array_equal(prediction, label)  # reoriented only: exact
    assert predictor.num_classes == 2


def test_labelled_cases_by_subset_and_the_others_without_their_labels(
    volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = stop_before_training(monkeypatch)
    splits = split_cases(find_cases(volumes), volumes, val_fraction=0.2)
    for spatial_dims, tiny in ((2, TINY_2D), (3, TINY_3D)):
        with pytest.raises(KeyboardInterrupt):
            run_medical_semi_supervised(
                data=volumes, out=tmp_path / f"run{spatial_dims}", seed=0, subset_seed=1, **{**BUDGET, **tiny}
            )
        labelled = seen["labelled"].cases
        unlabelled = seen["unlabelled"].cases
        assert {case.id for case in labelled} | {case.id for case in unlabelled} == {case.id for case in splits.train}
        assert not {case.id for case in labelled} & {case.id for case in unlabelled}
        assert all(case.label is not None for case in labelled) and all(case.label is None for case in unlabelled)
        assert all(volume.label is None for volume in seen["unlabelled"].volumes)  # never read
        assert seen["module"].spatial_dims == spatial_dims and seen["monitor"] == "val/dice"
        assert seen["batch_size"] == 4 and seen["module"].config.labelled_bs == 2
    # the 3D patch pool covers every draw of the budget without repeating a patch
    assert len(seen["labelled"]) >= BUDGET["max_epochs"] * BUDGET["steps_per_epoch"] * BUDGET["batch_size"]
    # the same subset seed draws the same cases; supervised-only reads no unlabelled case
    with pytest.raises(KeyboardInterrupt):
        run_medical_semi_supervised(
            data=volumes,
            out=tmp_path / "base",
            seed=5,
            subset_seed=1,
            **{**BUDGET, "fba": dataclasses.replace(FBA_3D, supervised_only=True, decoders=1)},
        )
    assert [case.id for case in seen["labelled"].cases] == [case.id for case in labelled]
    assert seen["unlabelled"] is None and seen["batch_size"] == 2


def test_bad_settings_are_named(volumes: Path, tmp_path: Path) -> None:
    with pytest.raises(GeoclError, match=r"method\.patch_size: 3D FBA trains on patches"):
        run_medical_semi_supervised(
            data=volumes, out=tmp_path / "a", **{**BUDGET, "fba": dataclasses.replace(FBA_3D, patch_size=None)}
        )
    with pytest.raises(GeoclError, match=r"method\.init_checkpoint: the 3D V-Net starts from random init"):
        run_medical_semi_supervised(
            data=volumes, out=tmp_path / "b", encoder_checkpoint=tmp_path / "x.ckpt", **{**BUDGET, **TINY_3D}
        )


@pytest.mark.parametrize("tiny", [TINY_2D, TINY_3D], ids=["2d-slices", "3d-patches"])
def test_fba_net_plus_trains_a_tiny_budget_end_to_end_on_the_embedded_volumes(
    volumes: Path, tmp_path: Path, tiny: dict[str, Any]
) -> None:
    out = tmp_path / "run"
    result = run_medical_semi_supervised(data=volumes, out=out, seed=0, **{**BUDGET, **tiny})

    record = json.loads((out / "metrics.json").read_text())
    splits = split_cases(find_cases(volumes), volumes, val_fraction=0.2)
    assert record["test_cases"] == [case.id for case in splits.test]
    assert record["unlabelled_cases"] and record["supervised_only"] is False and record["decoders"] == 3
    assert record["spatial_dims"] == tiny["fba"].spatial_dims
    rows = list(csv.DictReader((out / CASES_FILE).open()))
    assert [row["case"] for row in rows] == record["test_cases"]
    for name in ("dice", "jaccard", "hd95", "asd"):
        assert record[name] == pytest.approx(np.mean([float(row[name]) for row in rows]), abs=1e-5)
        assert getattr(result, name) == pytest.approx(record[name])
    assert 0.0 <= result.dice <= 1.0
    assert math.isnan(result.val_miou)  # it monitors the Dice per val case, not a slice mIoU
    case = splits.test[0]
    written, stored = nib.load(out / "predictions" / f"{case.id}.nii.gz"), nib.load(case.image)
    assert written.shape == stored.shape and np.array_equal(written.affine, stored.affine)
    assert (out / "plots" / f"{case.id}.png").exists() and result.checkpoint.exists()


def _cases(count: int, prefix: str) -> list[Any]:
    return [SimpleNamespace(id=f"{prefix}{i:03d}", label=Path("l"), labelled=True) for i in range(count)]


def test_the_papers_label_budget_is_16_labelled_and_64_unlabelled_of_80() -> None:
    # the paper's 80 training volumes as geocl's 64 train + 16 val cases (20 test cases apart)
    train, val = _cases(64, "t"), _cases(16, "v")
    for seed in range(5):
        labelled, unlabelled = label_budget_split(train, val, 0.2, seed, "train-and-val")
        assert len(labelled) == 16 and len(unlabelled) == 64
        assert {case.id for case in labelled} <= {case.id for case in train}  # labels of train cases only
        assert {case.id for case in val} <= {case.id for case in unlabelled}  # val images train unlabelled
        assert len({case.id for case in labelled} | {case.id for case in unlabelled}) == 80
    # 10 %: 8 + 72, as the paper's other row
    labelled, unlabelled = label_budget_split(train, val, 0.1, 0, "train-and-val")
    assert (len(labelled), len(unlabelled)) == (8, 72)
    # the budget of the train cases alone: ceil(0.2 * 64) = 13 labelled, the val cases never train
    labelled, unlabelled = label_budget_split(train, val, 0.2, 0, "train")
    assert (len(labelled), len(unlabelled)) == (13, 51)
    with pytest.raises(GeoclError, match="label_fraction"):
        label_budget_split(_cases(4, "t"), _cases(16, "v"), 0.5, 0, "train-and-val")  # 10 labelled of 4


def test_validation_scores_whole_val_cases(volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stop_before_training(monkeypatch)
    splits = split_cases(find_cases(volumes), volumes, val_fraction=0.2)
    with pytest.raises(KeyboardInterrupt):
        run_medical_semi_supervised(data=volumes, out=tmp_path / "run", seed=0, **{**BUDGET, **TINY_2D})
    assert seen["module"].config.val_per_case
    assert isinstance(seen["val"], CaseSlices) and seen["val"].cases == [case.id for case in splits.val]
    first = seen["val"][0]
    assert first["image"].ndim == 4 and first["mask"].shape[0] == first["image"].shape[0]  # [S, 1, H, W]
