"""Atomic writes and the writes a disk refuses: one error naming the file and the reason,
nothing half-written left under the final name, what was there before kept byte for byte."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pickle
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import geocl.io
from geocl.errors import GeoclError, OutputExistsError
from geocl.io import (
    OutputWriteError,
    atomic_path,
    atomic_write_text,
    gdal_write_errors,
    output_folder,
    save_figure,
    write_failure,
)

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


@contextlib.contextmanager
def small_disk(parent: Path, size: str = "64k") -> Iterator[Path]:
    """A folder under ``parent`` on a tmpfs of ``size``: a real full disk (root and mount needed, else the test is skipped)."""
    folder = parent / f"disk-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    try:
        mounted = (
            os.geteuid() == 0
            and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, timeout=20
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        mounted = False
    if not mounted:
        pytest.skip("cannot mount a small tmpfs here (root and mount needed)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, timeout=20)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (:func:`small_disk`)."""
    with small_disk(tmp_path) as folder:
        yield folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_full_disk_names_the_final_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    final = tmp_path / "result.json"
    atomic_write_text(final, "the complete earlier result")
    with pytest.raises(OutputWriteError) as error, atomic_path(final) as temp:
        temp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(temp))
    assert str(error.value) == f"{final}: cannot write (No space left on device)"
    assert error.value.path == str(final) and error.value.filename == str(final)  # never the temporary name
    assert isinstance(error.value, GeoclError) and isinstance(error.value, OSError)
    assert error.value.errno == errno.ENOSPC
    assert _files(tmp_path) == {"result.json": b"the complete earlier result"}  # no temporary file left


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO])
def test_every_refusal_of_the_disk_is_one_error(tmp_path: Path, number: int) -> None:
    with pytest.raises(OutputWriteError, match=os.strerror(number)), atomic_path(tmp_path / "a.txt"):
        raise OSError(number, os.strerror(number))
    assert list(tmp_path.iterdir()) == []


def test_bugs_pass_through_as_they_are(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a bug"), atomic_path(tmp_path / "a.txt") as temp:
        temp.write_text("x")
        raise ValueError("a bug")
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "b.txt"):
        raise FileNotFoundError(errno.ENOENT, "missing", "elsewhere")  # not the disk's refusal
    assert list(tmp_path.iterdir()) == []


def test_another_file_refused_inside_a_write_is_named_as_it_is(tmp_path: Path) -> None:
    elsewhere = tmp_path / "inputs" / "scene.tif"
    with pytest.raises(OutputWriteError) as error, atomic_path(tmp_path / "out" / "a.txt"):
        raise PermissionError(errno.EACCES, "Permission denied", str(elsewhere))
    assert str(error.value) == f"{elsewhere}: Permission denied"


def test_library_errors_that_word_the_reason(tmp_path: Path) -> None:
    class SQLiteFailure(Exception):
        __module__ = "pyogrio.errors"

    failure = write_failure(
        SQLiteFailure("sqlite3_exec(INSERT ...) failed: database or disk is full"), tmp_path / "i.gpkg"
    )
    assert failure is not None and str(failure) == f"{tmp_path / 'i.gpkg'}: cannot write (No space left on device)"
    # the same library failing on a disk with room to spare is no refusal of the disk
    assert write_failure(SQLiteFailure("no such table: gpkg_contents"), tmp_path / "i.gpkg") is None
    assert write_failure(RuntimeError("No space left on device"), tmp_path / "i.gpkg") is None  # not a C library


def test_library_errors_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class GdalFailure(Exception):
        __module__ = "rasterio._err"

    full = SimpleNamespace(f_flag=0, f_bavail=3, f_frsize=4096)
    monkeypatch.setattr(geocl.io.os, "statvfs", lambda path: full)
    failure = write_failure(GdalFailure("TIFFAppendToStrip:Write error at scanline 32"), tmp_path / "p.tif")
    assert failure is not None and failure.errno == errno.ENOSPC
    assert str(failure) == f"{tmp_path / 'p.tif'}: cannot write (No space left on device: 0.0 MiB free on its disk)"
    monkeypatch.setattr(
        geocl.io.os, "statvfs", lambda path: SimpleNamespace(f_flag=os.ST_RDONLY, f_bavail=10**9, f_frsize=4096)
    )
    assert write_failure(GdalFailure("cannot open"), tmp_path / "p.tif").errno == errno.EROFS  # type: ignore[union-attr]


def test_the_error_crosses_processes() -> None:
    error = OutputWriteError("/data/out/pred.tif", errno.ENOSPC)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.path == error.path and copy.errno == errno.ENOSPC


def _write_geotiff(path: Path, side: int) -> None:
    data = np.random.default_rng(0).integers(0, 60_000, (4, side, side)).astype("uint16")
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": 4,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 5_100_000, 10, 10),
        "compress": "deflate",
    }
    with atomic_path(path) as temp, rasterio.open(temp, "w", **profile) as dst:
        dst.write(data)


