"""Case discovery and header checks: the layouts read, and one clear line naming the file for bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from geocl.cli import main
from geocl.data.medical.files import find_cases, read_header, write_nifti

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "medical" / "simclr.yaml"


def _volume(path: Path, shape: tuple[int, ...] = (8, 8, 6), spacing: tuple[float, ...] = (1.0, 1.0, 2.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.diag([*spacing[:3], 1.0])), path)
    return path


def test_both_layouts_and_unlabelled_cases(tmp_path: Path) -> None:
    _volume(tmp_path / "a" / "images" / "p1.nii.gz")
    _volume(tmp_path / "a" / "images" / "p2.nii")
    _volume(tmp_path / "a" / "labels" / "p1.nii.gz")
    (tmp_path / "a" / "images" / ".DS_Store").write_text("hidden files are skipped")
    cases = find_cases(tmp_path / "a")
    assert [(c.id, c.labelled) for c in cases] == [("p1", True), ("p2", False)]
    # nnU-Net / Medical Segmentation Decathlon: imagesTr/<case>_0000.nii.gz and labelsTr/<case>.nii.gz
    _volume(tmp_path / "b" / "imagesTr" / "la_003_0000.nii.gz")
    _volume(tmp_path / "b" / "labelsTr" / "la_003.nii.gz")
    (case,) = find_cases(tmp_path / "b")
    assert case.id == "la_003" and case.label == tmp_path / "b" / "labelsTr" / "la_003.nii.gz"


def test_header_spacing_is_given_along_ras_axes(tmp_path: Path) -> None:
    # voxel axes stored as (S, L, P): axis 0 runs superior with 3 mm voxels
    affine = np.array([[0, -0.5, 0, 0], [0, 0, -0.8, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    path = tmp_path / "v.nii.gz"
    write_nifti(path, np.zeros((5, 6, 7), np.int16), affine)
    header = read_header(path)
    assert header.shape == (5, 6, 7)
    assert header.spacing == pytest.approx((0.5, 0.8, 3.0))  # R, A, S
    assert np.allclose(nib.load(path).affine, affine)


def _error_line(capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path) -> str:
    """Pretrain the medical SimCLR recipe on ``data``: exit 2 with one line, no traceback."""
    status = main(["pretrain", str(RECIPE), f"data.path={data}", f"out={tmp_path / 'run'}", "data.num_workers=0"])
    captured = capsys.readouterr()
    assert status == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_label_map_of_another_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _volume(tmp_path / "d" / "images" / "a.nii.gz", (8, 8, 6))
    label = _volume(tmp_path / "d" / "labels" / "a.nii.gz", (8, 8, 5))
    line = _error_line(capsys, tmp_path / "d", tmp_path)
    assert f"{label}: label map has shape 8x8x5" in line and "8x8x6" in line


def test_label_map_on_another_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _volume(tmp_path / "d" / "images" / "a.nii.gz")
    label = _volume(tmp_path / "d" / "labels" / "a.nii.gz", spacing=(1.0, 1.0, 3.0))
    assert f"{label}: label map's affine" in _error_line(capsys, tmp_path / "d", tmp_path)


def test_a_file_that_is_not_nifti(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _volume(tmp_path / "d" / "images" / "a.nii.gz")
    stray = tmp_path / "d" / "images" / "scan.nrrd"
    stray.write_bytes(b"NRRD0004\n")
    assert f"{stray}: is not a NIfTI file (.nii or .nii.gz)" in _error_line(capsys, tmp_path / "d", tmp_path)


def test_a_damaged_nifti_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damaged = tmp_path / "d" / "images" / "a.nii.gz"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not gzip at all")
    assert f"{damaged}: cannot be read as NIfTI" in _error_line(capsys, tmp_path / "d", tmp_path)


def test_a_4d_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    four = _volume(tmp_path / "d" / "images" / "a.nii.gz", (8, 8, 6, 2))
    assert f"{four}: is 4D (8x8x6x2); give one 3D volume per file" in _error_line(capsys, tmp_path / "d", tmp_path)
    # a trailing axis of length 1 is still one volume
    _volume(four, (8, 8, 6, 1))
    assert read_header(four).shape == (8, 8, 6)


def test_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    line = _error_line(capsys, tmp_path / "empty", tmp_path)
    assert f"{tmp_path / 'empty'}: holds no images/ (and labels/) or imagesTr/ (and labelsTr/) folder" in line
    (tmp_path / "empty" / "images").mkdir()
    line = _error_line(capsys, tmp_path / "empty", tmp_path)
    assert f"{tmp_path / 'empty' / 'images'}: holds no NIfTI volumes" in line


def test_a_label_map_without_its_image(tmp_path: Path) -> None:
    _volume(tmp_path / "images" / "a.nii.gz")
    orphan = _volume(tmp_path / "labels" / "b.nii.gz")
    from geocl.errors import GeoclError

    with pytest.raises(GeoclError, match="label map without an image b.nii") as error:
        find_cases(tmp_path)
    assert str(error.value).startswith(str(orphan))
