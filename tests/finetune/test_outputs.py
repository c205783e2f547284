"""Earlier results are never lost or mixed: finetune refuses a folder holding a run,
metrics.json is strict JSON, predict checks its outputs before any work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from geocl.cli import main
from geocl.errors import GeoclError
from geocl.finetune import inference
from geocl.finetune.predict import predict_scene
from geocl.finetune.run_folder import check_finetune_folder, strict_json
from geocl.finetune.train import run_finetune
from tests.finetune.test_predict import CLASS_VALUES, IDENTITY, argmax_model, class_scene

#: One epoch, validation every 3: before the fix, no validation ran and metrics.json got NaN.
SHORT = {"max_epochs": 1, "steps_per_epoch": 2, "val_every": 3, "batch_size": 4, "crop": 32, "progress": False}


def _strict(text: str) -> dict:
    """json.loads that refuses NaN and Infinity, as strict JSON readers do."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path) -> Path:
    """A finished finetuning run with fewer epochs than the validation interval."""
    out = tmp_path_factory.mktemp("ft") / "run"
    run_finetune(tiles=tiny_tiles, out=out, encoder="test_resnet", label_fraction=0.2, seed=0, **SHORT)
    return out


def test_fewer_epochs_than_the_validation_interval_still_validates_and_writesstrict_json(finished: Path) -> None:
    metrics = _strict((finished / "metrics.json").read_text())
    assert isinstance(metrics["val_miou"], float) and 0.0 <= metrics["val_miou"] <= 1.0
    assert isinstance(metrics["miou"], float)
    assert Path(metrics["checkpoint"]).name == "best.ckpt" and Path(metrics["checkpoint"]).exists()
    assert sorted(p.name for p in (finished / "checkpoints").iterdir()) == ["best.ckpt"]


def test_metrics_are_strict_json_whatever_the_figures() -> None:
    cleaned = strict_json({"miou": float("nan"), "iou": [0.5, float("nan"), float("inf")], "seed": 0, "x": None})
    assert cleaned == {"miou": None, "iou": [0.5, None, None], "seed": 0, "x": None}
    assert _strict(json.dumps(cleaned, allow_nan=False))["iou"] == [0.5, None, None]


def test_finetune_refuses_a_folder_holding_a_run_and_keeps_it(finished: Path, tiny_tiles: Path) -> None:
    before = _digests(finished)
    with pytest.raises(GeoclError) as error:
        run_finetune(tiles=tiny_tiles, out=finished, encoder="test_resnet", label_fraction=0.2, seed=1, **SHORT)
    message = str(error.value)
    assert error.value.key == "out" and error.value.path == str(finished)
    assert message.startswith(f"{finished}: holds a finetuning run (metrics.json, checkpoints/best.ckpt)")
    assert "seed 0 (now 1)" in message and "choose another out" in message
    assert _digests(finished) == before  # no best-v1.ckpt, metrics.json untouched


def test_the_refusal_comes_before_any_work(finished: Path, tmp_path: Path) -> None:
    # tiles that do not exist: reading them would fail with another message
    with pytest.raises(GeoclError, match="holds a finetuning run .* made with other options: tiles"):
        run_finetune(tiles=tmp_path / "missing", out=finished, encoder="test_resnet", label_fraction=0.2, **SHORT)


def test_an_interrupted_run_is_refused_too_and_an_empty_folder_is_fine(tmp_path: Path) -> None:
    out = tmp_path / "ft"
    assert check_finetune_folder(out) == out and out.is_dir()  # created
    (out / "logs").mkdir()  # logs alone are no run
    assert check_finetune_folder(out) == out
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    with pytest.raises(GeoclError, match=r"holds a finetuning run \(checkpoints/last.ckpt\); a new run"):
        check_finetune_folder(out, {"seed": 0})
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == b"weights"


def test_same_options_are_said_to_be_the_same(finished: Path) -> None:
    with pytest.raises(GeoclError, match="made with the same options"):
        check_finetune_folder(finished, {"label_fraction": 0.2, "seed": 0, "encoder": "test_resnet", "arch": "unet"})


