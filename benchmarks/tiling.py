"""Tiling memory, tile-loading throughput and many-scene throughput, measured in one run.

1. Memory: the peak RSS of `geocl tile` (map included) on a scene of >= 1 GiB
   uncompressed (target < 1 GiB) and on the embedded scene a ninth its size; their ratio
   is the growth (target <= 1.1: memory must not grow with the scene).
   tests/data/test_tiling_memory.py guards the growth at test sizes.
2. Loading: samples/s of three ways to feed 256 px tiles of the embedded scene through
   the same DataLoader (batch 16, same worker count):

     (a) geocl's TileDataset over a tile set made by `geocl tile`, images only as in
         pretraining, the same work as (b) and (c) (a+mask: with the long masks too),
     (b) plain TorchGeo: RasterDataset over the scene + RandomGeoSampler,
     (c) raw rasterio windowed reads of the scene (one open handle per worker),

   as ratios a/b (target >= 2) and a/c (target >= 0.7).
3. Many scenes: `geocl tile` (and with --predict `geocl predict`) of --scenes scenes,
   one after the other in one process against one Dask task a scene on a local cluster
   of --cluster-workers processes (cluster start included; outputs checked identical).

    .venv/bin/python benchmarks/tiling.py [--work DIR] [--samples 2048] [--skip-rss]
        [--skip-loading] [--skip-many] [--scenes 4] [--scene-size 2048] [--predict]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchgeo.datasets import RasterDataset, stack_samples
from torchgeo.samplers import RandomGeoSampler

from geocl.console import configure_output
from geocl.data.synthetic import SceneFiles, make_scene
from geocl.data.tile_dataset import TileDataset
from geocl.data.tiler import TilingOptions, tile_scene

TILE = 256
BATCH = 16


class RasterioWindows(Dataset[dict[str, torch.Tensor]]):
    """Random TILE x TILE windows read straight from the scene with rasterio."""

    def __init__(self, path: Path, length: int, seed: int = 0) -> None:
        self.path = path
        self.length = length
        with rasterio.open(path) as src:
            self.height, self.width = src.height, src.width
        rng = np.random.default_rng(seed)
        self.offsets = np.stack(
            [rng.integers(0, self.height - TILE, length), rng.integers(0, self.width - TILE, length)], axis=1
        )
        self._src: rasterio.DatasetReader | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        if self._src is None:
            self._src = rasterio.open(self.path)
        row, col = self.offsets[item]
        data = self._src.read(window=Window(int(col), int(row), TILE, TILE))
        return {"image": torch.from_numpy(data.astype(np.float32))}

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_src": None}


def samples_per_second(loader: DataLoader, samples: int) -> float:
    """Throughput over ``samples`` samples after one warm-up batch (workers started)."""
    seen = 0
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for batch in iterator:
        seen += batch["image"].shape[0]
        if seen >= samples:
            break
    return seen / (time.perf_counter() - start)


def loader_speeds(scene: Path, tiles: Path, samples: int, workers: int) -> dict[str, float]:
    """Samples/s of (a), (b) and (c)."""
    common = {"batch_size": BATCH, "num_workers": workers, "persistent_workers": False}
    images_only = TileDataset(tiles, with_mask=False, progress=False)
    with_masks = TileDataset(tiles, progress=False)
    # cycle the tile set as often as needed to reach `samples`
    repeats = -(-(samples + BATCH) // len(images_only))
    geocl_loader = DataLoader(ConcatDataset([images_only] * repeats), shuffle=True, **common)
    geocl_mask_loader = DataLoader(ConcatDataset([with_masks] * repeats), shuffle=True, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torchgeo_ds = RasterDataset(paths=str(scene))
        sampler = RandomGeoSampler(torchgeo_ds, size=TILE, length=samples + BATCH)
    torchgeo_loader = DataLoader(torchgeo_ds, sampler=sampler, collate_fn=stack_samples, **common)
    raw_loader = DataLoader(RasterioWindows(scene, samples + BATCH), **common)
    return {
        "a": samples_per_second(geocl_loader, samples),
        "a+mask": samples_per_second(geocl_mask_loader, samples),
        "b": samples_per_second(torchgeo_loader, samples),
        "c": samples_per_second(raw_loader, samples),
    }


def write_large_scene(small: Path, target: Path, repeat: int) -> int:
    """Mosaic ``repeat`` x ``repeat`` copies of a scene into one GeoTIFF, block by block.

    Returns:
        The uncompressed size of the result in bytes.
    """
    with rasterio.open(small) as src:
        profile = src.profile
        height, width = src.height, src.width
        profile.update(
            height=height * repeat,
            width=width * repeat,
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
            predictor=2,
            BIGTIFF="IF_SAFER",
        )
        if not target.exists():
            with rasterio.open(target, "w", **profile) as dst:
                for window in (Window(0, row, width, min(1024, height - row)) for row in range(0, height, 1024)):
                    block = src.read(window=window)
                    for i in range(repeat):
                        for j in range(repeat):
                            dst.write(
                                block,
                                window=Window(
                                    window.col_off + j * width, window.row_off + i * height, window.width, window.height
                                ),
                            )
        itemsize = np.dtype(profile["dtype"]).itemsize
        return height * width * repeat * repeat * profile["count"] * itemsize


# ru_maxrss of a child also counts the pages it shared with this (large) process before
# exec, so the child reports the high-water mark of its own address space instead.
_REPORT_PEAK = """
import sys
from geocl.cli import main
status = main(sys.argv[1:])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) * 1024, file=sys.stderr)
sys.exit(status)
"""


def peak_rss_of(geocl_args: list[str]) -> int:
    """Peak resident memory (bytes) of ``geocl ARGS`` run in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", _REPORT_PEAK, *geocl_args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return int(result.stderr.strip().splitlines()[-1])


