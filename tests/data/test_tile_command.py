"""`geocl tile` on bad output folders and masks: one line naming the file or option, exit 2,
every earlier output byte-identical (the tiling side of "nothing lost, one clear line")."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import geocl.data.tileset as tileset
import geocl.io
from geocl.cli import main
from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset
from tests.conftest import RasterWriter, coordinate_image
from tests.test_io import small_disk


@pytest.fixture
def scene(tmp_path: Path, write_raster: RasterWriter) -> Path:
    """128 x 128 px, 3 bands, nodata 0."""
    return write_raster(tmp_path / "scene.tif", coordinate_image(128, 128), nodata=0)


def _labels(dtype: str = "uint8") -> np.ndarray:
    rows, cols = np.mgrid[0:128, 0:128]
    return ((rows // 40 + cols // 50) % 3).astype(dtype)


def _tile(scene: Path, out: Path, *extra: str) -> list[str]:
    return ["tile", str(scene), "--out", str(out), "--size", "32", "--quiet", *extra]


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1, captured.err
    return captured.err.strip()


def _files(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_tiles_without_their_metadata_are_not_reused(
    tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(_tile(scene, out, "--size", "64")) == 0
    (out / "tiles.json").unlink()
    before = _files(out)
    line = _error(capsys, _tile(scene, out))
    assert line == (
        f"geocl tile: error: {out}: holds tiles but no tiles.json, so nothing says which options made them; "
        "use a new output folder or delete this one"
    )
    assert _files(out) == before


def test_a_changed_option_is_named(tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(_tile(scene, out, "--size", "64", "--max-nodata", "1")) == 0
    before = _files(out)
    line = _error(capsys, _tile(scene, out, "--max-nodata", "1"))
    assert line == (
        f"geocl tile: error: --size: was 64, now 32 for the tiles already in {out}; "
        "use a new output folder or delete that one"
    )
    assert _files(out) == before


def test_a_float_mask_with_fractions_is_refused(
    tmp_path: Path, scene: Path, write_raster: RasterWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(_tile(scene, out, "--mask", str(write_raster(tmp_path / "classes.tif", _labels())))) == 0
    before = _files(out)
    soft = _labels("float32") + 0.5
    mask = write_raster(tmp_path / "soft.tif", soft)
    line = _error(capsys, _tile(scene, out, "--mask", str(mask)))
    assert line == (
        f"geocl tile: error: {mask}: a class mask needs integer class values, this one holds 0.5 (row 0, col 0); "
        "classify or round it, or mark such pixels as nodata"
    )
    assert _files(out) == before


def test_a_float_mask_with_nan_nodata_tiles_to_integer_classes(
    tmp_path: Path, scene: Path, write_raster: RasterWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = _labels("float32")
    labels[:, :16] = np.nan
    mask = write_raster(tmp_path / "mask.tif", labels, nodata=float("nan"))
    out = tmp_path / "out"
    assert main(_tile(scene, out, "--mask", str(mask), "--split-block", "32")) == 0
    assert "mask classes: [0, 1, 2]" in capsys.readouterr().out
    data = TileDataset(out, progress=False)
    assert data.metadata["mask_nodata"] == 255 and data.classes == [0, 1, 2]
    left = [i for i in range(len(data)) if data.bounds[int(data.rows[i])][0] == data.bounds[:, 0].min()]
    sample = data[left[0]]
    assert sample["mask"].dtype == torch.long
    assert (sample["mask"][:, :16] == IGNORE_INDEX).all() and (sample["mask"][:, 16:] >= 0).all()


def test_a_negative_mask_nodata_is_ignored_not_taken_for_the_highest_class(
    tmp_path: Path, scene: Path, write_raster: RasterWriter
) -> None:
    labels = _labels("float32") * 150  # classes 0, 150, 300: int16 tiles
    labels[:8] = -1.0
    mask = write_raster(tmp_path / "mask.tif", labels, nodata=-1.0)
    out = tmp_path / "out"
    assert main(_tile(scene, out, "--mask", str(mask), "--split-block", "32")) == 0
    data = TileDataset(out, progress=False)
    assert (data.metadata["mask_nodata"], data.classes) == (-1, [0, 150, 300])
    top = [i for i in range(len(data)) if data.bounds[int(data.rows[i])][3] == data.bounds[:, 3].max()]
    for item in top:
        mask_tile = data[item]["mask"]
        assert (mask_tile[:8] == IGNORE_INDEX).all() and (mask_tile[8:] >= 0).all()


def test_out_that_is_a_file(tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    line = _error(capsys, _tile(scene, taken))
    # the wording after the path is geocl.io's and the CLI's (which names the flag)
    assert line.startswith(f"geocl tile: error: {taken}: is a file, not a folder (given by ")
    assert taken.read_text() == "keep me"


def test_out_that_is_not_writable(
    tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "locked"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        geocl.io.os, "access", lambda path, mode: False if Path(path) == out else real_access(path, mode)
    )
    line = _error(capsys, _tile(scene, out))
    assert line.startswith(f"geocl tile: error: {out}: output folder is not writable (given by ")
    assert list(out.iterdir()) == []


def test_a_full_disk_names_the_file_and_keeps_what_was_written(
    tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_write = tileset._write_geotiff
    written: list[Path] = []

    def disk_fills(path: Path, *args: object) -> None:
        if len(written) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, *args)
        written.append(path)

    monkeypatch.setattr(tileset, "_write_geotiff", disk_fills)
    line = _error(capsys, _tile(scene, out))
    assert line.startswith(f"geocl tile: error: {out / 'images'}")
    assert line.endswith(
        "cannot write (No space left on device); free some space or fix the permissions, then rerun to resume"
    )
    kept = {str(path.relative_to(out)) for path in written}
    assert kept <= set(_files(out)) and len(kept) == 5
    monkeypatch.setattr(tileset, "_write_geotiff", real_write)
    assert main(_tile(scene, out)) == 0
    assert f"already there {len(kept)}" in capsys.readouterr().out


def test_a_small_scene_with_the_default_split_block_warns(
    tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_tile(scene, tmp_path / "a")) == 0
    printed = capsys.readouterr().out
    assert "(train 16, val 0, test 0)" in printed
    assert (
        "  warning: no val and no test tiles: one split block of 128 px covers the tiled area; "
        "pass --split-block 96 to give every split tiles"
    ) in printed
    assert main(_tile(scene, tmp_path / "b", "--split-block", "96")) == 0
    printed = capsys.readouterr().out
    assert "warning" not in printed and "val 0" not in printed and "test 0" not in printed


@pytest.mark.slow  # a whole tiling piped into a reader that quits
def test_a_closed_pipe_ends_tiling_quietly(tmp_path: Path, scene: Path) -> None:
    """`geocl tile ... | head -1`: no traceback, and the tile set is whole."""
    command = f"{sys.executable} -m geocl.cli {' '.join(_tile(scene, tmp_path / 'out'))} | head -1"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.startswith("16 tiles in ") and result.stdout.count("\n") == 1
    assert result.stderr == ""
    assert (tmp_path / "out" / "tiles.json").exists()


def test_mask_nodata_0_makes_0_an_ignored_value_end_to_end(
    tmp_path: Path, scene: Path, write_raster: RasterWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    import rasterio

    from geocl.finetune.metrics import segmentation_metric

    labels = _labels() + 1  # classes 1, 2, 3 ...
    labels[:, :20] = 0  # ... and 0 for "not labelled", which the file does not say (no nodata tag)
    mask = write_raster(tmp_path / "mask.tif", labels)
    out = tmp_path / "out"
    assert main(_tile(scene, out, "--mask", str(mask), "--split-block", "32", "--mask-nodata", "0")) == 0
    assert "mask classes: [1, 2, 3]" in capsys.readouterr().out  # 0 is no class
    data = TileDataset(out, progress=False)
    assert data.metadata["mask_nodata"] == 0 and data.metadata["options"]["mask_nodata"] == 0
    assert "class_0" not in data.index.columns and data.classes == [1, 2, 3]
    with rasterio.open(out / data.index["mask_path"].iloc[0]) as tile:
        assert tile.nodata == 0  # GIS tools see it too

    # training and metrics see IGNORE_INDEX where the source holds 0, class indices elsewhere
    metric = segmentation_metric(num_classes=3)
    labelled = 0
    for item in range(len(data)):
        sample = data[item]
        xmin, _, _, ymax = data.bounds[int(data.rows[item])].tolist()
        row, col = round((5_100_000.0 - ymax) / 10), round((xmin - 500_000.0) / 10)
        source = torch.from_numpy(labels[row : row + 32, col : col + 32].astype(np.int64))
        assert torch.equal(sample["mask"] == IGNORE_INDEX, source == 0)
        assert torch.equal(sample["mask"][source > 0], source[source > 0] - 1)
        labelled += int((source > 0).sum())
        metric.update(torch.zeros_like(sample["mask"])[None], sample["mask"][None])  # "class index 0" everywhere
    confusion = metric.confmat
    assert int(confusion.sum()) == labelled  # the unlabelled pixels never reach the metric

    # a rerun with another unlabelled value is another tile set
    line = _error(capsys, _tile(scene, out, "--mask", str(mask), "--split-block", "32"))
    assert "--mask-nodata" in line and "was 0, now none" in line


def test_a_full_disk_while_writing_the_index_names_it(
    tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the GeoPackage used to be written by SQLite in place: on a full disk a later statement failed
    # ("no such table: gpkg_contents") with its SQL in a traceback; now Python writes it, in one go
    clean = tmp_path / "clean"
    assert main(_tile(scene, clean)) == 0
    out = tmp_path / "out"
    real_write = Path.write_bytes

    def disk_full_for_the_index(self: Path, data: bytes) -> int:
        if self.suffix == ".gpkg":
            real_write(self, data[: len(data) // 3])  # what reached the disk before it filled
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_for_the_index)
    line = _error(capsys, _tile(scene, out))
    assert line == (
        f"geocl tile: error: {out / 'tiles.gpkg'}: cannot write (No space left on device); "
        "free some space or fix the permissions, then rerun to resume"
    )
    written = _files(out)
    assert not any(name.endswith(".gpkg") for name in written)  # no index, no half of one under any name
    assert written["tiles.json"] != _files(clean)["tiles.json"]  # the marker says unfinished
    assert {name: digest for name, digest in written.items() if name != "tiles.json"} == {
        name: digest for name, digest in _files(clean).items() if name.startswith(("images/", "masks/"))
    }  # every tile written, each complete
    monkeypatch.setattr(Path, "write_bytes", real_write)
    assert main(_tile(scene, out)) == 0  # the rerun finishes: the clean run's files, byte for byte
    assert _files(out) == _files(clean)


def test_a_real_full_disk_leaves_no_cut_tile(
    tmp_path: Path, write_raster: RasterWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    # rasterio logs, not raises, what GDAL reports when it closes a file: tiles used to be left
    # empty (0 bytes) under their final names on a full disk, and the run went on
    noise = np.random.default_rng(0).integers(1, 60_000, (3, 128, 128)).astype(np.uint16)
    scene = write_raster(tmp_path / "noise.tif", noise, nodata=0)
    with small_disk(tmp_path) as disk:
        line = _error(capsys, _tile(scene, disk / "tiles", "--size", "64"))
        assert line.startswith(f"geocl tile: error: {disk / 'tiles' / 'images'}/r00")
        assert "cannot write (No space left on device" in line
        tiles = sorted((disk / "tiles").rglob("*.tif"))
        for path in tiles:
            with rasterio.open(path) as src:
                assert src.read().shape == (3, 64, 64)  # every tile left is whole
        assert not [path for path in (disk / "tiles").rglob("*") if path.name.startswith(".")]  # no temporary file
