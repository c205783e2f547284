"""Bad input through the CLI: one line naming the file or option, exit 2, nothing lost."""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geocl.cli import main
from tests.conftest import RasterWriter, coordinate_image


@pytest.fixture
def scene(tmp_path: Path, write_raster: RasterWriter) -> Path:
    return write_raster(tmp_path / "scene" / "a.tif", coordinate_image(128, 128), nodata=0)


def _run_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status = main(list(argv))
    captured = capsys.readouterr()
    assert status == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def _tile(scene: Path | str, out: Path, *extra: str) -> list[str]:
    return ["tile", str(scene), "--out", str(out), "--size", "32", "--quiet", *extra]


def test_non_raster_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.tif"
    bad.write_text("this is not a raster")
    line = _run_error(capsys, *_tile(bad, tmp_path / "out"))
    assert str(bad) in line and "not a readable raster" in line


def test_corrupt_geotiff(tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt.tif"
    data = scene.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    line = _run_error(capsys, *_tile(corrupt, tmp_path / "out"))
    assert str(corrupt) in line


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _run_error(capsys, *_tile(empty, tmp_path / "out"))
    assert str(empty) in line and "no GeoTIFF" in line


def test_raster_without_crs(tmp_path: Path, write_raster: RasterWriter, capsys: pytest.CaptureFixture[str]) -> None:
    plain = write_raster(tmp_path / "plain.tif", coordinate_image(64, 64), crs=None)
    line = _run_error(capsys, *_tile(plain, tmp_path / "out"))
    assert str(plain) in line and "no CRS" in line


def test_image_and_mask_that_do_not_overlap(
    tmp_path: Path, scene: Path, write_raster: RasterWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    far = write_raster(tmp_path / "mask.tif", np.ones((64, 64), np.uint8), origin=(700_000.0, 5_100_000.0))
    line = _run_error(capsys, *_tile(scene.parent, tmp_path / "out", "--mask", str(far)))
    assert "do not overlap" in line and str(scene.parent) in line


def test_inconsistent_band_counts(
    tmp_path: Path, write_raster: RasterWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    write_raster(folder / "a.tif", coordinate_image(64, 64, bands=3))
    odd = write_raster(folder / "b.tif", coordinate_image(64, 64, bands=4), origin=(500_640.0, 5_100_000.0))
    line = _run_error(capsys, *_tile(folder, tmp_path / "out"))
    assert str(odd) in line and "band counts" in line


def test_all_nodata_scene(tmp_path: Path, write_raster: RasterWriter, capsys: pytest.CaptureFixture[str]) -> None:
    blank = write_raster(tmp_path / "blank.tif", np.zeros((3, 64, 64), np.uint16), nodata=0)
    line = _run_error(capsys, *_tile(blank, tmp_path / "out"))
    assert str(blank) in line and "all nodata" in line


def test_roi_outside_the_scene(tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    roi = tmp_path / "roi.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1000, 1000)], crs="EPSG:32633").to_file(roi)
    line = _run_error(capsys, *_tile(scene, tmp_path / "out", "--roi", str(roi)))
    assert str(roi) in line and "outside the scene" in line


def test_tile_larger_than_scene(tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _run_error(capsys, "tile", str(scene), "--out", str(tmp_path / "out"), "--size", "512", "--quiet")
    assert "--size" in line and "larger than the scene" in line


def test_bad_input_keeps_what_was_written(tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(_tile(scene, out)) == 0
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    _run_error(capsys, *_tile(scene, out, "--max-nodata", "1.5"))
    _run_error(capsys, *_tile(tmp_path / "missing.tif", out))
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_console_script_prints_one_line_without_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "geocl.cli", *_tile(empty, tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("geocl tile: error:")


def test_tile_command_writes_tiles_index_and_plot(
    tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(_tile(scene, out, "--max-nodata", "1")) == 0
    printed = capsys.readouterr().out
    index = gpd.read_file(out / "tiles.gpkg")
    assert len(index) == 16 and f"{len(index)} tiles" in printed
    assert (out / "tiles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pretrain_with_a_misspelt_key_fails_before_training_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "grass.yaml"
    out = tmp_path / "run"
    line = _run_error(capsys, "pretrain", str(recipe), "data.batchsize=8", f"out={out}")
    assert "data.batchsize" in line and "data.batch_size" in line
    assert not out.exists(), "nothing may be written before the recipe is valid"


def test_predict_with_a_file_that_is_not_a_checkpoint(
    tmp_path: Path, scene: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "model.ckpt"
    bogus.write_text("not a checkpoint")
    line = _run_error(capsys, "predict", str(bogus), str(scene), "--out", str(tmp_path / "pred.tif"))
    assert str(bogus) in line and "checkpoint" in line
    assert not (tmp_path / "pred.tif").exists()


def test_make_natural_then_evaluate_a_random_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["make-natural", str(tmp_path / "toy"), "--classes", "3", "--per-class", "5", "--size", "16"]) == 0
    assert (tmp_path / "toy" / "cifar" / "data_batch_5").exists() and len(
        list((tmp_path / "toy" / "images").iterdir())
    ) == 3
    capsys.readouterr()
    argv = [
        "evaluate",
        "--encoder-name",
        "test_resnet",
        "--data",
        str(tmp_path / "toy" / "cifar"),
        "--format",
        "cifar",
        "--k",
        "3",
        "--probe-epochs",
        "2",
        "--out",
        str(tmp_path / "eval"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert written["k"] == 3 and written["val_images"] == 3 and written["method"] == "none"
    assert f"{written['knn_top1']:.4f}" in printed and f"{written['probe_top1']:.4f}" in printed


def test_evaluate_with_a_file_that_is_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "model.ckpt"
    bogus.write_text("not a checkpoint")
    line = _run_error(capsys, "evaluate", str(bogus), "--data", str(tmp_path), "--format", "cifar")
    assert str(bogus) in line and "checkpoint" in line
    assert not (tmp_path / "evaluation.json").exists()


def test_evaluate_on_a_missing_data_folder_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-folder"
    line = _run_error(
        capsys, "evaluate", "--encoder-name", "test_resnet", "--data", str(missing), "--format", "image_folder"
    )
    assert str(missing) in line


# ------------------------------------------------------------ options from the schema

#: Modules a bad option must be answered without (each takes seconds to import).
HEAVY = ("torch", "lightning", "torchgeo", "rasterio", "geopandas", "matplotlib")


def test_bad_option_is_answered_before_any_heavy_import(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from geocl.cli import main\n"
        f"status = main(['tile', 'x', '--out', {str(tmp_path / 'y')!r}, '--size', '0'])\n"
        "print('seconds', round(time.perf_counter() - start, 2))\n"
        f"print('heavy', [m for m in {HEAVY!r} if m in sys.modules])\n"
        "sys.exit(status)\n"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    wall = time.perf_counter() - start
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "geocl tile: error: --size: invalid value 0: must be at least 8"
    assert "heavy []" in result.stdout, result.stdout
    print(f"geocl tile --size 0: {wall:.2f} s wall in a fresh interpreter ({result.stdout.split()[1]} s in-process)")


FT = ["finetune", "--tiles", "t", "--out", "o"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*FT, "--label-fraction", "0"], "--label-fraction: invalid value 0: must be in (0, 1]"),
        (
            [*FT, "--arch", "unt"],
            "--arch: invalid value unt; did you mean 'unet'? (choices: unet, deeplabv3plus, dpt, linear)",
        ),
        ([*FT, "--epochs", "many"], "--epochs: invalid value many: expected an integer"),
        (
            ["predict", "a.ckpt", "s.tif", "--out", "p.tif", "--overlap", "300"],
            "--overlap: must be smaller than --window (256 px), got 300",
        ),
        (
            ["compare", "a.yaml", "--label-fractions", "0.1", "1.5"],
            "--label-fractions: invalid value 1.5: must be in (0, 1]",
        ),
        (["compare", "a.yaml", "--seeds", "0"], "--seeds: invalid value 0: must be at least 1"),
        (["compare", "a.yaml", "--k", "0"], "--k: invalid value 0: must be at least 1"),
        (
            ["evaluate", "a.ckpt", "--encoder-name", "resnet18", "--data", "d", "--format", "cifar"],
            "--encoder-name: give CHECKPOINT or --encoder-name, not both",
        ),
        (
            ["evaluate", "--data", "d", "--format", "cifr"],
            "--format: invalid value cifr; did you mean 'cifar'? (choices: cifar, image_folder)",
        ),
        (
            ["tile", "s.tif", "--out", "o", "--split", "0.5", "0.5", "0.5"],
            "--split: invalid value [0.5, 0.5, 0.5]: fractions must sum to 1, got 1.5",
        ),
        (
            ["tile", "s.tif", "--out", "o", "--stride", "64", "--split-block", "32"],
            "--split-block: must be at least --stride (64 px), got 32",
        ),
    ],
)
def test_bad_options_of_every_command_name_the_flag(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    line = _run_error(capsys, *argv)
    assert line == f"geocl {argv[0]}: error: {expected}"


def test_help_is_user_facing_text() -> None:
    from geocl import cli

    text = cli.build_parser().format_help()
    assert cli.DESCRIPTION.split(":")[0] in text and (cli.__doc__ or "").splitlines()[0] not in text
    assert "--verbose" in text
    finetune = _help("finetune")
    assert "--epochs EPOCHS" in finetune and "(default: 15)" in finetune and "--encoder-name" in finetune
    assert "{unet,deeplabv3plus,dpt,linear}" in finetune and "(default: 0.05)" in finetune
    compare = _help("compare")
    assert (
        "--label-fractions" in compare and "(default: 0.01 0.05 0.2)" in compare and "--override KEY=VALUE" in compare
    )
    assert "(default: runs/compare)" in compare and "--probe-epochs" in compare and "--temperature" in compare
    tile = _help("tile")
    assert "--split TRAIN VAL TEST" in tile and "(default: 0.7 0.15 0.15)" in tile and "(default: 256)" in tile


def _help(command: str) -> str:
    from geocl import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command].format_help()


def test_cli_defaults_come_from_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    from geocl import cli
    from geocl.recipes.cli_args import options_from_args
    from geocl.recipes.compare_options import CompareOptions
    from geocl.recipes.options import FinetuneCommand, FinetuneOptions

    models = (FinetuneOptions, FinetuneCommand, CompareOptions)
    try:
        for model in models[:2]:
            monkeypatch.setattr(model.model_fields["max_epochs"], "default", 42)
        for model in models:
            model.model_rebuild(force=True)
        assert "(default: 42)" in _help("finetune") and "(default: 42)" in _help("compare")
        args = cli.build_parser().parse_args(["finetune", "--tiles", "t", "--out", "o"])
        assert options_from_args(FinetuneCommand, args).max_epochs == 42
        args = cli.build_parser().parse_args(["compare", "a.yaml"])
        assert options_from_args(CompareOptions, args).finetune.max_epochs == 42
    finally:
        monkeypatch.undo()
        for model in models:
            model.model_rebuild(force=True)
    assert FinetuneCommand(tiles="t", out="o").max_epochs == 15 and "(default: 15)" in _help("finetune")


def test_compare_takes_the_retrieval_options_as_flags() -> None:
    from geocl import cli
    from geocl.recipes.cli_args import options_from_args
    from geocl.recipes.compare_options import CompareOptions

    argv = [
        "compare",
        "a.yaml",
        "--protocol",
        "retrieval",
        "--retrieval-max-steps",
        "7",
        "--retrieval-batch-size",
        "4",
        "--retrieval-override",
        "method.embed_dim=64",
        "--retrieval-override",
        "data.num_workers=0",
    ]
    options = options_from_args(CompareOptions, cli.build_parser().parse_args(argv))
    assert (options.retrieval.max_steps, options.retrieval.batch_size) == (7, 4)
    assert options.retrieval.overrides == ["method.embed_dim=64", "data.num_workers=0"]
    assert "--retrieval-max-steps" in _help("compare")


def test_probe_stages_reach_the_frozen_rows_and_the_linear_finetune(capsys: pytest.CaptureFixture[str]) -> None:
    from geocl import cli
    from geocl.recipes.cli_args import options_from_args
    from geocl.recipes.compare_options import CompareOptions
    from geocl.recipes.options import FinetuneCommand

    parser = cli.build_parser()
    argv = ["compare", "a.yaml", "--protocol", "both", "--probe-stages", "5", "4"]
    options = options_from_args(CompareOptions, parser.parse_args(argv))
    assert options.finetune.probe_stages == [4, 5]  # sorted, as the probe reads them
    assert options_from_args(CompareOptions, parser.parse_args(["compare", "a.yaml"])).finetune.probe_stages is None
    argv = ["finetune", "--tiles", "t", "--out", "o", "--arch", "linear", "--probe-stages", "4", "5"]
    assert options_from_args(FinetuneCommand, parser.parse_args(argv)).probe_stages == [4, 5]
    assert "--probe-stages STAGE [STAGE ...]" in _help("compare") and "--probe-stages" in _help("finetune")
    # set where no probe reads it: one line naming the flag, before any work
    line = _run_error(capsys, "compare", "a.yaml", "--probe-stages", "4", "5")
    assert line.startswith("geocl compare: error: --probe-stages: applies to the frozen protocol"), line
    line = _run_error(capsys, "finetune", "--tiles", "t", "--out", "o", "--probe-stages", "4")
    expected = "--probe-stages: applies to the dense linear probe only: give --arch linear, not unet"
    assert line == f"geocl finetune: error: {expected}"
    line = _run_error(capsys, "compare", "a.yaml", "--protocol", "frozen", "--probe-stages", "6")
    assert line.startswith("geocl compare: error: --probe-stages: invalid value 6: must be in [1, 5]"), line


def test_verbose_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from geocl import cli

    seen: list[bool] = []
    monkeypatch.setattr(cli, "configure_output", lambda verbose: seen.append(verbose))
    monkeypatch.setattr(cli, "_demo", lambda args: None)
    assert cli.main(["--verbose", "demo"]) == 0 and cli.main(["demo", "--verbose"]) == 0 and cli.main(["demo"]) == 0
    assert seen == [True, True, False]


def test_library_errors_name_option_fields_by_their_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from geocl import cli
    from geocl.errors import GeoclError

    def fails(args: argparse.Namespace) -> None:
        raise GeoclError("larger than the scene (100 x 100 px)", key="size")

    monkeypatch.setattr(cli, "_tile", fails)
    line = _run_error(capsys, "tile", "s.tif", "--out", "o")
    assert line == "geocl tile: error: --size: larger than the scene (100 x 100 px)"


def test_interrupt_exits_130_with_the_resume_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from geocl import cli

    def interrupted(args: argparse.Namespace) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_tile", interrupted)
    assert cli.main(["tile", "s.tif", "--out", "o"]) == 130
    assert capsys.readouterr().err.strip() == "geocl tile: interrupted; rerun the same command to resume"


def test_interrupted_pretrain_hints_at_resume(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from geocl import cli

    def interrupted(args: argparse.Namespace) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_pretrain", interrupted)
    assert cli.main(["pretrain", "r.yaml"]) == 130
    err = capsys.readouterr().err.strip()
    assert (
        err == "geocl pretrain: interrupted; rerun the same command with --resume to continue from the last checkpoint"
    )


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO])
def test_a_write_the_disk_refuses_is_one_line_naming_the_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], number: int
) -> None:
    """Outside geocl.io's atomic writers too (they raise their own): errno and file, no traceback."""
    from geocl import cli

    def refused(args: argparse.Namespace) -> None:
        raise OSError(number, os.strerror(number), "runs/x/metrics.csv")

    monkeypatch.setattr(cli, "_tile", refused)
    line = _run_error(capsys, "tile", "s.tif", "--out", "o")
    assert line == f"geocl tile: error: runs/x/metrics.csv: {os.strerror(number)}"


def test_other_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from geocl import cli

    for error in (RuntimeError("a bug"), FileNotFoundError(errno.ENOENT, "No such file", "x"), OSError("no errno")):

        def fails(args: argparse.Namespace, error: Exception = error) -> None:
            raise error

        monkeypatch.setattr(cli, "_tile", fails)
        with pytest.raises(type(error)):
            cli.main(["tile", "s.tif", "--out", "o"])


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`geocl ... | head -1`: the reader leaves early; no traceback, the shell's exit status for SIGPIPE."""
    script = (
        "import sys\n"
        "from geocl import cli\n"
        "def chatty(args):\n"
        "    for i in range(100000):\n"
        "        print('line', i)\n"
        "cli._make_scene = chatty\n"
        "sys.exit(cli.main(['make-scene', 'x']))\n"
    )
    result = subprocess.run(
        f'{sys.executable} -c "{script}" | head -1',
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.stdout == "line 0\n"
    assert "Traceback" not in result.stderr and result.stderr == ""


def test_a_positional_argument_read_by_a_flag_of_several_values_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    from geocl import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["compare", "--label-fractions", "0.05", "0.2", "recipes/simclr.yaml", "--out", "o"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2
    assert "required: RECIPE ('recipes/simclr.yaml' was read as a value of --label-fractions" in last
    with pytest.raises(SystemExit):
        cli.main(["compare", "--out", "o"])  # nothing swallowed: argparse's own line, no hint
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("required: RECIPE")


def test_pretrain_overrides_after_resume_are_overrides(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the README's `geocl pretrain recipes/grass.yaml --resume trainer.max_epochs=200`
    from geocl import cli

    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(cli, "_pretrain", seen.append)
    assert cli.main(["pretrain", "r.yaml", "out=x", "--resume", "trainer.max_epochs=200", "seed=1"]) == 0
    assert seen[0].resume and seen[0].overrides == ["out=x", "trainer.max_epochs=200", "seed=1"]
    with pytest.raises(SystemExit) as exit_info:  # a flag no command has is still refused
        cli.main(["pretrain", "r.yaml", "--resume", "--bogus"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_make_scene_kind_urban_and_a_kind_of_another_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geocl import cli

    assert cli.main(["make-scene", str(tmp_path / "city"), "--kind", "urban", "--size", "256"]) == 0
    meta = json.loads((tmp_path / "city" / "scene.json").read_text())
    assert meta["kind"] == "urban"
    before = (tmp_path / "city" / "image.tif").read_bytes()
    capsys.readouterr()
    assert cli.main(["make-scene", str(tmp_path / "city"), "--size", "256"]) == 2  # rural into an urban folder
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"geocl make-scene: error: {tmp_path / 'city'}: holds a synthetic urban scene")
        and "\n" not in err
    )
    assert (tmp_path / "city" / "image.tif").read_bytes() == before
    assert cli.main(["make-scene", str(tmp_path / "x"), "--kind", "town", "--size", "256"]) == 2
    assert "must be one of rural, urban" in capsys.readouterr().err


def test_tile_and_predict_take_assets_and_say_where_credentials_come_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write_raster: RasterWriter
) -> None:
    from geocl import cli

    for command in ("tile", "predict"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--assets KEY [KEY ...]" in text and "--assets B04 B03 B02 B08" in text
        assert "s3://" in text and "credentials come from the environment only" in text
    scene = write_raster(tmp_path / "scene.tif", np.ones((2, 32, 32), dtype="uint8"))
    assert cli.main(["tile", str(scene), "--assets", "B04", "--out", str(tmp_path / "out"), "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--assets picks the bands of STAC items" in err and str(scene) in err
    assert not (tmp_path / "out").exists()
