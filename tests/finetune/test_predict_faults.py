"""`geocl predict` as a user meets it: no silent wrong result. A full disk, a checkpoint
trained on volumes, a mosaic of two CRSs, NaN, other dtypes and scales, other band counts:
each a right result or one line naming the file, exit 2, no traceback, earlier outputs kept
byte for byte."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, calculate_default_transform, reproject

import geocl.finetune.predict as predict_module
from geocl.cli import main
from geocl.data.medical.synthetic import make_volumes
from geocl.data.tileset import read_metadata
from geocl.errors import GeoclError
from geocl.finetune.inference import check_trained_on
from geocl.finetune.medical import run_medical_finetune
from tests.finetune.test_predict_checkpoint import checkpoint, scene, write_crop  # noqa: F401  (fixtures)
from tests.test_io import small_disk

ARGS = ["--window", "64", "--overlap", "16", "--block", "256", "--no-cog"]


def predict(ckpt: Path, scene_paths: list[Path], out: Path, *extra: str) -> list[str]:
    return ["predict", str(ckpt), *map(str, scene_paths), "--out", str(out), *ARGS, *extra]


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("predict:")]
    assert len(lines) == 1, captured.err  # the progress bar aside
    return lines[-1]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def rewrite(source: Path, path: Path, data: np.ndarray, **profile: Any) -> Path:
    """``source``'s grid with other pixels (and profile entries)."""
    with rasterio.open(source) as src:
        meta = {**src.profile, "dtype": data.dtype.name, "count": data.shape[0], **profile}
    for key in ("blockxsize", "blockysize", "tiled"):
        meta.pop(key, None)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)
    return path


