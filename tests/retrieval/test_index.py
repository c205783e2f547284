"""`geocl index`: every tile embedded once (the same alone or in a batch), with footprint, path, caption and thumbnail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from PIL import Image

from geocl.cli import main
from geocl.data.tile_dataset import TileDataset
from geocl.errors import GeoclError
from geocl.retrieval.index import (
    EMBEDDINGS,
    INDEX_META,
    OVERVIEW,
    TABLE,
    TABLE_LAYER,
    TEXT_TOWER,
    build_index,
    embed_tiles,
    file_record,
)
from geocl.retrieval.model import load_towers
from geocl.retrieval.search import SearchIndex
from tests.retrieval.helpers import Payload


def test_index_holds_every_tile_with_its_footprint_path_and_caption(retrieval_index: Path, tiny_tiles: Path) -> None:
    tiles = TileDataset(tiny_tiles, None, with_mask=True, progress=False)
    meta = json.loads((retrieval_index / INDEX_META).read_text())
    embeddings = np.load(retrieval_index / EMBEDDINGS)
    table = gpd.read_file(retrieval_index / TABLE, layer=TABLE_LAYER)
    assert meta["count"] == len(tiles) == len(embeddings) == len(table)
    assert embeddings.shape[1] == meta["dim"] == 16
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert table["id"].tolist() == list(range(len(tiles)))
    np.testing.assert_allclose(table.geometry.bounds.to_numpy(), tiles.bounds.numpy())
    assert table.crs == tiles.index.crs and all(Path(path).is_file() for path in table["path"])
    assert sorted(set(table["split"])) == ["test", "train", "val"]
    assert all(caption for caption in table["caption"])  # the tile set has masks: template captions
    thumbnails = sorted((retrieval_index / "thumbnails").glob("*.png"))
    assert len(thumbnails) == len(tiles)
    with Image.open(thumbnails[0]) as thumbnail:
        assert thumbnail.size == (96, 96) and thumbnail.mode == "RGB"
    left, bottom, right, top = meta["overview"]["extent"]
    bounds = tiles.bounds.numpy()
    assert (left, bottom, right, top) == pytest.approx(
        (bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max())
    )
    with Image.open(retrieval_index / OVERVIEW) as overview:
        assert max(overview.size) == 1024
        assert overview.size[0] / overview.size[1] == pytest.approx((right - left) / (top - bottom), rel=0.01)


def test_a_tile_embeds_the_same_alone_or_inside_a_batch(
    retrieval_checkpoint: Path, retrieval_index: Path, tiny_tiles: Path
) -> None:
    towers = load_towers(retrieval_checkpoint)
    tiles = TileDataset(tiny_tiles, "test", progress=False)
    alone = embed_tiles(towers, tiles, batch_size=1)
    batched = embed_tiles(towers, tiles, batch_size=len(tiles))
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone[0], alone[1])
    # and the index holds those embeddings (its row of each test tile)
    table = gpd.read_file(retrieval_index / TABLE, layer=TABLE_LAYER)
    rows = table.index[table["split"] == "test"].to_numpy()
    np.testing.assert_allclose(np.load(retrieval_index / EMBEDDINGS)[rows], batched.numpy(), atol=1e-5)


def test_the_command_indexes_one_split_and_keeps_an_existing_index(
    retrieval_checkpoint: Path, tiny_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "index"
    assert main(["index", str(retrieval_checkpoint), str(tiny_tiles), "--out", str(out), "--split", "test"]) == 0
    assert "indexed 8 tiles" in capsys.readouterr().out
    table = gpd.read_file(out / TABLE, layer=TABLE_LAYER)
    assert set(table["split"]) == {"test"} and len(table) == 8
    before = (out / EMBEDDINGS).read_bytes()
    assert main(["index", str(retrieval_checkpoint), str(tiny_tiles), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--overwrite" in error[0] and str(out) in error[0]
    assert (out / EMBEDDINGS).read_bytes() == before


def test_only_retrieval_checkpoints_are_indexed(tiny_tiles: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "geocl": {"method": "simclr"}}, other)
    with pytest.raises(GeoclError, match="not a checkpoint of the retrieval method") as error:
        build_index(other, tiny_tiles, tmp_path / "index")
    assert str(other) in str(error.value)
    with pytest.raises(GeoclError, match="no tile set here"):
        build_index(other, tmp_path, tmp_path / "index2")


def test_a_crafted_checkpoint_is_never_unpickled_and_the_index_is_kept(
    retrieval_checkpoint: Path,
    retrieval_index: Path,
    tiny_tiles: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    crafted = tmp_path / "crafted.ckpt"
    checkpoint = torch.load(retrieval_checkpoint, weights_only=True)
    marker = tmp_path / "marker"
    checkpoint["geocl_retrieval"]["extra"] = Payload(marker)
    torch.save(checkpoint, crafted)
    out = Path(shutil.copytree(retrieval_index, tmp_path / "index"))
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert main(["index", str(crafted), str(tiny_tiles), "--out", str(out), "--overwrite"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith(f"geocl index: error: {crafted}: ") and "tensors and plain data" in lines[0]
    assert not marker.exists()
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_the_index_records_its_files_and_a_rebuild_unmarks_the_old_index_first(
    retrieval_checkpoint: Path, retrieval_index: Path, tiny_tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geocl.retrieval.index as index_module

    meta = json.loads((retrieval_index / INDEX_META).read_text())
    assert set(meta["files"]) == {EMBEDDINGS, TABLE, TEXT_TOWER, OVERVIEW}
    for name, record in meta["files"].items():
        assert record == file_record(retrieval_index / name)
    out = Path(shutil.copytree(retrieval_index, tmp_path / "index"))

    def stop(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # a rebuild stopped half-way, after the thumbnails

    monkeypatch.setattr(index_module, "_write_table", stop)
    with pytest.raises(KeyboardInterrupt):
        build_index(retrieval_checkpoint, tiny_tiles, out, split="test", overwrite=True)
    # no index.json: the folder is an unfinished index, not the old one with some new files
    with pytest.raises(GeoclError, match="index.json missing"):
        SearchIndex(out)
