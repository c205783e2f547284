"""``geocl search``: the top tiles of an index for a text query, printed, as a GeoPackage and a contact sheet.

A query is embedded by the index's text tower (L2-normalised) and scored against every
tile by cosine similarity (one matrix-vector product); the top k are taken by score,
ties broken by tile id (a stable order: CLAIRES does not say how it ranks ties), so the command line and the search
page (:mod:`geocl.retrieval.server`), which both call :meth:`SearchIndex.search`, return
the same tiles in the same order.

Opening an index checks it whole before any query (:class:`SearchIndex`): a missing,
truncated, changed or mismatched file stops ``geocl search`` and ``geocl serve`` at once
with one line naming it and the command that rebuilds the index, rather than wrong hits
or a failure on the first request. ``text.pt`` is read with
``torch.load(weights_only=True)``: tensors and plain data only, nothing unpickled.

Queries are plain text: an empty one, one longer than
:data:`~geocl.retrieval.text.MAX_QUERY_CHARS` characters, or one with words the model
never saw raise a :class:`~geocl.retrieval.text.QueryError` saying so. The text tower
runs under a lock: a search page serving many queries at once keeps one forward pass
at a time (each takes about a millisecond).
"""

from __future__ import annotations

import os
import pickle
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geocl.errors import GeoclError
from geocl.io import atomic_path, save_figure
from geocl.retrieval.index import (
    EMBEDDINGS,
    TABLE,
    TABLE_LAYER,
    TEXT_TOWER,
    THUMBNAILS,
    check_index_files,
    damaged,
    read_index_meta,
)
from geocl.retrieval.metrics import ranking
from geocl.retrieval.model import text_tower_from
from geocl.retrieval.text import WordTokenizer

#: GeoPackage layer of written hits.
HITS_LAYER = "hits"


@dataclass(frozen=True)
class Hit:
    """One tile of a result.

    Attributes:
        rank: 1-based position.
        score: cosine similarity to the query.
        id: the tile's id in the index (its thumbnail is ``thumbnails/<id>.png``).
        path: the tile GeoTIFF (absolute: what ``geocl search`` prints and writes).
        split: its split in the tile set.
        caption: its template caption ("" when the tile set has no masks).
        bounds: footprint (left, bottom, right, top) in map units of the index CRS.
        name: the tile's path inside its tile set (``images/r0000_c0000.tif``), or its file
            name where the index does not know the tile set: what the search page shows,
            so that no path of the machine serving it leaves it.
    """

    rank: int
    score: float
    id: int
    path: str
    split: str
    caption: str
    bounds: tuple[float, float, float, float]
    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return {**asdict(self), "bounds": list(self.bounds)}

    def public_dict(self) -> dict[str, Any]:
        """What the search page answers: :meth:`as_dict` without the absolute ``path``, with
        the thumbnail's URL on the page."""
        answer = self.as_dict()
        del answer["path"]
        return {**answer, "thumbnail": f"/{THUMBNAILS}/{self.id}.png"}


