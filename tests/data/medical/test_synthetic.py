"""The embedded synthetic volumes: seeded, organ-like, anisotropic, written as NIfTI that the adapter reads."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from geocl.cli import main
from geocl.data.medical.files import find_cases
from geocl.data.medical.synthetic import make_volumes, synthetic_case
from geocl.errors import GeoclError


def test_a_case_is_a_function_of_seed_and_case_number() -> None:
    image, label, spacing = synthetic_case(seed=3, case=1, min_size=24, max_size=32)
    again = synthetic_case(seed=3, case=1, min_size=24, max_size=32)
    assert np.array_equal(image, again[0]) and np.array_equal(label, again[1]) and np.array_equal(spacing, again[2])
    other = synthetic_case(seed=4, case=1, min_size=24, max_size=32)
    assert other[0].shape != image.shape or not np.array_equal(other[0], image)


def test_cases_hold_one_smooth_organ_of_varying_size_and_place() -> None:
    cases = [synthetic_case(seed=0, case=k, min_size=32, max_size=40) for k in range(6)]
    volumes, centres = [], []
    for image, label, spacing in cases:
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert set(np.unique(label)) == {0, 1}
        assert all(32 <= side <= 40 for side in image.shape)
        assert spacing[2] > spacing[0] == spacing[1]  # anisotropic: slices further apart than in-plane voxels
        assert 0.6 <= spacing[0] <= 1.0 and 1.0 <= spacing[2] <= 1.6
        assert ndimage.label(label)[1] == 1  # one connected organ
        organ = label.astype(bool)
        assert 0.005 < organ.mean() < 0.5
        # brighter than its surroundings on average, but noisy (not a constant)
        shell = ndimage.binary_dilation(organ, iterations=3) & ~organ
        assert image[organ].mean() > image[shell].mean() + 150
        assert image[~organ].std() > 20
        volumes.append(organ.sum() * np.prod(spacing))
        centres.append(np.argwhere(organ).mean(axis=0) / np.asarray(organ.shape))
    assert np.ptp(volumes) > 0.3 * np.mean(volumes)  # sizes vary
    assert np.ptp(np.asarray(centres), axis=0).max() > 0.1  # positions vary


def test_make_volumes_writes_nifti_the_adapter_reads(tmp_path: Path) -> None:
    files = make_volumes(tmp_path / "vol", cases=3, min_size=20, max_size=24, seed=1)
    assert not files.reused and files.preview.is_file()
    cases = find_cases(tmp_path / "vol")
    assert [case.id for case in cases] == ["case_000", "case_001", "case_002"]
    assert all(case.labelled for case in cases)
    image, label, spacing = synthetic_case(1, 2, 20, 24)
    stored = nib.load(files.images[2])
    assert np.array_equal(np.asanyarray(stored.dataobj), image)
    assert np.array_equal(np.asanyarray(nib.load(files.labels[2]).dataobj), label)
    assert np.allclose(stored.header.get_zooms(), spacing)
    assert np.allclose(np.diag(stored.affine)[:3], spacing)


def test_a_rerun_reuses_and_other_parameters_need_overwrite(tmp_path: Path) -> None:
    first = make_volumes(tmp_path, cases=2, min_size=20, max_size=22)
    written = first.images[0].stat().st_mtime_ns
    again = make_volumes(tmp_path, cases=2, min_size=20, max_size=22)
    assert again.reused and again.images[0].stat().st_mtime_ns == written
    with pytest.raises(GeoclError, match="other parameters.*--overwrite"):
        make_volumes(tmp_path, cases=2, min_size=20, max_size=22, seed=5)
    replaced = make_volumes(tmp_path, cases=2, min_size=20, max_size=22, seed=5, overwrite=True)
    assert not replaced.reused
    with pytest.raises(GeoclError, match="16 <= min <= max"):
        make_volumes(tmp_path / "bad", cases=2, min_size=30, max_size=20)


def test_make_volumes_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-volumes", str(tmp_path / "vol"), "--cases", "2", "--size", "20", "22"]) == 0
    out = capsys.readouterr().out
    assert "2 volumes written" in out and "preview.png" in out
    assert len(list((tmp_path / "vol" / "labels").glob("*.nii.gz"))) == 2
