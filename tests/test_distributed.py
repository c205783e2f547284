"""Tests for geocl.distributed: many scenes on Dask, against the serial path.

Dask workers import the functions they run, this module's too: its top-level imports
stay light (no torch) so that a worker starts fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from geocl import distributed
from geocl.distributed import DONE_FILE, SceneTask, run_scene_tasks, scene_names, tile_scenes, tile_tasks
from geocl.errors import GeoclError

SMALL_TILES = {"size": 64, "stride": 64, "split_block": 128}


def _files(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` except the done markers."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != DONE_FILE
    }


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """Three 256 px labelled scenes a, b, c (images and masks)."""
    from geocl.data.synthetic import make_scene

    root = tmp_path_factory.mktemp("scenes")
    images, masks = [], []
    for seed, name in enumerate("abc"):
        files = make_scene(root / f"made-{name}", size=256, seed=seed)
        images.append(Path(shutil.copy(files.image, root / f"{name}.tif")))
        masks.append(Path(shutil.copy(files.mask, root / f"{name}_mask.tif")))
    return images, masks


@pytest.fixture(scope="module")
def tiling_options() -> object:
    from geocl.data.tiler import TilingOptions

    return TilingOptions(**SMALL_TILES)


@pytest.fixture(scope="module")
def serial(
    tmp_path_factory: pytest.TempPathFactory, scenes: tuple[list[Path], list[Path]], tiling_options: object
) -> Path:
    """The three scenes tiled one after the other in this process: the reference."""
    out = tmp_path_factory.mktemp("serial")
    images, masks = scenes
    result = tile_scenes(images, out, masks=masks, options=tiling_options, workers=0, progress=False)
    assert [outcome.status for outcome in result.outcomes] == ["done"] * 3 and result.where == "serial"
    return out


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """A local cluster of 2 worker processes that reports a task's lost worker at once
    (no retries on other workers), as the address ``--scheduler`` takes."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        )
    with cluster:
        yield cluster.scheduler_address


def _write_note(out: Path, text: str) -> str:
    """Light work (no torch in the worker): a note in the scene's folder."""
    (out / "note.txt").write_text(text)
    return f"wrote {text}"


def test_several_scenes_run_on_a_local_cluster_by_default_and_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    tasks = [
        SceneTask(name, tmp_path / name, partial(_write_note, tmp_path / name, name), {"scene": name})
        for name in ("a", "b", "c")
    ]
    result = run_scene_tasks(tasks, progress=False)
    assert result.where == f"local Dask cluster of {min(3, os.cpu_count() or 1)} workers"  # one a scene, <= CPUs
    assert [(o.name, o.status, o.summary) for o in result.outcomes] == [
        ("a", "done", "wrote a"),
        ("b", "done", "wrote b"),
        ("c", "done", "wrote c"),
    ]
    assert all((tmp_path / name / "note.txt").read_text() == name for name in ("a", "b", "c"))
    captured = capfd.readouterr()  # the file descriptors: the workers' output too
    assert "distributed" not in captured.err + captured.out  # no Dask logging unless --verbose


def test_a_local_two_worker_cluster_writes_the_serial_files_byte_for_byte(
    tmp_path: Path, scenes: tuple[list[Path], list[Path]], tiling_options: object, serial: Path, scheduler: str
) -> None:
    images, masks = scenes
    result = tile_scenes(images, tmp_path, masks=masks, options=tiling_options, scheduler=scheduler, progress=False)
    assert result.where == f"Dask scheduler {scheduler}" and not result.failed
    reference = _files(serial)
    assert len(reference) > 3 * 10 and _files(tmp_path) == reference  # tiles, masks, index, tiles.json, map
    for outcome in result.outcomes:  # each scene in its own folder, marked done with its summary
        marker = json.loads((tmp_path / outcome.name / DONE_FILE).read_text())
        assert marker["scene"] == outcome.name and marker["summary"] == outcome.summary
        assert "tiles in" in outcome.summary and outcome.seconds > 0

    again = tile_scenes(images, tmp_path, masks=masks, options=tiling_options, workers=2, progress=False)
    assert [outcome.status for outcome in again.outcomes] == ["skipped"] * 3
    assert again.where == "nothing left to run"  # no cluster started for finished scenes


