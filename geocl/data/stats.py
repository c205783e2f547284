"""Per-band statistics of a scene, computed once by streaming and cached.

The scene is read in row strips, so memory does not grow with its size; partial
results are merged with Chan et al.'s parallel variance formula, which stays exact
in float64 where a plain sum of squares of uint16 values would lose precision.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
from rasterio.windows import Window
from tqdm.auto import tqdm

from geocl.data.rasters import RasterInfo
from geocl.errors import InvalidInputError
from geocl.io import atomic_write_text

#: Pixels read per strip when streaming (all bands); bounds memory, not results.
STRIP_PIXELS = 1_000_000
#: Pixels per :meth:`RunningBandStats.update` while streaming: the float64 copies the
#: update makes are ``bands x UPDATE_PIXELS x 8`` bytes each, whatever the strip.
UPDATE_PIXELS = 1 << 16
_CACHE_VERSION = 1


@dataclass(frozen=True)
class BandStats:
    """Statistics of the valid pixels of each band.

    Attributes:
        count: number of valid pixels (a pixel is valid unless every band is nodata).
        mean: per-band mean, in the raster's units.
        std: per-band population standard deviation.
        minimum: per-band minimum.
        maximum: per-band maximum.
    """

    count: int
    mean: list[float]
    std: list[float]
    minimum: list[float]
    maximum: list[float]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BandStats:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)  # type: ignore[arg-type]


class RunningBandStats:
    """Accumulates :class:`BandStats` from batches of pixels.

    Args:
        bands: number of bands.
    """

    def __init__(self, bands: int) -> None:
        self.count = 0
        self.mean = np.zeros(bands)
        self.m2 = np.zeros(bands)
        self.minimum = np.full(bands, np.inf)
        self.maximum = np.full(bands, -np.inf)

    def update(self, pixels: np.ndarray) -> None:
        """Add valid pixels.

        Args:
            pixels: ``[C, N]`` array of N valid pixels.
        """
        n = pixels.shape[1]
        if n == 0:
            return
        values = pixels.astype(np.float64, copy=False)
        batch_mean = values.mean(axis=1)
        batch_m2 = ((values - batch_mean[:, None]) ** 2).sum(axis=1)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total
        self.minimum = np.minimum(self.minimum, values.min(axis=1))
        self.maximum = np.maximum(self.maximum, values.max(axis=1))

    def result(self) -> BandStats:
        """The statistics so far."""
        std = np.sqrt(self.m2 / self.count) if self.count else np.zeros_like(self.m2)
        return BandStats(
            count=int(self.count),
            mean=self.mean.tolist(),
            std=std.tolist(),
            minimum=self.minimum.tolist(),
            maximum=self.maximum.tolist(),
        )


def scene_stats(running: RunningBandStats, scene: str | os.PathLike[str]) -> BandStats:
    """A whole scene's statistics from ``running``.

    Raises:
        GeoclError: naming ``scene``, when it held no valid pixel.
    """
    if running.count == 0:
        raise InvalidInputError("scene is all nodata: no valid pixel to train on", path=scene)
    return running.result()


def valid_pixels(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """Which pixels hold data.

    Args:
        block: ``[C, H, W]`` array.
        nodata: the nodata value, or None (then only NaN and infinite values mark missing data).

    Returns:
        ``[H, W]`` bool array, False where every band is nodata or any band is NaN or
        infinite (an infinite value would make the band statistics infinite and every
        normalised pixel NaN).
    """
    invalid = np.zeros(block.shape[1:], dtype=bool)
    if np.issubdtype(block.dtype, np.floating):
        invalid |= ~np.isfinite(block).all(axis=0)
    if nodata is not None and not np.isnan(nodata):
        invalid |= (block == nodata).all(axis=0)
    return ~invalid


def add_valid_pixels(running: RunningBandStats, block: np.ndarray, nodata: float) -> None:
    """Add the valid pixels of a ``[C, H, W]`` strip, :data:`UPDATE_PIXELS` at a time (no copy of the strip)."""
    rows = max(1, UPDATE_PIXELS // max(1, block.shape[2]))
    for top in range(0, block.shape[1], rows):
        chunk = block[:, top : top + rows]
        running.update(chunk[:, valid_pixels(chunk, nodata)])


def _strips(info: RasterInfo) -> Iterable[Window]:
    rows = max(1, STRIP_PIXELS // max(1, info.width))
    for row in range(0, info.height, rows):
        yield Window(0, row, info.width, min(rows, info.height - row))


def _cache_file(infos: Sequence[RasterInfo]) -> Path:
    """Where the statistics of these files are kept (the user cache, keyed by the files)."""
    key = hashlib.sha256()
    for info in infos:
        stat = info.path.stat()
        key.update(f"{info.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest = key.hexdigest()[:16]
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geocl" / "stats"
    return folder / f"{digest}.json"


def scene_band_stats(infos: Sequence[RasterInfo], *, progress: bool = True) -> BandStats:
    """Per-band statistics over the valid pixels of all of a scene's files.

    The result is cached in ``$XDG_CACHE_HOME/geocl/stats`` (default ``~/.cache``),
    keyed by the files' paths, sizes and modification times, so a scene is read once;
    a user's data folder is never written to. Tile sets keep their copy in ``tiles.json``.

    Args:
        infos: the scene's files (same band count).
        progress: show a tqdm bar while streaming.

    Returns:
        The scene's :class:`BandStats`.

    Raises:
        GeoclError: if a file cannot be read, or the scene holds no valid pixel.
    """
    cache = _cache_file(infos)
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("version") == _CACHE_VERSION:
            return BandStats.from_dict(data["stats"])
    running = RunningBandStats(infos[0].count)
    windows = [(info, window) for info in infos for window in _strips(info)]
    bar = tqdm(windows, desc="band statistics", unit="strip", disable=not progress, leave=False)
    current: Path | None = None
    src = None
    try:
        for info, window in bar:
            if src is None or info.path != current:
                if src is not None:
                    src.close()
                src = rasterio.open(info.path)
                current = info.path
            try:
                block = src.read(window=window)
            except rasterio.errors.RasterioError as error:
                raise InvalidInputError(f"cannot read pixels (corrupt file?): {error}", path=info.path) from None
            add_valid_pixels(running, block, info.nodata if info.nodata is not None else 0.0)
            del block  # else the next strip is read while this one is still held: two strips in memory
    finally:
        if src is not None:
            src.close()
    stats = scene_stats(running, ", ".join(str(info.path) for info in infos))
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({"version": _CACHE_VERSION, "stats": stats.to_dict()}, indent=1))
    return stats