def _files(folder: Path, suffix: str) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob(f"*{suffix}"))
        if path.is_file()
    }


def many_scenes(work: Path, count: int, size: int, cluster_workers: int, predict: bool) -> None:
    """Throughput of `count` scenes: serial in this process against a local Dask cluster."""
    from geocl.distributed import predict_scenes, tile_scenes

    folder = work / f"many_{size}"
    images, masks = [], []
    for seed in range(count):  # one scene a seed, each its own name
        files = make_scene(folder / f"made{seed}", size=size, seed=seed)
        image = folder / f"scene{seed}.tif"
        if not image.exists():
            shutil.copy(files.image, image)
        images.append(image)
        masks.append(files.mask)
    options = TilingOptions(size=TILE, stride=TILE, max_nodata=0.2, split_block=TILE)  # every split even at 512 px
    megapixels = count * size * size / 1e6
    print(f"many scenes: {count} scenes of {size} x {size} px ({megapixels:.0f} Mpx)")

    def compare(what: str, run: object, suffix: str) -> Path:
        seconds = {}
        for label, workers in (("serial", 0), (f"{cluster_workers} workers", cluster_workers)):
            out = folder / f"{what}_{workers}"
            shutil.rmtree(out, ignore_errors=True)  # measure full runs, not reruns
            start = time.perf_counter()
            result = run(out, workers)  # type: ignore[operator]
            seconds[label] = time.perf_counter() - start
            assert not result.failed, result.failure_message()
        same = _files(folder / f"{what}_0", suffix) == _files(folder / f"{what}_{cluster_workers}", suffix)
        (serial, cluster) = seconds.values()
        print(
            f"  {what:8s} serial {serial:6.1f} s ({count / serial * 60:5.1f} scenes/min, {megapixels / serial:5.2f} Mpx/s)"
            f"   local cluster of {cluster_workers}: {cluster:6.1f} s ({count / cluster * 60:5.1f} scenes/min, "
            f"{megapixels / cluster:5.2f} Mpx/s)   speed-up {serial / cluster:.2f}x   identical {suffix} files: {same}"
        )
        return folder / f"{what}_0"

    tiles = compare(
        "tile",
        lambda out, workers: tile_scenes(images, out, masks=masks, options=options, workers=workers, progress=False),
        ".tif",
    )
    if predict:
        from geocl.finetune.train import run_finetune

        short = {"max_epochs": 1, "steps_per_epoch": 2, "val_every": 1, "batch_size": 4, "progress": False}
        checkpoint = run_finetune(
            tiles=tiles / "scene0", out=folder / "finetune", label_fraction=0.2, **short
        ).checkpoint
        compare(
            "predict",
            lambda out, workers: predict_scenes(checkpoint, images, out, workers=workers, progress=False),
            ".tif",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/_work"), help="scratch folder (kept for reruns)")
    parser.add_argument("--samples", type=int, default=2048, help="samples timed per loader")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for all three")
    parser.add_argument("--repeat", type=int, default=3, help="copies per side of the embedded scene for the RSS scene")
    parser.add_argument("--skip-rss", action="store_true", help="skip the large-scene memory measurement")
    parser.add_argument("--skip-loading", action="store_true", help="skip the DataLoader throughput")
    parser.add_argument("--skip-many", action="store_true", help="skip the many-scene throughput")
    parser.add_argument("--scenes", type=int, default=4, help="scenes of the many-scene throughput")
    parser.add_argument("--scene-size", type=int, default=2048, help="side in px of each of those scenes")
    parser.add_argument("--cluster-workers", type=int, default=2, help="workers of the local Dask cluster")
    parser.add_argument("--predict", action="store_true", help="also time prediction of the scenes (finetunes first)")
    args = parser.parse_args()
    configure_output(verbose=False)  # as the CLI: no Lightning banners between the figures

    scene = make_scene(args.work / "scene", size=4096, seed=0)
    if not args.skip_rss:
        large = args.work / "large.tif"
        uncompressed = write_large_scene(scene.image, large, args.repeat)
        small_args = ["tile", str(scene.image), "--out", str(args.work / "rss_small_tiles"), "--quiet"]
        large_args = ["tile", str(large), "--out", str(args.work / "rss_large_tiles"), "--quiet"]
        for folder in ("rss_small_tiles", "rss_large_tiles"):  # measure full runs, not resumes
            shutil.rmtree(args.work / folder, ignore_errors=True)
        small_peak = peak_rss_of(small_args)
        peak = peak_rss_of(large_args)
        print(
            f"large scene: {large} ({uncompressed / 2**30:.2f} GiB uncompressed, {args.repeat}x{args.repeat} embedded scenes)"
        )
        print(
            f"peak RSS of geocl tile on it: {peak / 2**20:.0f} MiB (target < 1024 MiB) = "
            f"{peak / uncompressed:.2f} x scene size"
        )
        print(
            f"peak RSS on the embedded scene ({uncompressed / args.repeat**2 / 2**20:.0f} MiB): "
            f"{small_peak / 2**20:.0f} MiB; growth large/small = {peak / small_peak:.2f} (target <= 1.1)"
        )

    if not args.skip_loading:
        loading(scene, args)
    if not args.skip_many:
        many_scenes(args.work, args.scenes, args.scene_size, args.cluster_workers, args.predict)


def loading(scene: SceneFiles, args: argparse.Namespace) -> None:
    """Section 2: DataLoader throughput of (a), (b) and (c)."""
    tiles = args.work / "tiles"
    tile_scene(
        scene.image,
        tiles,
        mask=scene.mask,
        options=TilingOptions(size=TILE, stride=TILE, max_nodata=0.2),
        progress=False,
    )
    speeds = loader_speeds(scene.image, tiles, args.samples, args.workers)
    print(f"samples/s over {args.samples} samples, batch {BATCH}, {args.workers} workers, {TILE} px tiles:")
    print(f"  (a) geocl TileDataset         {speeds['a']:8.1f}")
    print(f"      ... with masks            {speeds['a+mask']:8.1f}")
    print(f"  (b) TorchGeo RandomGeoSampler {speeds['b']:8.1f}")
    print(f"  (c) raw rasterio windows      {speeds['c']:8.1f}")
    print(
        f"a/b = {speeds['a'] / speeds['b']:.2f} (target >= 2)   a/c = {speeds['a'] / speeds['c']:.2f} (target >= 0.7)"
    )


if __name__ == "__main__":
    from geocl.data.malloc import malloc_tuning

    with malloc_tuning():  # as every geocl command runs
        main()
