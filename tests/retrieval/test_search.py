"""`geocl search`: the top k by cosine similarity (ties by id), clear refusals, GeoPackage and contact sheet."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image

from geocl.cli import main
from geocl.retrieval.model import load_towers
from geocl.retrieval.search import HITS_LAYER, SearchIndex
from geocl.retrieval.text import QueryError


def test_hits_are_the_top_k_by_cosine_similarity(retrieval_index: Path, retrieval_checkpoint: Path) -> None:
    index = SearchIndex(retrieval_index)
    hits = index.search("river next to farmland", k=5)
    # the same query through the checkpoint's own text tower, scored by hand
    query = load_towers(retrieval_checkpoint).embed_texts(["water next to cropland"]).numpy()[0]
    scores = np.load(retrieval_index / "embeddings.npy") @ query
    order = sorted(range(len(scores)), key=lambda tile: (-scores[tile], tile))[:5]
    assert [hit.id for hit in hits] == order
    assert [hit.rank for hit in hits] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([hit.score for hit in hits], scores[order], atol=1e-5)
    assert all(hits[i].score >= hits[i + 1].score for i in range(4))
    assert len(index.search("forest", k=500)) == len(index)  # all of them, when k exceeds the index


def test_equal_scores_are_ranked_by_tile_id(retrieval_index: Path, tmp_path: Path) -> None:
    index = SearchIndex(retrieval_index)
    index.embeddings = np.repeat(index.embeddings[:1], len(index), axis=0)  # every tile scores the same
    assert [hit.id for hit in index.search("forest", k=4)] == [0, 1, 2, 3]


@pytest.mark.parametrize(("query", "message"), [("", "empty"), ("x" * 600, "characters long"), ("volcano", "unknown word")])
def test_queries_it_cannot_read_raise_a_query_error(retrieval_index: Path, query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        SearchIndex(retrieval_index).search(query)


def test_command_prints_the_hits_and_writes_footprints_and_a_contact_sheet(
    retrieval_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gpkg, png = tmp_path / "hits.gpkg", tmp_path / "sheet.png"
    query = "forest next to water"
    assert main(["search", str(retrieval_index), query, "-k", "4", "--gpkg", str(gpkg), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    hits = SearchIndex(retrieval_index).search(query, 4)
    for hit in hits:
        assert f"{hit.rank:>4}  {hit.score:6.3f}  {hit.path}" in out
    footprints = gpd.read_file(gpkg, layer=HITS_LAYER)
    assert footprints["rank"].tolist() == [1, 2, 3, 4] and footprints["path"].tolist() == [hit.path for hit in hits]
    np.testing.assert_allclose(footprints.geometry.bounds.to_numpy(), [hit.bounds for hit in hits])
    assert footprints.crs == SearchIndex(retrieval_index).crs and set(footprints["query"]) == {query}
    with Image.open(png) as sheet:
        assert sheet.size[0] > 400


def test_command_refuses_an_unknown_word_in_one_line(retrieval_index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(retrieval_index), "volcano near lava"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "unknown words 'volcano', 'lava'" in error[0] and "Traceback" not in error[0]