# --- 11: a full disk -------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["preview", "labels"])
def test_a_full_disk_names_the_file_and_keeps_the_earlier_outputs(
    tmp_path: Path,
    checkpoint: Path,
    scene: Path,
    failing: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out" / "pred.tif"
    assert main(predict(checkpoint, [scene], out, "--polygons", str(tmp_path / "out" / "pred.gpkg"))) == 0
    capsys.readouterr()
    before = files(out.parent)
    if failing == "preview":
        from matplotlib.figure import Figure

        def savefig(self: Figure, path: Any, **kwargs: Any) -> None:
            Path(path).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(Figure, "savefig", savefig)
        named = out.with_suffix(".png")
    else:

        def flush(self: Any, count: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", self.dst.name)

        monkeypatch.setattr(predict_module._BlockRowWriter, "_flush", flush)
        named = out
    line = one_line(capsys, predict(checkpoint, [scene], out, "--polygons", str(tmp_path / "out" / "pred.gpkg")))
    assert line == f"geocl predict: error: {named}: cannot write (No space left on device)"
    assert files(out.parent) == before  # nothing half-written, every earlier output byte for byte


def test_a_real_full_disk(tmp_path: Path, checkpoint: Path, scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with small_disk(tmp_path, "48k") as disk:  # room for the labels, not for the preview
        line = one_line(capsys, predict(checkpoint, [scene], disk / "pred.tif"))
        assert line == f"geocl predict: error: {disk / 'pred.png'}: cannot write (No space left on device)"
        assert [path.name for path in disk.iterdir()] == ["pred.tif"]  # complete, as the rerun would write it
        assert main(predict(checkpoint, [scene], tmp_path / "roomy" / "pred.tif")) == 0
        assert (disk / "pred.tif").read_bytes() == (tmp_path / "roomy" / "pred.tif").read_bytes()
    with small_disk(tmp_path, "4k") as disk:  # no room for the labels
        line = one_line(capsys, predict(checkpoint, [scene], disk / "pred.tif"))
        assert line.startswith(f"geocl predict: error: {disk / 'pred.tif'}: cannot write (No space left on device")
        assert list(disk.iterdir()) == []


# --- 7: what the checkpoint was trained on ---------------------------------------------------


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_volumes(tmp_path_factory.mktemp("volumes"), cases=5, min_size=24, max_size=30, seed=0).root


@pytest.fixture(scope="module")
def volume_checkpoint(tmp_path_factory: pytest.TempPathFactory, volumes: Path) -> Path:
    return run_medical_finetune(
        data=volumes,
        out=tmp_path_factory.mktemp("medical") / "run",
        encoder="test_resnet",
        label_fraction=0.5,
        seed=0,
        max_epochs=1,
        steps_per_epoch=1,
        batch_size=4,
        val_every=1,
        progress=False,
        accelerator="cpu",
    ).checkpoint


def test_a_checkpoint_predicts_only_what_it_was_trained_on(
    tmp_path: Path,
    checkpoint: Path,
    scene: Path,
    volumes: Path,
    volume_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with rasterio.open(scene) as src:
        one_band = rewrite(scene, tmp_path / "one_band.tif", src.read(1)[None])
    line = one_line(capsys, predict(volume_checkpoint, [one_band], tmp_path / "out" / "p.tif"))
    assert line == (
        f"geocl predict: error: {volume_checkpoint}: was finetuned on volumes (NIfTI), not tiles: "
        "predict .nii or .nii.gz volumes with it, not GeoTIFF scenes"
    )
    assert files(tmp_path / "out") == {}
    volume = sorted((volumes / "images").glob("*.nii.gz"))[0]
    line = one_line(capsys, ["predict", str(checkpoint), str(volume), "--out", str(tmp_path / "v" / "p.nii.gz")])
    assert (
        line
        == f"geocl predict: error: {checkpoint}: was finetuned on tiles, not volumes: predict GeoTIFF scenes with it"
    )
    # one rule, keyed on what the checkpoint records
    check_trained_on("c.ckpt", {"medical": {}}, "volumes")
    check_trained_on("c.ckpt", {}, "tiles")
    with pytest.raises(GeoclError, match="c.ckpt: was finetuned on volumes"):
        check_trained_on("c.ckpt", {"medical": {}}, "tiles")


# --- 8: a mosaic of scenes in two CRSs -------------------------------------------------------


def reprojected(source: Path, path: Path, crs: str) -> Path:
    """``source`` warped into ``crs`` on a grid of its own (nearest neighbour)."""
    with rasterio.open(source) as src:
        transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        data = np.zeros((src.count, height, width), dtype=src.dtypes[0])
        reproject(
            src.read(),
            data,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs=crs,
            resampling=Resampling.nearest,
            src_nodata=src.nodata,
            dst_nodata=src.nodata,
        )
        profile = {**src.profile, "crs": crs, "transform": transform, "width": width, "height": height}
    for key in ("blockxsize", "blockysize", "tiled"):
        profile.pop(key, None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_a_mosaic_of_two_crs_is_on_the_first_scenes_grid_and_says_so(
    tmp_path: Path, checkpoint: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = Path(read_metadata(tiny_tiles)["sources"]["scene"][0])
    first = write_crop(source, tmp_path / "west.tif", slice(0, 240), slice(0, 200))
    east = reprojected(
        write_crop(source, tmp_path / "crop" / "east.tif", slice(0, 240), slice(160, 320)),
        tmp_path / "east_34n.tif",
        "EPSG:32634",
    )
    one_by_one = ("--batch-size", "1")  # a window's logits whatever windows share its batch
    alone = tmp_path / "alone" / "west.tif"
    assert main(predict(checkpoint, [first], alone, *one_by_one)) == 0
    capsys.readouterr()
    out = tmp_path / "mosaic" / "pred.tif"
    assert main(predict(checkpoint, [first, east], out, *one_by_one)) == 0
    printed = capsys.readouterr().out
    assert "  mosaic of 2 files on the grid of the first, " + str(first) in printed
    assert "  note: east_34n.tif is resampled from EPSG:32634 to EPSG:32633 onto the pixel grid of west.tif " in printed
    assert ", nearest neighbour\n" in printed
    assert "  note: west.tif and east_34n.tif overlap (about " in printed
    assert "west.tif's pixels are kept there, east_34n.tif fills only its nodata" in printed
    with rasterio.open(out) as mosaic, rasterio.open(alone) as single:
        assert mosaic.crs == single.crs and mosaic.res == single.res
        col, row = ~mosaic.transform @ (single.transform.c, single.transform.f)
        assert (col, row) == (round(col), round(row)) and row > 0  # the first scene's pixel grid, exactly
        col, row = round(col), round(row)
        inside = mosaic.read(1)[row : row + single.height, col : col + single.width]
        own = single.read(1)
    # a U-Net's label depends on its whole window: where every window holding a pixel lies inside
    # the first scene (a window's side from its edges), the map is the single scene's, byte for byte;
    # the old grid, 0.3 px off and every pixel resampled, matched on 74 %
    np.testing.assert_array_equal(inside[64:-64, 64:-64], own[64:-64, 64:-64])
    assert (inside == own).mean() > 0.8


# --- what users hand it: NaN, other dtypes and scales, other band counts -----------------------


def test_scenes_as_users_have_them(
    tmp_path: Path, checkpoint: Path, scene: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with rasterio.open(scene) as src:
        data = src.read()
    assert main(predict(checkpoint, [scene], tmp_path / "ref" / "p.tif")) == 0
    reference = labels(tmp_path / "ref" / "p.tif")
    # the same values in another dtype: the same map
    for dtype in ("float32", "int32"):
        other = rewrite(scene, tmp_path / f"{dtype}.tif", data.astype(dtype))
        assert main(predict(checkpoint, [other], tmp_path / dtype / "p.tif")) == 0
        np.testing.assert_array_equal(labels(tmp_path / dtype / "p.tif"), reference)
    capsys.readouterr()
    # NaN pixels (the file's nodata is 0): written as nodata, said so; they used to turn whole windows into class 0
    holes = data.astype("float32")
    holes[:, 40:46, 50:56] = np.nan
    holes[2, 10, 10] = np.inf
    nan = rewrite(scene, tmp_path / "nan.tif", holes)
    assert main(predict(checkpoint, [nan], tmp_path / "nan" / "p.tif")) == 0
    assert (
        "note: the scene holds NaN or infinite values: those pixels are written as nodata (255)"
        in capsys.readouterr().out
    )
    predicted = labels(tmp_path / "nan" / "p.tif")
    assert (predicted[40:46, 50:56] == 255).all() and predicted[10, 10] == 255
    # the rest is predicted as before, up to the windows that held them (a U-Net sees its whole window);
    # NaN reaching the model made about half of this map one class
    valid = predicted != 255
    assert (predicted[valid] == reference[valid]).mean() > 0.95
    # values on another scale (reflectances for counts; bytes for 16 bits): one line
    for name, values in (("reflectance", (data / 10_000).astype("float32")), ("bytes", (data // 64).astype("uint8"))):
        path = rewrite(scene, tmp_path / f"{name}.tif", values)
        line = one_line(capsys, predict(checkpoint, [path], tmp_path / name / "p.tif"))
        assert line.startswith(
            f"geocl predict: error: {path}: its values are not on the scale of the model's training data"
        )
        assert not (tmp_path / name / "p.tif").exists()
    # another band count: one line
    three = rewrite(scene, tmp_path / "three.tif", data[:3])
    line = one_line(capsys, predict(checkpoint, [three], tmp_path / "three" / "p.tif"))
    assert line == f"geocl predict: error: {three}: scene has 3 bands but the model was trained on 4"
    # nothing to predict: one line, no output left
    empty = rewrite(scene, tmp_path / "empty.tif", np.full(data.shape, np.nan, "float32"))
    line = one_line(capsys, predict(checkpoint, [empty], tmp_path / "empty" / "p.tif"))
    assert (
        line
        == f"geocl predict: error: {empty}: holds no pixel to predict: every pixel is nodata (0 in every band), NaN or infinite"
    )
    assert files(tmp_path / "empty") == {}
