"""`geocl serve`: the search page on a free local port, in a real headless browser, and its JSON route under load."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from geocl.cli import main
from geocl.errors import GeoclError
from geocl.retrieval.search import SearchIndex
from geocl.retrieval.server import SearchServer

#: Debian's Chromium (what CI installs); GEOCL_CHROMIUM points elsewhere.
CHROMIUM = Path(os.environ.get("GEOCL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
QUERY = "forest next to water"


@pytest.fixture(scope="module")
def server(retrieval_index: Path):  # noqa: ANN201
    with SearchServer(retrieval_index, port=0, k=5) as running:
        yield running


def test_search_route_answers_hits_and_refuses_with_messages(server: SearchServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        ok = client.post("/api/search", json={"query": QUERY, "k": 3})
        assert ok.status_code == 200
        expected = server.index.search(QUERY, 3)
        answered = ok.json()["hits"]
        assert [hit["id"] for hit in answered] == [hit.id for hit in expected]
        assert [hit["score"] for hit in answered] == pytest.approx([hit.score for hit in expected])
        assert answered[0] == {**expected[0].as_dict(), "score": answered[0]["score"]}
        for body, message in [
            ({"query": "", "k": 3}, "the query is empty"),
            ({"query": "forest " * 200, "k": 3}, "characters long"),
            ({"query": "volcano", "k": 3}, "unknown word 'volcano'"),
            ({"query": QUERY, "k": 0}, "k must be a whole number from 1 to 100"),
            ({"query": QUERY, "k": "many"}, "k must be"),
            ({"query": 42}, "must be text"),
        ]:
            refused = client.post("/api/search", json=body)
            assert refused.status_code == 400 and message in refused.json()["error"], (body, refused.text)
        assert client.post("/api/search", content=b"not json").status_code == 400
        assert client.get("/thumbnails/99999.png").status_code == 404
        assert client.get("/thumbnails/0.png").headers["content-type"] == "image/png"
        info = client.get("/api/info").json()
        assert info["tiles"] == len(server.index) and info["default_k"] == 5


def test_twenty_concurrent_queries_all_answer(server: SearchServer) -> None:
    queries = [f"{a} next to {b}" for a in ("forest", "water", "cropland", "grassland") for b in ("roads", "forest", "water", "cropland", "buildings")]

    async def ask_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/api/search", json={"query": q, "k": 4}) for q in queries))

    answers = asyncio.run(ask_all())
    assert len(answers) == 20 and all(answer.status_code == 200 for answer in answers)
    for query, answer in zip(queries, answers, strict=True):
        assert [hit["id"] for hit in answer.json()["hits"]] == [hit.id for hit in server.index.search(query, 4)]


def test_the_server_stops_cleanly_and_frees_its_port(retrieval_index: Path) -> None:
    running = SearchServer(SearchIndex(retrieval_index), port=0).start()
    port = running.port
    assert httpx.get(f"{running.url}/api/info", timeout=10).status_code == 200
    running.stop()
    assert running.thread is not None and not running.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=2)
    with socket.socket() as probe:  # the port is free again
        probe.bind(("127.0.0.1", port))


def test_the_command_names_its_address_and_stops_on_ctrl_c(retrieval_index: Path) -> None:
    command = [sys.executable, "-m", "geocl.cli", "serve", str(retrieval_index), "--port", "0", "-k", "3"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url is not None, line + (process.stderr.read() if process.stderr else "")
        assert httpx.get(f"{url.group(0)}/api/info", timeout=20).json()["default_k"] == 3
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and "stopped" in out and err == ""


def test_a_taken_port_is_refused_in_one_line(retrieval_index: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(GeoclError, match="choose another --port"):
            SearchServer(retrieval_index, port=taken.getsockname()[1])


def _chromium():  # noqa: ANN202
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright client is missing: pip install playwright")
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install it (Debian/Ubuntu: sudo apt-get install chromium) "
            "or set GEOCL_CHROMIUM to a Chromium binary"
        )
    return sync_api


def test_the_page_answers_a_query_in_a_headless_browser(
    server: SearchServer, retrieval_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sync_api = _chromium()
    executable = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url)
            page.wait_for_selector("body[data-ready=true]")
            page.fill("#query", QUERY)
            page.fill("#k", "5")
            page.click("#go")
            page.wait_for_selector(".hit >> nth=4")
            assert page.locator(".hit").count() == 5
            assert page.locator("img.thumb").count() == 5
            assert page.locator("#footprints rect.footprint").count() == 5
            page.wait_for_function("[...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
            assert page.evaluate("document.getElementById('overview-image').naturalWidth") > 0
            page_paths = page.locator(".hit").evaluate_all("nodes => nodes.map(n => n.dataset.path)")
            page.screenshot(path=str(tmp_path / "search_page.png"), full_page=True)

            # the command line gives the same tiles in the same order
            assert main(["search", str(retrieval_index), QUERY, "-k", "5"]) == 0
            printed = [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]]
            assert printed == page_paths

            page.fill("#query", "")
            page.click("#go")
            page.wait_for_selector("#message:not([hidden])")
            assert "the query is empty" in page.inner_text("#message")
            assert page.locator(".hit").count() == 0
            page.fill("#query", "volcano")
            page.click("#go")
            page.wait_for_function("document.getElementById('message').textContent.includes('volcano')")
        finally:
            browser.close()
