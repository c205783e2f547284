"""Every script in examples/ runs end to end in its smoke mode and writes what it promises.

Each example runs as a user runs it (a subprocess: ``python examples/X.py --smoke --out
DIR``), so an example that no longer matches the API fails here instead of rotting.
The glob picks up a new example by itself; it then needs an entry in :data:`PROMISED`
(the files its docstring says it writes), or this test fails and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import rasterio

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))

#: Files (relative to --out) each example promises; a glob pattern must match at least one file.
PROMISED: dict[str, list[str]] = {
    "01_own_geotiff": [
        "tiles/tiles.gpkg",
        "pretrain/checkpoints/last.ckpt",
        "finetune/metrics.json",
        "prediction.tif",
        "prediction.png",
        "prediction.gpkg",
    ],
    "02_compare_recipes": [
        "compare/results.csv",
        "compare/results_summary.csv",
        "compare/results.md",
        "compare/results.png",
        "compare/results_paired.png",
        "compare/pretrain/simclr/checkpoints/last.ckpt",
        "compare/pretrain/grass/checkpoints/last.ckpt",
    ],
    "03_natural_images": [
        "cifar/data_batch_1",
        "cifar/data_batch_2",
        "cifar/test_batch",
        "cifar/batches.meta",
        "pretrain/checkpoints/last.ckpt",
        "eval-pretrained/evaluation.json",
        "eval-random/evaluation.json",
    ],
    "04_medical_volumes": [
        "volumes/preview.png",
        "pretrain/checkpoints/last.ckpt",
        "finetune-pretrained/cases.csv",
        "finetune-pretrained/metrics.json",
        "finetune-pretrained/predictions/*.nii.gz",
        "finetune-random/metrics.json",
    ],
    "05_add_your_own_method": [
        "recipes/dcl.yaml",
        "compare/results.csv",
        "compare/results.md",
        "compare/results_summary.csv",
        "compare/pretrain/dcl/checkpoints/last.ckpt",
    ],
    "06_torchgeo_dataset": [
        "loveda/Train/Urban/images_png/0.png",
        "loveda/Val/Urban/masks_png/300.png",
        "tiles/tiles.json",
        "pretrain/checkpoints/last.ckpt",
        "finetune/metrics.json",
    ],
}

#: What third-party libraries print when geocl's quiet output is not in place.
NOISE = ("GPU available", "TPU available", "LOCAL_RANK", "💡", "Seed set to", "Warning:", "warnings.warn")


def _tail(text: str, chars: int = 3000) -> str:
    return text[-chars:] if len(text) > chars else text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_example_runs_in_smoke_mode(script: Path, tmp_path: Path) -> None:
    assert script.stem in PROMISED, f"add the files {script.name} promises to PROMISED in {__file__}"
    out = tmp_path / "out"
    # One thread: the smoke sizes gain nothing from two, and on a machine shared with other
    # work torch's threads wait on each other (a tiny U-Net step took 1.5 s instead of 0.01 s).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = f"{script.name} exited {done.returncode}\n--- stderr (tail)\n{_tail(done.stderr)}\n--- stdout (tail)\n{_tail(done.stdout)}"
    assert done.returncode == 0, report

    missing = [pattern for pattern in PROMISED[script.stem] if not any(out.glob(pattern))]
    assert not missing, f"{script.name} did not write {missing}\n{report}"
    noisy = [word for word in NOISE if word in done.stdout or word in done.stderr]
    assert not noisy, f"{script.name} printed third-party output {noisy}\n{report}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"], "an example wrote outside --out"
    _check_results(script.stem, out, done.stdout)


def _check_results(name: str, out: Path, printed: str) -> None:
    """The key numbers exist, lie in their range and are the ones printed."""
    if name in ("01_own_geotiff", "06_torchgeo_dataset"):
        miou = json.loads((out / "finetune" / "metrics.json").read_text())["miou"]
        assert 0.0 <= miou <= 1.0 and f"test mIoU {miou:.3f}" in printed
    if name == "01_own_geotiff":
        with rasterio.open(out / "prediction.tif") as prediction, rasterio.open(out / "scene" / "image.tif") as scene:
            assert (prediction.width, prediction.height, prediction.crs) == (scene.width, scene.height, scene.crs)
            # the scene's class values, and nodata where the scene has none
            assert set(prediction.read(1).ravel().tolist()) <= {*range(7), prediction.nodata}
    if name in ("02_compare_recipes", "05_add_your_own_method"):
        rows = pd.read_csv(out / "compare" / "results.csv")
        other = "grass" if name == "02_compare_recipes" else "dcl"
        assert set(rows["recipe"]) == {"simclr", other, "random-init"} and (rows["status"] == "ok").all()
        assert rows["miou"].between(0, 1).all() and rows.groupby("recipe").size().tolist() == [2, 2, 2]
        assert "Δ vs simclr" in printed
    if name == "02_compare_recipes":
        assert "what the intervals say:" in printed and "vs simclr" in printed.split("what the intervals say:")[1]
    if name == "03_natural_images":
        for folder in ("eval-pretrained", "eval-random"):
            result = json.loads((out / folder / "evaluation.json").read_text())
            assert 0.0 <= result["knn_top1"] <= 1.0 and result["val_images"] == 40
        assert "linear probe" in printed
    if name == "04_medical_volumes":
        dice = json.loads((out / "finetune-pretrained" / "metrics.json").read_text())["dice"]
        assert 0.0 <= dice <= 1.0 and f"Dice {dice:.3f}" in printed
