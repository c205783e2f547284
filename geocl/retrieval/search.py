"""``geocl search``: the top tiles of an index for a text query, printed, as a GeoPackage and a contact sheet.

A query is embedded by the index's text tower (L2-normalised) and scored against every
tile by cosine similarity (one matrix-vector product); the top k are taken by score,
ties broken by tile id (spec step 7 and ambiguity 6), so the command line and the search
page (:mod:`geocl.retrieval.server`), which both call :meth:`SearchIndex.search`, return
the same tiles in the same order.

Queries are plain text: an empty one, one longer than
:data:`~geocl.retrieval.text.MAX_QUERY_CHARS` characters, or one with words the model
never saw raise a :class:`~geocl.retrieval.text.QueryError` saying so. The text tower
runs under a lock: a search page serving many queries at once keeps one forward pass
at a time (each takes about a millisecond).
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geocl.errors import GeoclError
from geocl.io import atomic_path, save_figure
from geocl.retrieval.index import EMBEDDINGS, TABLE, TABLE_LAYER, TEXT_TOWER, THUMBNAILS, read_index_meta
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
        path: the tile GeoTIFF.
        split: its split in the tile set.
        caption: its template caption ("" when the tile set has no masks).
        bounds: footprint (left, bottom, right, top) in map units of the index CRS.
    """

    rank: int
    score: float
    id: int
    path: str
    split: str
    caption: str
    bounds: tuple[float, float, float, float]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return {**asdict(self), "bounds": list(self.bounds)}


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
        GeoclError: the folder holds no finished index.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        import geopandas as gpd

        self.folder = Path(folder)
        self.meta = read_index_meta(self.folder)
        self.embeddings = np.load(self.folder / EMBEDDINGS)
        self.table = gpd.read_file(self.folder / TABLE, layer=TABLE_LAYER).sort_values("id").reset_index(drop=True)
        if len(self.table) != len(self.embeddings):
            raise GeoclError("tiles.gpkg and embeddings.npy disagree; build the index again", path=self.folder)
        stored = torch.load(self.folder / TEXT_TOWER, map_location="cpu", weights_only=False)
        self.settings = stored["settings"]
        self.text = text_tower_from(self.settings)
        self.text.load_state_dict(stored["state"])
        self.text.eval()
        self.tokenizer = WordTokenizer.from_state(self.settings["tokenizer"])
        self._bounds = self.table.geometry.bounds.to_numpy(dtype=np.float64)
        self._lock = threading.Lock()

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
        return [self.hit(rank, int(tile), float(scores[tile])) for rank, tile in enumerate(ranking(scores)[:k], start=1)]

    def hit(self, rank: int, tile: int, score: float) -> Hit:
        """The :class:`Hit` of tile ``tile`` at ``rank``."""
        row = self.table.iloc[tile]
        left, bottom, right, top = (float(value) for value in self._bounds[tile])
        return Hit(rank, score, tile, str(row["path"]), str(row["split"]), str(row["caption"] or ""), (left, bottom, right, top))

    def thumbnail(self, tile: int) -> Path:
        """The thumbnail PNG of a tile."""
        return self.folder / THUMBNAILS / f"{tile}.png"


def write_hits_geopackage(index: SearchIndex, hits: list[Hit], final: str | os.PathLike[str], query: str) -> Path:
    """The hits' footprints with rank, score, path and caption as a GeoPackage (layer ``hits``), atomically."""
    import geopandas as gpd
    from shapely.geometry import box

    frame = gpd.GeoDataFrame(
        {
            "rank": [hit.rank for hit in hits], "score": [hit.score for hit in hits], "id": [hit.id for hit in hits],
            "path": [hit.path for hit in hits], "caption": [hit.caption for hit in hits], "query": [query] * len(hits),
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
