"""`geocl search`: the top k by cosine similarity (ties by id), clear refusals, GeoPackage and contact sheet;
damaged or crafted indexes refused in one line by `search` and `serve` alike."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from PIL import Image

from geocl.cli import main
from geocl.retrieval.index import EMBEDDINGS, INDEX_META, TABLE, TABLE_LAYER, TEXT_TOWER, file_record
from geocl.retrieval.model import load_towers
from geocl.retrieval.search import HITS_LAYER, SearchIndex
from geocl.retrieval.text import QueryError
from tests.retrieval.helpers import Payload


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


@pytest.mark.parametrize(
    ("query", "message"), [("", "empty"), ("x" * 600, "characters long"), ("volcano", "unknown word")]
)
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


# ------------------------------------------------------------------ damaged and crafted indexes


def _copy(index: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(index, tmp_path / "index"))


def _forget_file_records(folder: Path) -> None:
    """As an index written before index.json recorded its files' sizes and checksums."""
    meta = json.loads((folder / INDEX_META).read_text())
    del meta["files"]
    (folder / INDEX_META).write_text(json.dumps(meta))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _other_table(folder: Path) -> None:
    """tiles.gpkg of another index: one tile fewer."""
    table = gpd.read_file(folder / TABLE, layer=TABLE_LAYER)
    (folder / TABLE).unlink()
    table.iloc[:-1].to_file(folder / TABLE, layer=TABLE_LAYER, driver="GPKG")


DAMAGES = {
    "truncated embeddings.npy": (EMBEDDINGS, lambda folder: _truncate(folder / EMBEDDINGS)),
    "truncated text.pt": (TEXT_TOWER, lambda folder: _truncate(folder / TEXT_TOWER)),
    "truncated tiles.gpkg": (TABLE, lambda folder: _truncate(folder / TABLE)),
    "missing embeddings.npy": (EMBEDDINGS, lambda folder: (folder / EMBEDDINGS).unlink()),
    "missing text.pt": (TEXT_TOWER, lambda folder: (folder / TEXT_TOWER).unlink()),
    "tiles.gpkg of another index": (TABLE, _other_table),
    "missing thumbnail": ("thumbnails/3.png", lambda folder: (folder / "thumbnails" / "3.png").unlink()),
}


def _refused_in_one_line(argv: list[str], capsys: pytest.CaptureFixture[str], names: Path, outputs: list[Path]) -> str:
    """``geocl <argv>`` exits 2 with one line naming ``names`` and the rebuild command; ``outputs`` unchanged."""
    before = {path: path.read_bytes() for path in outputs}
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err and captured.out == "", captured
    assert lines[0].startswith(f"geocl {argv[0]}: error: {names}: "), lines[0]
    assert "rebuild the index: geocl index " in lines[0] and lines[0].endswith("--overwrite"), lines[0]
    assert {path: path.read_bytes() for path in outputs} == before
    return lines[0]


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """`geocl serve` must refuse before it serves: reaching the server is a failure, not a hang."""
    import geocl.retrieval.server as server

    def refuse(_app: object) -> None:
        raise AssertionError("geocl serve started on an index it should have refused")

    monkeypatch.setattr(server, "_uvicorn_server", refuse)


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "old-index"])
@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("command", ["search", "serve"])
def test_a_damaged_index_is_refused_at_once_naming_the_file_and_the_rebuild(
    retrieval_index: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_server: None,
    command: str,
    damage: str,
    recorded: bool,
) -> None:
    folder = _copy(retrieval_index, tmp_path)
    name, harm = DAMAGES[damage]
    if not recorded:
        _forget_file_records(folder)
    harm(folder)
    outputs = [tmp_path / "hits.gpkg", tmp_path / "hits.png"]
    for output in outputs:
        output.write_bytes(b"earlier result")
    argv = (
        ["search", str(folder), "forest", "--gpkg", str(outputs[0]), "--png", str(outputs[1])]
        if command == "search"
        else ["serve", str(folder), "--port", "0"]
    )
    line = _refused_in_one_line(argv, capsys, folder / name, outputs)
    assert f"--out {folder} --overwrite" in line


def test_a_file_changed_or_copied_from_another_index_is_refused(
    retrieval_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(retrieval_index, tmp_path)
    embeddings = np.load(folder / EMBEDDINGS)
    np.save(folder / EMBEDDINGS, embeddings[::-1].copy())  # same size and shape, other rows
    line = _refused_in_one_line(["search", str(folder), "forest"], capsys, folder / EMBEDDINGS, [])
    assert "differs from the file the index wrote" in line


def test_embeddings_that_disagree_with_the_index_are_refused_without_records(
    retrieval_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(retrieval_index, tmp_path)
    _forget_file_records(folder)
    embeddings = np.load(folder / EMBEDDINGS)
    np.save(folder / EMBEDDINGS, embeddings[:, :8].copy())
    assert "16-d float32" in _refused_in_one_line(["search", str(folder), "forest"], capsys, folder / EMBEDDINGS, [])
    embeddings[2, 3] = np.nan
    np.save(folder / EMBEDDINGS, embeddings)
    assert "not finite" in _refused_in_one_line(["search", str(folder), "forest"], capsys, folder / EMBEDDINGS, [])


def test_serve_refuses_a_damaged_index_before_it_listens(retrieval_index: Path, tmp_path: Path) -> None:
    folder = _copy(retrieval_index, tmp_path)
    _truncate(folder / EMBEDDINGS)
    command = [sys.executable, "-m", "geocl.cli", "serve", str(folder), "--port", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""  # no address: it never served
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"geocl serve: error: {folder / EMBEDDINGS}: is truncated")


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("command", ["search", "serve"])
def test_a_crafted_text_tower_is_never_unpickled(
    retrieval_index: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_server: None,
    command: str,
    zipped: bool,
) -> None:
    control = tmp_path / "control.pt"  # the payload is real: unpickling it creates its marker
    torch.save({"x": Payload(tmp_path / "control-marker")}, control, _use_new_zipfile_serialization=zipped)
    torch.load(control, weights_only=False)
    assert (tmp_path / "control-marker").exists()

    folder = _copy(retrieval_index, tmp_path)
    marker = tmp_path / "marker"
    stored = torch.load(folder / TEXT_TOWER, weights_only=True)
    stored["settings"]["extra"] = Payload(marker)
    torch.save(stored, folder / TEXT_TOWER, _use_new_zipfile_serialization=zipped)
    meta = json.loads((folder / INDEX_META).read_text())  # a crafted folder is consistent with itself
    meta["files"][TEXT_TOWER] = file_record(folder / TEXT_TOWER)
    (folder / INDEX_META).write_text(json.dumps(meta))
    argv = ["search", str(folder), "forest"] if command == "search" else ["serve", str(folder), "--port", "0"]
    line = _refused_in_one_line(argv, capsys, folder / TEXT_TOWER, [])
    assert "objects other than tensors and plain data" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    ("query", "named"), [("forêt", "unknown word 'forêt':"), ("水 🌲 water", "unknown words '水', '🌲':")]
)
def test_command_refuses_unicode_words_the_model_never_saw_as_typed(
    retrieval_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], query: str, named: str
) -> None:
    gpkg = tmp_path / "hits.gpkg"
    gpkg.write_bytes(b"earlier result")
    assert main(["search", str(retrieval_index), query, "--gpkg", str(gpkg)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geocl search: error: QUERY: " + named) and captured.out == ""
    assert gpkg.read_bytes() == b"earlier result"