def test_cli_finetune_into_a_finished_folder_exits_2_in_one_line(
    finished: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _digests(finished)
    status = main(["finetune", "--tiles", str(tiny_tiles), "--out", str(finished), "--encoder-name", "test_resnet"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith(f"geocl finetune: error: {finished}: holds a finetuning run")
    assert _digests(finished) == before


# ------------------------------------------------------------------ predict


@pytest.fixture
def scene(tmp_path: Path, write_raster) -> Path:  # type: ignore[no-untyped-def]
    return write_raster(tmp_path / "scene.tif", class_scene(40, 40)[1])


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the model is loaded or a window predicted."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(inference, "load_segmenter", boom)
    monkeypatch.setattr("geocl.finetune.predict.sliding_window_logits", boom)


def test_predict_refuses_a_folder_as_out_before_any_work(
    tmp_path: Path, scene: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_work(monkeypatch)
    folder = tmp_path / "pred.tif"
    (folder / "kept.txt").parent.mkdir()
    (folder / "kept.txt").write_text("kept")
    for call in (
        lambda: inference.predict_with_checkpoint(tmp_path / "model.ckpt", scene, folder),
        lambda: predict_scene(
            argmax_model(), scene, folder, normalizer=IDENTITY, class_values=CLASS_VALUES, progress=False
        ),
    ):
        with pytest.raises(GeoclError, match="is a folder, not a file") as error:
            call()
        assert error.value.key == "out" and error.value.path == str(folder)
    assert (folder / "kept.txt").read_text() == "kept"


def test_predict_refuses_bad_polygons_and_unwritable_folders_before_any_work(
    tmp_path: Path, scene: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_work(monkeypatch)
    (tmp_path / "polys.gpkg").mkdir()
    with pytest.raises(GeoclError, match="is a folder") as error:
        inference.predict_with_checkpoint(
            tmp_path / "m.ckpt", scene, tmp_path / "p.tif", polygons=tmp_path / "polys.gpkg"
        )
    assert error.value.key == "polygons"
    with pytest.raises(GeoclError, match="would overwrite the prediction") as error:
        inference.predict_with_checkpoint(tmp_path / "m.ckpt", scene, tmp_path / "p.tif", polygons=tmp_path / "p.tif")
    assert error.value.key == "polygons"
    with pytest.raises(GeoclError, match="overwrite the scene") as error:
        inference.predict_with_checkpoint(tmp_path / "m.ckpt", scene, scene)
    assert error.value.key == "out"

    # a folder without write permission (root ignores chmod: fake os.access)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = __import__("os").access
    monkeypatch.setattr(
        "geocl.io.os.access", lambda path, mode: False if Path(path) == locked else real_access(path, mode)
    )
    for out, polygons, key in ((locked / "p.tif", None, "out"), (tmp_path / "p.tif", locked / "p.gpkg", "polygons")):
        with pytest.raises(GeoclError, match="not writable") as error:
            inference.predict_with_checkpoint(tmp_path / "m.ckpt", scene, out, polygons=polygons)
        assert error.value.key == key and error.value.path == str(locked)
    assert list(tmp_path.glob("*.tif")) == [scene] and not list(tmp_path.glob("*.png"))


def test_cli_predict_into_a_folder_exits_2_in_one_line(
    tmp_path: Path, scene: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_work(monkeypatch)
    (tmp_path / "out").mkdir()
    status = main(["predict", str(tmp_path / "m.ckpt"), str(scene), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in captured.err
    assert (
        lines[0]
        == f"geocl predict: error: {tmp_path / 'out'}: is a folder, not a file (given by --out); give a file name"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "scene.tif"]


def test_compare_redoes_a_real_finetune_beside_the_old_one(tmp_path: Path, tiny_tiles: Path) -> None:
    """A recipe pretrained afresh: compare moves the old run aside and run_finetune starts clean."""
    from types import SimpleNamespace

    from geocl.evaluation import SegmentationFinetune
    from geocl.evaluation.protocol import Subset
    from geocl.experiments.rows import evaluate_row as _evaluate_row

    evaluation = SegmentationFinetune({**SHORT, "progress": False})
    recipe = SimpleNamespace(data=SimpleNamespace(tiles=tiny_tiles), encoder=SimpleNamespace(name="test_resnet"))
    said: list[str] = []

    def row() -> dict:
        return _evaluate_row(evaluation, tmp_path, "alpha", "simclr", recipe, None, Subset(0.2), 0, False, said.append)

    first = row()
    folder = tmp_path / "finetune" / "alpha-f0.2-s0"
    before = _digests(folder)
    second = row()
    assert first["status"] == second["status"] == "ok"
    assert _digests(tmp_path / "finetune" / "alpha-f0.2-s0.stale-1") == before  # old run intact, byte for byte
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.ckpt"]  # no best-v1.ckpt
    assert _strict((folder / "metrics.json").read_text())["checkpoint"] == str(folder / "checkpoints" / "best.ckpt")
    assert said == [
        f"  {folder} held an earlier run (its encoder was pretrained again); moved it to alpha-f0.2-s0.stale-1"
    ]
