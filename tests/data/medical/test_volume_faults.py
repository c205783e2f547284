"""No silent wrong results from the volumes themselves (issue 21): make-volumes on a full disk or over another
data set, NaN or complex voxels named in one line, nothing already written lost."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from geocl.cli import main
from geocl.data.medical.files import check_voxels, find_cases, write_nifti
from geocl.data.medical.synthetic import make_volumes, synthetic_case
from tests.outputs import error_line, snapshot

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "medical" / "simclr.yaml"
SMALL = ["--cases", "3", "--size", "16", "18"]


def test_a_full_disk_while_writing_volumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []
    real_write_bytes = Path.write_bytes

    def filling(self: Path, data: bytes) -> int:
        if len(written) == 2:  # the third volume: half of it, then the disk is full
            with open(self, "wb") as file:
                file.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        written.append(self)
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", filling)
    root = tmp_path / "vol"
    line = error_line(main(["make-volumes", str(root), *SMALL]), capsys)
    failed = root / "images" / "case_001.nii.gz"
    assert line.startswith(f"geocl make-volumes: error: {failed}: cannot write") and "No space left on device" in line
    assert not failed.exists() and not [p for p in root.rglob(".*") if "tmp" in p.name]  # no half-written file
    assert json.loads((root / "volumes.json").read_text())["complete"] is False  # not taken for a complete set
    image, _, _ = synthetic_case(0, 0, 16, 18)
    assert np.array_equal(np.asanyarray(nib.load(root / "images" / "case_000.nii.gz").dataobj), image)
    monkeypatch.undo()
    assert main(["make-volumes", str(root), *SMALL]) == 0  # the rerun goes on, no --overwrite needed
    assert "3 volumes written" in capsys.readouterr().out and len(find_cases(root)) == 3
    assert "complete" not in json.loads((root / "volumes.json").read_text())


def test_make_volumes_never_mixes_into_another_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "real"
    write_nifti(root / "images" / "case_000.nii.gz", np.ones((4, 4, 4), np.int16), np.eye(4))
    before = snapshot(root)
    line = error_line(main(["make-volumes", str(root), *SMALL]), capsys)
    assert line.startswith(
        f"geocl make-volumes: error: {root}: holds NIfTI volumes (images/case_000.nii.gz, ...) but no volumes.json"
    )
    assert snapshot(root) == before
    # an overwrite with fewer cases leaves none of the earlier set to be read with the new one
    other = tmp_path / "vol"
    make_volumes(other, cases=3, min_size=16, max_size=18)
    assert main(["make-volumes", str(other), "--cases", "2", "--size", "16", "18", "--overwrite"]) == 0
    assert [case.id for case in find_cases(other)] == ["case_000", "case_001"]


def test_pretraining_names_nan_voxels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_volumes(tmp_path / "vol", cases=3, min_size=16, max_size=18).root
    path = root / "images" / "case_001.nii.gz"
    stored = nib.load(path)
    voxels = np.asanyarray(stored.dataobj).astype(np.float32)
    voxels[1, 2, 3] = np.nan
    write_nifti(path, voxels, stored.affine)
    before = snapshot(root)
    status = main(
        [
            "pretrain",
            str(RECIPE),
            f"data.path={root}",
            f"out={tmp_path / 'run'}",
            "data.num_workers=0",
            "data.split=train",
            "data.val_fraction=0",
        ]
    )
    line = error_line(status, capsys)
    assert f"{path}: holds 1 non-finite voxels (NaN or inf) of {voxels.size}" in line
    assert snapshot(root) == before


def test_an_image_of_complex_voxels_is_named(tmp_path: Path) -> None:
    from geocl.errors import GeoclError

    image = tmp_path / "images" / "a.nii.gz"
    write_nifti(image, np.zeros((4, 4, 4), np.complex64), np.eye(4))
    with pytest.raises(
        GeoclError, match="holds complex64 voxels; an image volume holds one real number a voxel"
    ) as error:
        check_voxels(find_cases(tmp_path))
    assert str(error.value).startswith(str(image))


def test_an_image_beyond_float32_is_named_before_training(tmp_path: Path) -> None:
    from geocl.data.medical.nifti import Preprocessing, load_case
    from geocl.errors import GeoclError

    image = tmp_path / "images" / "a.nii.gz"
    write_nifti(image, np.random.default_rng(0).normal(size=(6, 6, 4)) * 1e300, np.eye(4))
    (case,) = find_cases(tmp_path)
    with pytest.raises(GeoclError, match=r"holds values up to \d.\d+e\+300, beyond float32"):
        check_voxels([case])
    # read alone (as pretraining does), the normalised volume would be NaN: named too
    with pytest.raises(GeoclError, match="beyond float32") as error:
        load_case(case, Preprocessing((1.0, 1.0, 1.0)))
    assert str(error.value).startswith(str(image))