def test_a_corrupt_scene_is_named_while_the_others_finish(
    tmp_path: Path, scenes: tuple[list[Path], list[Path]], scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from geocl.cli import main

    images, _ = scenes
    corrupt = tmp_path / "in" / "broken.tif"
    corrupt.parent.mkdir()
    corrupt.write_bytes(images[1].read_bytes()[:4000])  # a cut download
    argv = [
        "tile",
        str(images[0]),
        str(corrupt),
        str(images[2]),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--size",
        "64",
        "--split-block",
        "128",
        "--scheduler",
        scheduler,
    ]
    assert main(argv) == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert error.count("\n") == 0 and error.startswith("geocl tile: error: 1 of 3 scenes failed (broken: ")
    assert str(corrupt) in error and "rerun the same command" in error
    assert "a:\n" in captured.out and "broken FAILED:" in captured.out
    for name in ("a", "c"):
        assert (tmp_path / "out" / name / DONE_FILE).exists() and (tmp_path / "out" / name / "tiles.png").exists()
    assert not (tmp_path / "out" / "broken" / DONE_FILE).exists()


def _die_after(work: Callable[[], str]) -> str:
    """Do the scene's work, then kill this worker before it can mark the scene done."""
    work()
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def test_a_scene_whose_worker_was_killed_is_redone_on_rerun(
    tmp_path: Path, scenes: tuple[list[Path], list[Path]], tiling_options: object, serial: Path, scheduler: str
) -> None:
    images, masks = scenes
    tasks = tile_tasks(images, tmp_path, masks=masks, options=tiling_options)
    tasks[1] = replace(tasks[1], work=partial(_die_after, tasks[1].work))
    first = run_scene_tasks(tasks, scheduler=scheduler, progress=False)
    assert [outcome.status for outcome in first.outcomes] == ["done", "failed", "done"], first.describe()
    assert "b: its worker died" in (first.failure_message() or "")
    assert (tmp_path / "b" / "tiles.json").exists() and not (tmp_path / "b" / DONE_FILE).exists()

    # the rerun (here in this process: a restarted worker would import torch again) skips
    # the finished scenes and redoes b, resuming from the tiles its killed worker wrote
    rerun = tile_scenes(images, tmp_path, masks=masks, options=tiling_options, workers=0, progress=False)
    assert [outcome.status for outcome in rerun.outcomes] == ["skipped", "done", "skipped"]
    assert "already there 15" in rerun.outcomes[1].summary
    assert _files(tmp_path) == _files(serial)


def test_serially_a_failed_scene_does_not_stop_the_others(tmp_path: Path) -> None:
    def fails() -> str:
        raise GeoclError("cannot read pixels", path="x.tif")

    tasks = [
        SceneTask("one", tmp_path / "one", lambda: "fine", {"n": 1}),
        SceneTask("two", tmp_path / "two", fails, {"n": 2}),
        SceneTask("three", tmp_path / "three", lambda: "also fine", {"n": 3}),
    ]
    result = run_scene_tasks(tasks, workers=0, progress=False)
    assert [(o.name, o.status) for o in result.outcomes] == [("one", "done"), ("two", "failed"), ("three", "done")]
    assert result.outcomes[1].summary == "x.tif: cannot read pixels"
    message = result.failure_message() or ""
    assert message.startswith("1 of 3 scenes failed (two: x.tif: cannot read pixels)")
    assert result.outcomes[0].summary == "fine" and not (tmp_path / "two" / DONE_FILE).exists()


def test_a_rerun_redoes_a_scene_whose_key_changed_and_skips_the_others(tmp_path: Path) -> None:
    calls: list[str] = []

    def work(name: str) -> str:
        calls.append(name)
        return f"{name} ok"

    tasks = [SceneTask(name, tmp_path / name, partial(work, name), {"size": 64}) for name in ("a", "b")]
    run_scene_tasks(tasks, workers=0, progress=False)
    (tmp_path / "a" / DONE_FILE).write_text("{cut")  # a damaged marker is no marker
    tasks[1] = replace(tasks[1], key={"size": 128})  # another option: not the finished result
    result = run_scene_tasks(tasks, workers=0, progress=False)
    assert calls == ["a", "b", "a", "b"] and [o.status for o in result.outcomes] == ["done", "done"]
    assert run_scene_tasks(tasks, workers=0, progress=False).outcomes[0].status == "skipped"
    assert calls == ["a", "b", "a", "b"]


def test_scene_names_come_from_files_and_folders_and_must_differ(tmp_path: Path) -> None:
    (tmp_path / "tiles_2020").mkdir()
    assert scene_names([tmp_path / "north.tif", tmp_path / "south.TIF", tmp_path / "tiles_2020"]) == [
        "north",
        "south",
        "tiles_2020",
    ]
    with pytest.raises(GeoclError, match="share the output folder 'north'"):
        scene_names([tmp_path / "north.tif", tmp_path / "other" / "north.tif"])


def test_an_unreachable_scheduler_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "SCHEDULER_TIMEOUT", "1s")
    tasks = [SceneTask("a", tmp_path / "a", lambda: "ok", {})]
    with pytest.raises(GeoclError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9") as caught:
        run_scene_tasks(tasks, scheduler="tcp://127.0.0.1:9", progress=False)
    assert caught.value.key == "scheduler"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a.tif", "--workers", "2"], "--workers: runs several scenes on Dask; one SCENE is tiled here"),
        (["a.tif", "b.tif", "--workers", "2", "--scheduler", "tcp://x:1"], "--scheduler: give --workers"),
        (["a.tif", "b.tif", "--mask", "m.tif"], "--mask: give one a SCENE, in the same order: 2 scenes but 1 masks"),
        (["a.tif", "--mask-nodata", "0"], "--mask-nodata: needs a class mask: give --mask too"),
    ],
)
def test_tile_options_for_many_scenes_are_checked_first(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from geocl.cli import main

    assert main(["tile", *argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path) -> Path:
    from geocl.finetune.train import run_finetune

    short = {"max_epochs": 1, "steps_per_epoch": 2, "val_every": 1, "batch_size": 4, "crop": 32, "progress": False}
    out = tmp_path_factory.mktemp("finetune") / "run"
    return run_finetune(
        tiles=tiny_tiles, out=out, encoder="test_resnet", label_fraction=0.2, seed=0, **short
    ).checkpoint


PREDICT = {"window": 64, "overlap": 16, "block": 256}


def _predict_cli(checkpoint: Path, scenes: list[Path], out: Path, *extra: str) -> int:
    from geocl.cli import main

    return main(
        [
            "predict",
            str(checkpoint),
            *map(str, scenes),
            "--out",
            str(out),
            "--window",
            "64",
            "--overlap",
            "16",
            "--block",
            "256",
            *extra,
        ]
    )


def test_predict_with_workers_takes_each_scene_on_its_own(
    tmp_path: Path, scenes: tuple[list[Path], list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    images, _ = scenes
    not_a_checkpoint = tmp_path / "model.ckpt"
    not_a_checkpoint.write_bytes(b"nothing")
    assert _predict_cli(not_a_checkpoint, images[:2], tmp_path / "out", "--workers", "0") == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after the bar over the scenes
    assert error.startswith("geocl predict: error: 2 of 2 scenes failed (a: ") and "; b: " in error
    assert "model.ckpt" in error and error.endswith("); rerun the same command to redo the failed ones")
    assert (
        _predict_cli(
            not_a_checkpoint, images[:2], tmp_path / "out.tif", "--workers", "0", "--polygons", str(tmp_path / "p.gpkg")
        )
        == 2
    )
    assert "polygons are written for one scene" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_several_scenes_each_into_its_folder_and_skip_them_on_rerun(
    tmp_path: Path, checkpoint: Path, scenes: tuple[list[Path], list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    import rasterio

    images, _ = scenes
    assert _predict_cli(checkpoint, images[:2], tmp_path / "out", "--workers", "0") == 0
    assert capsys.readouterr().out.startswith("2 scenes (serial, ")
    for image in images[:2]:
        folder = tmp_path / "out" / image.stem
        with rasterio.open(folder / f"{image.stem}.tif") as prediction, rasterio.open(image) as scene:
            assert prediction.shape == scene.shape and prediction.transform == scene.transform
        assert (folder / f"{image.stem}.png").exists() and (folder / DONE_FILE).exists()

    assert _predict_cli(checkpoint, images[:2], tmp_path / "out", "--workers", "0") == 0
    assert "0 done now, 2 done earlier" in capsys.readouterr().out


@pytest.mark.slow
def test_predictions_on_a_cluster_equal_the_serial_ones(
    tmp_path: Path, checkpoint: Path, scenes: tuple[list[Path], list[Path]], scheduler: str
) -> None:
    import numpy as np
    import rasterio

    from geocl.distributed import predict_scenes

    images, _ = scenes
    serial = predict_scenes(checkpoint, images, tmp_path / "serial", options=PREDICT, workers=0, progress=False)
    cluster = predict_scenes(
        checkpoint, images, tmp_path / "cluster", options=PREDICT, scheduler=scheduler, progress=False
    )
    assert not serial.failed and not cluster.failed
    for image in images:
        paths = [tmp_path / run / image.stem / f"{image.stem}.tif" for run in ("serial", "cluster")]
        with rasterio.open(paths[0]) as one, rasterio.open(paths[1]) as other:
            np.testing.assert_array_equal(one.read(), other.read())
