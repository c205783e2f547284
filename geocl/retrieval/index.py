"""``geocl index``: embed every tile of a tile set once, with its footprint, path and caption.

After training, the image tower runs in eval mode (BatchNorm uses its running
statistics, dropout is off), so a tile's embedding does not depend on the other tiles
of its batch. Tiles are resized to the view size they were trained at.

Index folder::

    index.json        what the index is: checkpoint, tile set, split, count, embedding size,
                      CRS, the overview's extent, the size and SHA-256 of each file below
                      but the thumbnails (written last: an index without it is incomplete)
    embeddings.npy    float32 [N, D], L2-normalised rows; row i = tile id i
    tiles.gpkg        layer "tiles": id, path (the tile GeoTIFF), split, caption (the
                      template caption where the tile set has masks, else ""), footprint
    text.pt           the text tower and its vocabulary (queries need nothing else)
    thumbnails/       <id>.png, an RGB quicklook of each tile (bands 3, 2, 1)
    overview.png      a mosaic of every tile of the tile set, for drawing hits on

Exact search (a matrix product over the normalised embeddings) suits up to about 10^6
tiles; more would need an approximate index.

Every file is written atomically; a folder that already holds an index is refused
unless ``overwrite``, which removes its ``index.json`` before the first new file is
written (once the checkpoint and tile set are known to fit), so a rebuild that stops
half-way leaves an incomplete index rather than a mix of two.

Reading (:func:`read_index_meta`, :func:`check_index_files`) refuses what would give
wrong results: a missing, truncated, changed or swapped file is named, with the
command that rebuilds the index (:func:`rebuild_hint`). Nothing in an index is
unpickled: ``text.pt`` holds tensors and plain data, read with
``torch.load(weights_only=True)`` (:mod:`geocl.retrieval.search`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from geocl.errors import GeoclError
from geocl.io import atomic_path, atomic_write_text, check_output_folder

INDEX_META = "index.json"
EMBEDDINGS = "embeddings.npy"
TABLE = "tiles.gpkg"
TABLE_LAYER = "tiles"
TEXT_TOWER = "text.pt"
THUMBNAILS = "thumbnails"
OVERVIEW = "overview.png"
FORMAT_VERSION = 1
#: The files whose size and SHA-256 ``index.json`` records (``files``), checked on opening.
CHECKED_FILES = (EMBEDDINGS, TABLE, TEXT_TOWER, OVERVIEW)
#: Longest side of the overview mosaic, px.
OVERVIEW_SIDE = 1024


@dataclass
class IndexSummary:
    """What :func:`build_index` wrote.

    Attributes:
        out: the index folder.
        count: tiles indexed.
        dim: embedding size.
        seconds: wall time.
    """

    out: Path
    count: int
    dim: int
    seconds: float


def display_rgb(images: Tensor) -> Tensor:
    """Normalised tiles ``[B, C, H, W]`` as display RGB ``[B, 3, H, W]`` in [0, 1].

    Bands 3, 2, 1 (as :func:`geocl.report.maps.quicklook` shows scenes; grey from band 1
    when there are fewer than 3), mapped from -2..2 band standard deviations, so that
    every tile is shown on the tile set's one scale.
    """
    rgb = images[:, [2, 1, 0]] if images.shape[1] >= 3 else images[:, :1].expand(-1, 3, -1, -1)
    return ((rgb + 2.0) / 4.0).clamp(0.0, 1.0)


def _png(array: np.ndarray, final: Path) -> None:
    """Write an ``[H, W, 3]`` uint8 array as PNG, atomically."""
    from PIL import Image

    with atomic_path(final) as temp:
        Image.fromarray(array).save(temp, format="PNG")


def _as_uint8(rgb: Tensor) -> np.ndarray:
    """``[3, H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8."""
    return (rgb.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def embed_tiles(towers: Any, dataset: Any, batch_size: int = 64) -> Tensor:
    """L2-normalised embeddings ``[N, D]`` of a dataset's images, in order (eval mode, no gradients)."""
    from torch.utils.data import DataLoader

    parts = [
        towers.embed_images(batch["image"])
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    ]
    return torch.cat(parts) if parts else torch.empty(0, towers.image.head.norm.normalized_shape[0])


def _thumbnail(image: Tensor, side: int) -> np.ndarray:
    rgb = display_rgb(image[None])
    small = F.interpolate(rgb, size=(side, side), mode="bilinear", align_corners=False, antialias=True)[0]
    return _as_uint8(small.clamp(0, 1))


def write_overview(tiles: str | os.PathLike[str], final: Path, max_side: int = OVERVIEW_SIDE) -> list[float]:
    """A mosaic of every tile of a tile set, placed by its bounds; returns its extent (left, bottom, right, top).

    Uncovered ground stays white. Each tile is resampled to the box its footprint takes
    on the mosaic (one tile in memory at a time).
    """
    from geocl.data.tile_dataset import TileDataset

    dataset = TileDataset(tiles, None, with_mask=False, progress=False)
    bounds = dataset.bounds.numpy()
    left, bottom = float(bounds[:, 0].min()), float(bounds[:, 1].min())
    right, top = float(bounds[:, 2].max()), float(bounds[:, 3].max())
    scale = max_side / max(right - left, top - bottom)
    width, height = max(1, round((right - left) * scale)), max(1, round((top - bottom) * scale))
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for item in range(len(dataset)):
        xmin, ymin, xmax, ymax = bounds[int(dataset.rows[item])]
        x0, x1 = round((xmin - left) * scale), round((xmax - left) * scale)
        y0, y1 = round((top - ymax) * scale), round((top - ymin) * scale)
        if x1 <= x0 or y1 <= y0:
            continue
        rgb = display_rgb(dataset[item]["image"][None])
        box = F.interpolate(rgb, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False, antialias=True)[0]
        canvas[y0:y1, x0:x1] = _as_uint8(box.clamp(0, 1))
    _png(canvas, final)
    return [left, bottom, right, top]


def build_index(
    checkpoint: str | os.PathLike[str],
    tiles: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split: str | None = None,
    batch_size: int = 64,
    thumbnail_px: int = 96,
    overwrite: bool = False,
) -> IndexSummary:
    """Embed every tile of a tile set (or of one split) with a retrieval checkpoint's image tower.

    Args:
        checkpoint: a checkpoint of the ``retrieval`` method.
        tiles: a tile set written by ``geocl tile``.
        out: the index folder.
        split: ``train``, ``val`` or ``test``; None = every tile.
        batch_size: tiles per forward pass.
        thumbnail_px: side of the thumbnails.
        overwrite: replace an index already in ``out``.

    Raises:
        GeoclError: a checkpoint that is not a retrieval one, a tile set with another band
            count, no tiles, or ``out`` holding an index (without ``overwrite``).
    """
    from geocl.data.tile_dataset import TileDataset
    from geocl.data.tileset import read_metadata
    from geocl.retrieval.captions import CaptionConfig, class_names_for, mask_attributes, template_captions
    from geocl.retrieval.model import load_towers

    start = time.perf_counter()
    out = check_output_folder(out, key="out")
    if (out / INDEX_META).exists() and not overwrite:
        raise GeoclError(
            "holds an index already; pass --overwrite to replace it, or choose another --out", path=out, key="out"
        )
    read_metadata(tiles)  # a wrong folder is answered before the checkpoint is read
    towers = load_towers(checkpoint)
    dataset = TileDataset(tiles, split, with_mask=None, progress=False)
    if dataset.band_count != towers.in_chans:
        raise GeoclError(
            f"has {dataset.band_count} bands, the checkpoint's encoder was trained on {towers.in_chans}", path=tiles
        )
    if len(dataset) == 0:
        raise GeoclError(f"has no {split or ''} tiles to index".replace("  ", " "), path=tiles)
    config = CaptionConfig(**towers.settings.get("captions", {}))
    names = class_names_for(tiles, dataset.metadata, config) if dataset.with_mask and not config.csv else []

    embeddings = embed_tiles(towers, dataset, batch_size).numpy().astype(np.float32)
    # from here on the folder changes: first unmark the old index, so a rebuild that stops
    # half-way is an incomplete index, never old files beside new ones
    (out / INDEX_META).unlink(missing_ok=True)
    (out / THUMBNAILS).mkdir(exist_ok=True)
    captions = []
    for item in range(len(dataset)):
        sample = dataset[item]
        _png(_thumbnail(sample["image"], thumbnail_px), out / THUMBNAILS / f"{item}.png")
        text = ""
        if names:
            atoms, present = mask_attributes(sample["mask"].numpy(), names, config)
            found = template_captions(atoms, present, config)
            text = found[0].text if found else ""
        captions.append(text)
    _write_table(dataset, captions, out / TABLE)
    with atomic_path(out / EMBEDDINGS) as temp:
        np.save(temp, embeddings)
    text_state = {key: value.clone() for key, value in towers.text.state_dict().items()}
    with atomic_path(out / TEXT_TOWER) as temp:
        torch.save({"settings": towers.settings, "state": text_state}, temp)
    extent = write_overview(tiles, out / OVERVIEW)
    meta = {
        "format_version": FORMAT_VERSION,
        "checkpoint": str(Path(checkpoint).resolve()),
        "tiles": str(Path(tiles).resolve()),
        "split": split,
        "count": len(dataset),
        "dim": int(embeddings.shape[1]),
        "crs": dataset.crs,
        "method": towers.meta.get("method"),
        "encoder": towers.meta.get("encoder"),
        "thumbnail_px": thumbnail_px,
        "overview": {"file": OVERVIEW, "extent": extent},
        "files": {name: file_record(out / name) for name in CHECKED_FILES},
    }
    atomic_write_text(out / INDEX_META, json.dumps(meta, indent=1))
    return IndexSummary(out, len(dataset), int(embeddings.shape[1]), time.perf_counter() - start)


def _write_table(dataset: Any, captions: list[str], final: Path) -> None:
    import geopandas as gpd

    rows = dataset.index.iloc[np.asarray(dataset.rows)]
    frame = gpd.GeoDataFrame(
        {
            "id": np.arange(len(rows), dtype=np.int64),
            "path": [str((Path(dataset.root) / path).resolve()) for path in rows["path"]],
            "split": rows["split"].to_numpy(),
            "caption": captions,
        },
        geometry=rows.geometry.to_numpy(),
        crs=dataset.index.crs,
    )
    with atomic_path(final) as temp:
        frame.to_file(temp, layer=TABLE_LAYER, driver="GPKG")


def file_record(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def rebuild_hint(folder: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> str:
    """``rebuild the index: geocl index CHECKPOINT TILES --out FOLDER --overwrite``, with the
    checkpoint, tile set and split ``index.json`` names where it can be read."""
    meta = meta if isinstance(meta, dict) else {}
    checkpoint, tiles, split = meta.get("checkpoint"), meta.get("tiles"), meta.get("split")
    words = [
        "geocl",
        "index",
        shlex.quote(checkpoint) if isinstance(checkpoint, str) and checkpoint else "CHECKPOINT",
        shlex.quote(tiles) if isinstance(tiles, str) and tiles else "TILES",
        "--out",
        shlex.quote(str(folder)),
    ]
    if split in ("train", "val", "test"):
        words += ["--split", split]
    return "rebuild the index: " + " ".join([*words, "--overwrite"])


def damaged(path: Path, problem: str, folder: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> GeoclError:
    """The error for a file of an index that cannot be used as it is: names it, says what is
    wrong in one line and how to rebuild the index."""
    problem = " ".join(str(problem).split())  # one line, whatever a library's message held
    if len(problem) > 300:
        problem = problem[:297] + "..."
    return GeoclError(f"{problem}; {rebuild_hint(folder, meta)}", path=path)


def read_index_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``index.json`` of a finished index, its entries checked.

    Raises:
        GeoclError: the folder holds no finished index, or an ``index.json`` this geocl
            cannot read (naming it, with the command that rebuilds the index).
    """
    path = Path(folder) / INDEX_META
    if not Path(folder).is_dir():
        raise GeoclError("no such folder; give an index folder written by `geocl index`", path=folder)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GeoclError(
            "no retrieval index here (index.json missing: never built, or a build that did not finish); "
            f"build one with `geocl index CHECKPOINT TILES --out {shlex.quote(str(folder))}`",
            path=folder,
        ) from None
    except (OSError, ValueError) as error:
        raise damaged(path, f"cannot read the index description ({error})", folder) from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise damaged(path, "not an index this geocl reads", folder, meta if isinstance(meta, dict) else None)
    count, dim, overview = meta.get("count"), meta.get("dim"), meta.get("overview")
    extent = overview.get("extent") if isinstance(overview, dict) else None
    well_formed = (
        isinstance(count, int)
        and count > 0
        and isinstance(dim, int)
        and dim > 0
        and isinstance(extent, list)
        and len(extent) == 4
        and all(isinstance(value, (int, float)) and np.isfinite(value) for value in extent)
        and isinstance(meta.get("files", {}), dict)
    )
    if not well_formed:
        raise damaged(path, "has a missing or malformed count, dim or overview extent", folder, meta)
    return meta


def check_index_files(folder: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Every file of the index is there and, where ``index.json`` records them, has the size
    and SHA-256 it was written with (a truncated, changed or swapped file is named).

    Raises:
        GeoclError: naming the first file at fault, with the command that rebuilds the index.
    """
    folder = Path(folder)
    records = meta.get("files") or {}
    for name in CHECKED_FILES:
        path = folder / name
        if not path.is_file():
            raise damaged(path, "is missing from the index", folder, meta)
        record = records.get(name)
        if record is None:  # an index written before the records: the readers check what they can
            continue
        if not isinstance(record, dict):
            raise damaged(folder / INDEX_META, f"has a malformed record of {name}", folder, meta)
        try:
            size = path.stat().st_size
            found = file_record(path) if size == record.get("bytes") else {"bytes": size}
        except OSError as error:
            raise damaged(path, f"cannot be read ({error.strerror or error})", folder, meta) from None
        if found.get("bytes") != record.get("bytes"):
            how = "truncated" if size < int(record.get("bytes") or 0) else "changed since `geocl index` wrote it"
            raise damaged(path, f"is {how} ({size} bytes, the index wrote {record.get('bytes')})", folder, meta)
        if found["sha256"] != record.get("sha256"):
            raise damaged(
                path, "differs from the file the index wrote (changed, or copied from another index)", folder, meta
            )
    thumbnails = folder / THUMBNAILS
    if not thumbnails.is_dir():
        raise damaged(thumbnails, "is missing from the index", folder, meta)
    with os.scandir(thumbnails) as entries:  # one listing, not a stat a tile
        present = {entry.name for entry in entries}
    for tile in range(int(meta["count"])):
        if f"{tile}.png" not in present:
            raise damaged(thumbnails / f"{tile}.png", "is missing from the index", folder, meta)