class SearchIndex:
    """A retrieval index opened for queries.

    Args:
        folder: written by :func:`geocl.retrieval.index.build_index`.

    Attributes:
        meta: its ``index.json``.
        embeddings: ``[N, D]`` float32, normalised.
        table: the tiles (GeoDataFrame: id, path, split, caption, footprint).
        tokenizer: the words queries may use.

    Raises:
        GeoclError: the folder holds no finished index, or one of its files is missing,
            truncated, changed since it was written, or disagrees with the others (naming
            the file, with the command that rebuilds the index).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.meta = read_index_meta(self.folder)
        check_index_files(self.folder, self.meta)
        self.embeddings = self._read_embeddings()
        self.table = self._read_table()
        self.settings, self.text, self.tokenizer = self._read_text_tower()
        self._bounds = self.table.geometry.bounds.to_numpy(dtype=np.float64)
        self._root = Path(str(self.meta.get("tiles") or ""))
        self._lock = threading.Lock()

    def _damaged(self, name: str, problem: str) -> GeoclError:
        return damaged(self.folder / name, problem, self.folder, self.meta)

    def _read_embeddings(self) -> np.ndarray:
        count, dim = self.meta["count"], self.meta["dim"]
        try:
            embeddings = np.load(self.folder / EMBEDDINGS, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:  # truncated, not .npy, or an object array
            raise self._damaged(EMBEDDINGS, f"is truncated or damaged (cannot read it: {error})") from None
        if embeddings.dtype != np.float32 or embeddings.shape != (count, dim):
            raise self._damaged(
                EMBEDDINGS,
                f"holds {embeddings.dtype} {list(embeddings.shape)}, the index has {count} tiles of {dim}-d float32 embeddings",
            )
        if not np.isfinite(embeddings).all():
            raise self._damaged(EMBEDDINGS, "holds values that are not finite (NaN or infinite)")
        return embeddings

    def _read_table(self) -> Any:
        import geopandas as gpd
        from pyogrio.errors import DataLayerError, DataSourceError

        try:
            table = gpd.read_file(self.folder / TABLE, layer=TABLE_LAYER)
        except (DataSourceError, DataLayerError, OSError, ValueError) as error:
            raise self._damaged(
                TABLE, f"is truncated or damaged (cannot read layer {TABLE_LAYER!r}: {error})"
            ) from None
        missing = [column for column in ("id", "path", "split", "caption") if column not in table.columns]
        if missing:
            raise self._damaged(TABLE, f"has no column {', '.join(map(repr, missing))}")
        count = self.meta["count"]
        if len(table) != count:
            raise self._damaged(TABLE, f"holds {len(table)} tiles, embeddings.npy and index.json {count}")
        table = table.sort_values("id").reset_index(drop=True)
        if table["id"].tolist() != list(range(count)):
            raise self._damaged(TABLE, f"its tile ids are not 0..{count - 1} (one per row of embeddings.npy)")
        if table.geometry.isna().any() or table.geometry.is_empty.any():
            raise self._damaged(TABLE, "has tiles without a footprint")
        return table

    def _read_text_tower(self) -> tuple[dict[str, Any], Any, WordTokenizer]:
        path = self.folder / TEXT_TOWER
        try:
            # tensors and plain data only: an index folder may come from anywhere
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise self._damaged(
                TEXT_TOWER,
                "holds objects other than tensors and plain data, which geocl does not load (unpickling them "
                "could run code)",
            ) from None
        except (OSError, RuntimeError, EOFError, ValueError) as error:  # a truncated zip, not a torch file
            raise self._damaged(TEXT_TOWER, f"is truncated or damaged (cannot read it: {error})") from None
        try:
            settings, state = stored["settings"], stored["state"]
            text = text_tower_from(settings)
            text.load_state_dict(state, strict=True)
            tokenizer = WordTokenizer.from_state(settings["tokenizer"])
            embed_dim = int(settings["towers"]["embed_dim"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise self._damaged(TEXT_TOWER, f"is not the text tower of a geocl index ({first})") from None
        if embed_dim != self.meta["dim"]:
            raise self._damaged(
                TEXT_TOWER, f"embeds queries in {embed_dim} dimensions, embeddings.npy tiles in {self.meta['dim']}"
            )
        return settings, text.eval(), tokenizer

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def crs(self) -> Any:
        """CRS of the footprints."""
        return self.table.crs

    def embed_query(self, query: str) -> np.ndarray:
        """The query's normalised embedding ``[D]``.

        Raises:
            QueryError: the tokenizer refuses the query (empty, too long, unknown words).
        """
        ids, mask = self.tokenizer.encode([query])
        with self._lock, torch.no_grad():
            vector = F.normalize(self.text(ids, mask), dim=1)[0]
        return vector.numpy().astype(np.float32)

    def scores(self, query: str) -> np.ndarray:
        """Cosine similarity of every tile to the query, ``[N]``."""
        return self.embeddings @ self.embed_query(query)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The ``k`` best tiles (all of them when the index holds fewer), by score then id.

        Raises:
            QueryError: the query cannot be read.
            GeoclError: ``k`` below 1.
        """
        if k < 1:
            raise GeoclError(f"must be at least 1, got {k}", key="k")
        scores = self.scores(query)
        return [
            self.hit(rank, int(tile), float(scores[tile])) for rank, tile in enumerate(ranking(scores)[:k], start=1)
        ]

    def hit(self, rank: int, tile: int, score: float) -> Hit:
        """The :class:`Hit` of tile ``tile`` at ``rank``."""
        row = self.table.iloc[tile]
        left, bottom, right, top = (float(value) for value in self._bounds[tile])
        path = str(row["path"])
        return Hit(
            rank,
            score,
            tile,
            path,
            str(row["split"]),
            str(row["caption"] or ""),
            (left, bottom, right, top),
            self.tile_name(path),
        )

    def tile_name(self, path: str) -> str:
        """A tile's path inside its tile set (its file name when it lies elsewhere)."""
        try:
            return Path(path).relative_to(self._root).as_posix() if self._root.is_absolute() else Path(path).name
        except ValueError:
            return Path(path).name

    def thumbnail(self, tile: int) -> Path:
        """The thumbnail PNG of a tile.

        Raises:
            GeoclError: it is missing from the index (naming it, with the command that rebuilds the index).
        """
        path = self.folder / THUMBNAILS / f"{tile}.png"
        if not path.is_file():
            raise damaged(path, "is missing from the index", self.folder, self.meta)
        return path