def test_a_geotiff_on_a_full_disk_is_refused_not_cut(tiny_disk: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # rasterio only logs what GDAL reports when it closes a file: a small GeoTIFF on a full disk
    # used to "succeed" as an empty file under its final name
    for side in (128, 512):  # flushed at close, written while writing
        with pytest.raises(OutputWriteError, match="No space left on device"):
            _write_geotiff(tiny_disk / f"t{side}.tif", side)
    assert list(tiny_disk.iterdir()) == []
    assert "_tiffWriteProc" not in capfd.readouterr().err  # libtiff's message collected, not printed


def test_a_png_on_a_full_disk(tiny_disk: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 8))
    figure.subplots().imshow(np.random.default_rng(0).random((400, 400)))
    with pytest.raises(OutputWriteError, match=f"{tiny_disk / 'plot.png'}: cannot write"):
        save_figure(figure, tiny_disk / "plot.png")
    assert list(tiny_disk.iterdir()) == []


def test_a_title_wider_than_the_figure_is_kept_whole(tmp_path: Path) -> None:
    from matplotlib.figure import Figure
    from PIL import Image

    figure = Figure(figsize=(3, 2))
    figure.subplots().plot([0, 1])
    title = figure.suptitle("a caption much longer than three inches of figure at ten points " * 2)
    figure.canvas.draw()
    title_px = title.get_window_extent().width  # at the figure's 100 dpi
    assert title_px > 300  # it does stick out of the 3-inch canvas
    with Image.open(save_figure(figure, tmp_path / "wide.png", dpi=100)) as picture:
        assert picture.size[0] >= title_px


def test_the_write_guard_leaves_the_process_as_it_found_it() -> None:
    import logging

    before = [logging.getLogger(name).level for name in geocl.io._GDAL_LOGGERS]
    handlers = [list(logging.getLogger(name).handlers) for name in geocl.io._GDAL_LOGGERS]
    with gdal_write_errors(), gdal_write_errors() as inner:  # nested: one switch
        assert inner == []
    assert [logging.getLogger(name).level for name in geocl.io._GDAL_LOGGERS] == before
    assert [list(logging.getLogger(name).handlers) for name in geocl.io._GDAL_LOGGERS] == handlers
    for library in geocl.io._loaded_libtiffs():  # libtiff's own printer is back, not the collector
        handler = library.TIFFSetErrorHandler(None)
        library.TIFFSetErrorHandler(handler)
        assert handler is not None and handler != ctypes.cast(geocl.io._libtiff_collector(), ctypes.c_void_p).value


def test_gdal_errors_logged_instead_of_raised(tmp_path: Path) -> None:
    import logging

    gdal = logging.getLogger("rasterio._env")
    with pytest.raises(OutputWriteError) as error, atomic_path(tmp_path / "cut.tif") as temp:
        temp.write_bytes(b"II*\0")
        gdal.info("GDAL signalled an error: err_no=%r, msg=%r", 1, "TIFFAppendToStrip:Write error at scanline 32")
    assert str(error.value) == (
        f"{tmp_path / 'cut.tif'}: cannot write (Input/output error: TIFFAppendToStrip:Write error at scanline 32)"
    )
    with atomic_path(tmp_path / "fine.tif") as temp:  # GDAL's other complaints are no failed write
        temp.write_bytes(b"II*\0")
        gdal.info("GDAL signalled an error: err_no=%r, msg=%r", 1, 'TIFFSetField: Cannot modify tag "Photometric"')
    assert _files(tmp_path) == {"fine.tif": b"II*\0"}


def test_an_output_folder_that_is_a_file_is_an_output_exists_error(tmp_path: Path) -> None:
    """The error is also the built-in a caller may catch (FileExistsError), with the same message."""
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    with pytest.raises(OutputExistsError) as raised:
        geocl.io.check_output_folder(taken, key="out")
    assert isinstance(raised.value, FileExistsError)
    assert str(raised.value) == f"{taken}: is a file, not a folder (given by out); choose another output folder"
    assert taken.read_text() == "keep me"


def test_output_folder_removes_the_empty_folders_it_made_when_the_job_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GeoclError, match="refused"), output_folder(tmp_path / "a" / "b" / "run") as out:
        assert out.is_dir()
        raise GeoclError("refused")
    assert list(tmp_path.iterdir()) == []  # a, a/b and a/b/run were all made for the job

    with pytest.raises(GeoclError), output_folder(tmp_path / "c" / "run") as out:
        (out / "partial.txt").write_text("written before the refusal")
        raise GeoclError("refused later")
    assert (tmp_path / "c" / "run" / "partial.txt").is_file()  # what the job wrote stays

    with pytest.raises(ValueError), output_folder(tmp_path / "d") as out:
        raise ValueError("a bug, not a refusal")
    assert out.is_dir()
