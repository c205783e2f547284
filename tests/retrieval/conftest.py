"""A retrieval checkpoint and its index over the tiny tile set, built once for the retrieval tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.retrieval.helpers import untrained_checkpoint


@pytest.fixture(scope="session")
def retrieval_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path) -> Path:
    """A checkpoint of the retrieval method over the tiny tile set (untrained towers, fitted vocabulary)."""
    return untrained_checkpoint(tmp_path_factory.mktemp("retrieval"), tiny_tiles)


@pytest.fixture(scope="session")
def retrieval_index(tmp_path_factory: pytest.TempPathFactory, retrieval_checkpoint: Path, tiny_tiles: Path) -> Path:
    """Every tile of the tiny tile set indexed with that checkpoint (by the library, not the CLI)."""
    from geocl.retrieval.index import build_index

    return build_index(retrieval_checkpoint, tiny_tiles, tmp_path_factory.mktemp("index") / "index").out