def write_hits_geopackage(index: SearchIndex, hits: list[Hit], final: str | os.PathLike[str], query: str) -> Path:
    """The hits' footprints with rank, score, path and caption as a GeoPackage (layer ``hits``), atomically."""
    import geopandas as gpd
    from shapely.geometry import box

    frame = gpd.GeoDataFrame(
        {
            "rank": [hit.rank for hit in hits],
            "score": [hit.score for hit in hits],
            "id": [hit.id for hit in hits],
            "path": [hit.path for hit in hits],
            "caption": [hit.caption for hit in hits],
            "query": [query] * len(hits),
        },
        geometry=[box(*hit.bounds) for hit in hits],
        crs=index.crs,
    )
    final = Path(final)
    with atomic_path(final) as temp:
        frame.to_file(temp, layer=HITS_LAYER, driver="GPKG")
    return final


def write_contact_sheet(index: SearchIndex, hits: list[Hit], final: str | os.PathLike[str], query: str) -> Path:
    """The hits' thumbnails in rank order with score and caption, as a PNG."""
    import textwrap

    from matplotlib.figure import Figure
    from PIL import Image

    columns = min(5, max(1, len(hits)))
    rows = max(1, -(-len(hits) // columns))
    figure = Figure(figsize=(2.6 * columns, 2.9 * rows + 0.5))
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for position, axis in enumerate(axes):
        axis.set_axis_off()
        if position >= len(hits):
            continue
        hit = hits[position]
        with Image.open(index.thumbnail(hit.id)) as image:
            axis.imshow(np.asarray(image.convert("RGB")))
        caption = textwrap.shorten(hit.caption, 70) if hit.caption else Path(hit.path).name
        axis.set_title(f"#{hit.rank}  {hit.score:.3f}\n" + "\n".join(textwrap.wrap(caption, 32)[:2]), fontsize=7)
    figure.suptitle(f"{query!r}: top {len(hits)} of {len(index)} tiles", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, final)


def format_hits(hits: list[Hit]) -> str:
    """A plain-text table of hits: rank, score, tile path, caption."""
    lines = [f"{'rank':>4}  {'score':>6}  tile"]
    for hit in hits:
        caption = f"  ({hit.caption})" if hit.caption else ""
        lines.append(f"{hit.rank:>4}  {hit.score:6.3f}  {hit.path}{caption}")
    return "\n".join(lines)
