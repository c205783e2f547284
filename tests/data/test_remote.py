"""Remote rasters over a real HTTP server process: windowed range reads, byte-identical tiles,
and one line naming the URL for a missing, refused or unreachable file (geocl/data/remote.py)."""

from __future__ import annotations

import hashlib
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.errors
import torch
from rasterio.windows import Window

from geocl.cli import main
from geocl.data.mosaic import open_scene, scene_files
from geocl.data.rasters import find_rasters, inspect_raster
from geocl.data.remote import (
    RemoteAccessError,
    RemoteError,
    RemoteFile,
    RemoteNotFoundError,
    RemoteUnreachableError,
    display_url,
    gdal_path,
    is_remote,
    remote_env,
    remote_error,
)
from geocl.data.synthetic import make_scene
from geocl.errors import GeoclError
from tests.data.cog import scene_cog
from tests.http_server import Server, serve


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A served folder: ``scene.tif``, a 256 px 4-band COG (64 px tiles, overviews), and ``private/scene.tif``."""
    root = tmp_path_factory.mktemp("www")
    files = make_scene(tmp_path_factory.mktemp("scene"), size=256, seed=1)
    cog = scene_cog(files.image, root / "scene.tif")
    (root / "private").mkdir()
    (root / "private" / "scene.tif").write_bytes(cog.read_bytes())
    return root


@pytest.fixture(scope="module")
def server(www: Path) -> Iterator[Server]:
    with serve(www) as running:
        yield running


def _closed_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on (the system just handed it out)
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*.tif"))
    }


def test_urls_become_gdal_paths_and_signatures_are_hidden() -> None:
    assert gdal_path("https://h.org/a/b.tif") == "/vsicurl/https://h.org/a/b.tif"
    assert gdal_path("http://h.org/b.tif?x=1") == "/vsicurl/http://h.org/b.tif?x=1"
    assert gdal_path("s3://bucket/k/b.tif") == "/vsis3/bucket/k/b.tif"
    assert gdal_path("gs://bucket/k/b.tif") == "/vsigs/bucket/k/b.tif"
    assert gdal_path("/vsiaz/container/b.tif") == "/vsiaz/container/b.tif"
    assert all(is_remote(x) for x in ("https://h/a.tif", "S3://b/k", "gs://b/k", "/vsizip//tmp/a.zip/x.tif"))
    # a Path is local: Path() folds the '//' of a URL, so a URL is never read from one
    assert not is_remote(Path("https://h/a.tif")) and not is_remote("scene.tif") and not is_remote("C:/x.tif")
    signed = "https://b.s3.amazonaws.com/k.tif?X-Amz-Credential=AKIA1&X-Amz-Signature=abc&versionId=7"
    shown = display_url(signed)
    assert "AKIA1" not in shown and "abc" not in shown and "versionId=7" in shown
    assert "secret" not in display_url("https://acct.blob.core.windows.net/c/k.tif?sv=2024&sig=secret")
    remote = RemoteFile(signed)
    assert str(remote) == shown and remote.name == "k.tif" and remote.stem == "k" and remote.suffix == ".tif"
    assert remote == RemoteFile(signed) and remote.resolve() is remote


def test_find_rasters_takes_a_url_as_one_file(server: Server) -> None:
    url = f"{server.url}/scene.tif"
    found = find_rasters(url)
    assert found == [RemoteFile(url)]
    info = inspect_raster(url)
    assert (info.width, info.height, info.count, info.dtype) == (256, 256, 4, "uint16")
    assert str(info.path) == url
    assert info.path.stat().st_size == (Path(server.process.args[-1]) / "scene.tif").stat().st_size
    with pytest.raises(GeoclError, match="--assets picks the bands of STAC items"):
        find_rasters(url, assets=["B04"])


def test_a_window_fetches_its_tiles_not_the_file(
    server: Server, www: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A COG of its own, under a name no other test reads: GDAL keeps what it fetched per process,
    # so on the shared scene.tif the count depended on which tests ran before in the worker (a
    # cold read of that 0.5 MB file costs two 64 KiB requests, a quarter of it). 512 px: a file
    # large enough that the header and one tile are a small part of it, read cold every time.
    files = make_scene(tmp_path_factory.mktemp("window"), size=512, seed=2)
    scene_cog(files.image, www / "window.tif")
    url = f"{server.url}/window.tif"
    size = (www / "window.tif").stat().st_size
    with rasterio.open(www / "window.tif") as src:
        expected = src.read(window=Window(64, 128, 64, 64))
    server.reset()
    with open_scene(scene_files(url)) as src:
        assert np.array_equal(src.read(window=Window(64, 128, 64, 64)), expected)
    served = server.stats()
    # the header and one 64 px tile of 4 bands (deflate): a small part of the file
    assert 0 < served["bytes"]["/window.tif"] < size / 4, (served, size)


def test_tile_over_http_writes_the_local_tiles_and_reads_part_of_the_file(
    server: Server, www: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    common = ["--size", "64", "--split-block", "128", "--quiet"]
    assert main(["tile", str(www / "scene.tif"), "--out", str(local), *common]) == 0
    server.reset()
    assert main(["tile", f"{server.url}/scene.tif", "--out", str(remote), *common]) == 0
    served = server.stats()
    digests = _digests(local)
    assert len(digests) > 10 and _digests(remote) == digests
    assert (remote / "tiles.gpkg").read_bytes() == (local / "tiles.gpkg").read_bytes()
    size = (www / "scene.tif").stat().st_size
    # range reads only: every full-resolution tile once (statistics, then the tiles from
    # GDAL's cache); the overviews are never fetched
    assert 0 < served["bytes"]["/scene.tif"] < size, (served, size)
    assert f"{server.url}/scene.tif" in (remote / "tiles.json").read_text()
    # a rerun trusts the remote source recorded in tiles.json and writes nothing
    capsys.readouterr()
    assert main(["tile", f"{server.url}/scene.tif", "--out", str(remote), *common]) == 0
    assert "written 0, already there" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("path", "reason"),
    [("missing.tif", "not found (HTTP 404)"), ("private/scene.tif", "access denied (HTTP 403)"), ("", "unreachable")],
)
def test_a_missing_refused_or_unreachable_file_is_one_line(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str, reason: str
) -> None:
    url = f"{server.url}/{path}" if path else f"http://127.0.0.1:{_closed_port()}/scene.tif"
    out = tmp_path / "tiles"
    assert main(["tile", url, "--out", str(out), "--size", "64", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"geocl tile: error: {url}: {reason}"), captured.err
    assert not out.exists()  # nothing written, not even the folder


def test_remote_errors_are_built_in_kinds_and_survive_pickling(server: Server) -> None:
    def raised(url: str) -> BaseException:
        with pytest.raises(rasterio.errors.RasterioIOError) as info, remote_env():
            rasterio.open(gdal_path(url))
        return info.value

    cases = {
        f"{server.url}/missing.tif": (RemoteNotFoundError, FileNotFoundError),
        f"{server.url}/private/scene.tif": (RemoteAccessError, PermissionError),
        f"http://127.0.0.1:{_closed_port()}/x.tif": (RemoteUnreachableError, ConnectionError),
    }
    for url, (kind, builtin) in cases.items():
        error = remote_error(raised(url), url, "item a, asset B04")
        assert isinstance(error, kind) and isinstance(error, builtin) and isinstance(error, GeoclError)
        assert str(error).startswith(f"{url}: item a, asset B04: ")
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is kind and str(again) == str(error) and again.path == url
    assert remote_error(ValueError("HTTP response code: 404"), "/tmp/local.tif") is None  # local: not ours
    assert isinstance(remote_error(OSError("HTTP response code: 418"), "https://h/x.tif"), RemoteError)


def test_grass_geo_sampling_reads_remote_maps_and_scenes(server: Server, www: Path) -> None:
    """GraSS's stage-2 geo sampling: the region sampler and the scene dataset take URLs, and draw
    and read what they draw and read from the same local files."""
    from rasterio.transform import from_origin

    from geocl.data.scene import SceneImage
    from geocl.sampling import GradientRegionSampler
    from geocl.sampling.region_rasters import write_region_map

    with rasterio.open(www / "scene.tif") as src:
        crs, left, top = src.crs, src.bounds.left, src.bounds.top
    heatmap = np.add.outer(np.arange(256.0), np.arange(256.0))  # high towards the bottom right
    write_region_map(www / "maps" / "map.tif", heatmap, transform=from_origin(left, top, 1.0, 1.0), crs=crs)
    local = GradientRegionSampler(www / "maps" / "map.tif", size=64, length=5, generator=3)
    remote = GradientRegionSampler(f"{server.url}/maps/map.tif", size=64, length=5, generator=3)
    boxes = list(remote)
    assert boxes == list(local) and remote.candidates == local.candidates
    scene_local, scene_remote = SceneImage(www / "scene.tif"), SceneImage(f"{server.url}/scene.tif")
    assert scene_remote.remote and not scene_local.remote
    for box in boxes[:2]:
        assert torch.equal(scene_remote[box]["image"], scene_local[box]["image"])
    with pytest.raises(RemoteNotFoundError, match=r"/maps/none.tif: not found \(HTTP 404\)"):
        GradientRegionSampler([f"{server.url}/maps/none.tif"], size=64, length=5)
