"""Peak memory and time of scene prediction, each run in a fresh process.

Part 1, memory growth (target: a scene 4x wider, and one 4x taller, within 1.3x of the
base scene's peak RSS). The base is the top 1024 rows of the embedded scene (1024 x
4096 px, 4 bands), the wide scene four copies of it side by side (1024 x 16384 px),
the tall one the whole embedded scene (4096 x 4096 px). Every output is on: classes,
uint8 probabilities, COGs, polygons, with the default 4096 px blocks. The model is a
small conv net with the demo's 9 classes (memory does not depend on the model
beyond its weights, and a ResNet would take the CPU an hour here).

Part 2, figures: wall time and peak RSS of `geocl predict` on the embedded scene
(4096 x 4096 px, `geocl demo`'s) with a finetuned ResNet-18 U-Net checkpoint
(``--checkpoint``, or one finetuned here for 1 epoch of 2 steps: the weights do not
change the cost), for: plain GeoTIFF, COG (the default), + uint8 probabilities,
+ float16 probabilities, + polygons, + D4 TTA.

    .venv/bin/python benchmarks/predict_memory.py [--work DIR] [--checkpoint CKPT]
        [--skip-growth] [--skip-figures] [--no-tta] [--threads N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import rasterio
from rasterio.windows import Window

from geocl.console import configure_output
from geocl.data.synthetic import make_scene

ROOT = Path(__file__).resolve().parents[1]

# The child reports the high-water mark of its own address space: ru_maxrss of a
# child also counts the pages it shared with this process before exec.
_REPORT_PEAK = """
import resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
start = time.perf_counter()
if sys.argv[2] == "cli":
    from geocl.cli import main
    status = main(sys.argv[3:])
else:
    from pathlib import Path
    from geocl.data.normalize import BandNormalizer
    from geocl.finetune.predict import predict_scene
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 9, 3, padding=1)
    )
    scene, out = sys.argv[3], Path(sys.argv[4])
    predict_scene(model, scene, out / "pred.tif", normalizer=BandNormalizer([2000.0] * 4, [1000.0] * 4, 0),
                  class_values=range(9), probabilities="uint8", polygons=out / "pred.gpkg", progress=False)
    status = 0
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) * 1024, seconds, usage.ru_utime + usage.ru_stime, file=sys.stderr)
sys.exit(status)
"""


def measure(args: list[str], threads: int) -> tuple[int, float, float]:
    """Peak RSS (bytes), wall time (s, after the child's imports) and CPU time (s, all of it) of a fresh process.

    CPU time is the steadier figure on a shared machine; it includes the imports (a few s).
    """
    result = subprocess.run(
        [sys.executable, "-c", _REPORT_PEAK, str(threads), *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    peak, seconds, cpu = result.stderr.strip().splitlines()[-1].split()
    return int(peak), float(seconds), float(cpu)


def write_strip(scene: Path, target: Path, rows: int, copies: int) -> Path:
    """The top ``rows`` of ``scene``, ``copies`` times side by side on one grid, block by block."""
    if target.exists():
        return target
    with rasterio.open(scene) as src:
        profile = {**src.profile, "height": rows, "width": src.width * copies, "BIGTIFF": "IF_SAFER"}
        with rasterio.open(target, "w", **profile) as dst:
            for top in range(0, rows, 256):
                window = Window(0, top, src.width, min(256, rows - top))
                block = src.read(window=window)
                for copy in range(copies):
                    dst.write(block, window=Window(copy * src.width, top, src.width, window.height))
    return target


def growth(work: Path, scene: Path, threads: int) -> None:
    base = write_strip(scene, work / "base.tif", 1024, 1)
    wide = write_strip(scene, work / "wide.tif", 1024, 4)
    peaks = {}
    for name, path in (("base", base), ("wide", wide), ("tall", scene)):
        out = work / f"growth_{name}"
        out.mkdir(parents=True, exist_ok=True)
        peaks[name], seconds, _ = measure(["model", str(path), str(out)], threads)
        with rasterio.open(path) as src:
            size = f"{src.height} x {src.width} px"
        print(f"  {name:5s} {size:>18s}: peak RSS {peaks[name] / 2**20:6.0f} MiB, {seconds:6.1f} s", flush=True)
    print(
        f"  wide / base = {peaks['wide'] / peaks['base']:.2f}, tall / base = {peaks['tall'] / peaks['base']:.2f} "
        "(target <= 1.3)"
    )


def finetuned_checkpoint(work: Path, scene: Path) -> Path:
    """A ResNet-18 U-Net finetuned for 2 steps on tiles of the embedded scene (cached in ``work``)."""
    from geocl.data.tiler import TilingOptions, tile_scene
    from geocl.finetune.train import run_finetune

    run = work / "finetune"
    best = run / "checkpoints" / "best.ckpt"
    if best.exists():
        return best
    tiles = work / "tiles"
    mask = scene.with_name("mask.tif")
    options = TilingOptions(size=256, stride=256, max_nodata=0.2, split_block=1024)
    tile_scene(scene, tiles, mask=mask, options=options, progress=False)
    return run_finetune(
        tiles=tiles, out=run, encoder="resnet18", max_epochs=1, steps_per_epoch=2, val_every=1, progress=False
    ).checkpoint


def figures(work: Path, scene: Path, checkpoint: Path, threads: int, tta: bool) -> None:
    out = work / "figures"
    out.mkdir(parents=True, exist_ok=True)
    runs = [
        ("plain GeoTIFF (--no-cog)", ["--no-cog"]),
        ("COG (default)", []),
        ("COG + uint8 probabilities", ["--probabilities", "uint8"]),
        ("COG + float16 probabilities", ["--probabilities", "float16"]),
        ("COG + polygons", ["--polygons", str(out / "pred.gpkg")]),
    ]
    if tta:
        runs.append(("COG + D4 TTA", ["--tta"]))
    for name, extra in runs:
        for stale in out.glob("pred*"):
            stale.unlink()
        peak, seconds, cpu = measure(
            ["cli", "predict", str(checkpoint), str(scene), "--out", str(out / "pred.tif"), *extra], threads
        )
        print(f"  {name:30s} {seconds:7.1f} s wall  {cpu:7.1f} s CPU   peak RSS {peak / 2**20:6.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work"), help="scratch folder (kept for reruns)")
    parser.add_argument("--checkpoint", type=Path, help="a finetuned checkpoint for the figures (default: make one)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    parser.add_argument("--skip-growth", action="store_true", help="skip part 1")
    parser.add_argument("--skip-figures", action="store_true", help="skip part 2")
    parser.add_argument("--no-tta", action="store_true", help="part 2 without the (8x slower) TTA run")
    args = parser.parse_args()
    configure_output(verbose=False)  # no Lightning banners from the finetune

    scene = make_scene(args.work / "scene", size=4096, seed=0).image
    if not args.skip_growth:
        print("peak RSS of predict (fresh process each; small conv net, 9 classes, every output on):")
        growth(args.work, scene, args.threads)
    if not args.skip_figures:
        start = time.perf_counter()
        checkpoint = args.checkpoint or finetuned_checkpoint(args.work, scene)
        if args.checkpoint is None:
            print(f"(finetuned a checkpoint in {time.perf_counter() - start:.0f} s: {checkpoint})")
        print(
            f"geocl predict on the embedded scene (4096 x 4096 px, 4 bands), {args.threads} torch threads, "
            "time after the imports:"
        )
        figures(args.work, scene, checkpoint, args.threads, not args.no_tta)


if __name__ == "__main__":
    from geocl.data.malloc import malloc_tuning

    with malloc_tuning():  # as every geocl command runs
        main()
