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
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
QUERY = "forest next to water"


@pytest.fixture(scope="module")
def server(retrieval_index: Path):
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
        assert answered[0] == {**expected[0].public_dict(), "score": answered[0]["score"]}
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


def test_answers_name_tiles_without_paths_of_the_server(server: SearchServer) -> None:
    roots = [
        str(server.index.folder.resolve()),
        str(server.index.meta["tiles"]),
        str(Path(server.index.meta["tiles"]).parent),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answers = [
            client.post("/api/search", json={"query": QUERY, "k": 100}),
            client.get("/api/info"),
            client.get("/thumbnails/99999.png"),
            client.post("/api/search", json={"query": "volcano"}),
        ]
        assert all(root not in answer.text for answer in answers for root in roots)
        hits = answers[0].json()["hits"]
        assert len(hits) == len(server.index)
        for hit, expected in zip(hits, server.index.search(QUERY, 100), strict=True):
            assert "path" not in hit
            assert hit["name"] == Path(expected.path).relative_to(server.index.meta["tiles"]).as_posix()
            assert hit["name"].startswith("images/") and hit["thumbnail"] == f"/thumbnails/{expected.id}.png"
        assert client.get(hits[0]["thumbnail"]).headers["content-type"] == "image/png"


def test_request_bodies_over_64_kib_are_refused_with_413(server: SearchServer) -> None:
    from fastapi.testclient import TestClient

    from geocl.retrieval.server import MAX_BODY_BYTES, create_app

    assert MAX_BODY_BYTES == 64 * 1024
    big = b'{"query": "' + b"forest " * (12 * 1024 * 1024 // 7) + b'"}'  # 12 MB
    with TestClient(create_app(server.index)) as client:  # the application itself
        refused = client.post("/api/search", content=big, headers={"content-type": "application/json"})
        assert refused.status_code == 413 and refused.json() == {"error": "the request body is larger than 64 KiB"}
        # a body within the limit still reaches the route (padding is valid JSON whitespace)
        padded = b'{"query": "' + QUERY.encode() + b'", "k": 2}' + b" " * (MAX_BODY_BYTES - 100)
        assert client.post("/api/search", content=padded, headers={"content-type": "application/json"}).json()["k"] == 2

    def chunks():  # no Content-Length: refused once it grows past the limit
        for _ in range(200):
            yield b" " * 1024

    with httpx.Client(base_url=server.url, timeout=30) as client:  # the running server
        declared = client.post("/api/search", content=b" " * (MAX_BODY_BYTES + 1))
        assert declared.status_code == 413 and "64 KiB" in declared.json()["error"]
        assert client.post("/api/search", content=big).status_code == 413
        streamed = client.post("/api/search", content=chunks())
        assert streamed.status_code == 413
    with httpx.Client(base_url=server.url, timeout=30) as client:  # and it goes on answering
        assert client.post("/api/search", json={"query": QUERY, "k": 1}).status_code == 200


def test_the_address_of_a_search_runs_it(server: SearchServer) -> None:
    """Without a browser: /?q=water serves the page whose script reads q and k from its address and
    asks the search route, which answers that query; the form is a GET form of q and k."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = client.get("/", params={"q": "water", "k": "4"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert 'method="get"' in html and 'name="q"' in html and 'name="k"' in html
        assert (
            "new URLSearchParams(location.search)" in html and 'params.get("q")' in html and 'params.get("k")' in html
        )
        assert "history.pushState" in html and '"popstate"' in html and "await searchFromAddress();" in html
        # what the script then asks (k as a string, as the address gives it), and what it gets
        answer = client.post("/api/search", json={"query": "water", "k": "4"}).json()
        assert [hit["id"] for hit in answer["hits"]] == [hit.id for hit in server.index.search("water", 4)]
        assert client.post("/api/search", json={"query": "water", "k": None}).json()["k"] == 5  # no k: the default


def test_twenty_concurrent_queries_all_answer(server: SearchServer) -> None:
    queries = [
        f"{a} next to {b}"
        for a in ("forest", "water", "cropland", "grassland")
        for b in ("roads", "forest", "water", "cropland", "buildings")
    ]

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


def _chromium():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright client is missing: pip install playwright"
    )
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
            page.wait_for_function(
                "[...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
            )
            assert page.evaluate("document.getElementById('overview-image').naturalWidth") > 0
            page_names = page.locator(".hit").evaluate_all("nodes => nodes.map(n => n.dataset.name)")
            assert page.url.endswith("/?q=forest+next+to+water&k=5")  # the search is in the address
            page.screenshot(path=str(tmp_path / "search_page.png"), full_page=True)

            # the command line gives the same tiles in the same order
            assert main(["search", str(retrieval_index), QUERY, "-k", "5"]) == 0
            printed = [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]]
            assert [Path(path).relative_to(server.index.meta["tiles"]).as_posix() for path in printed] == page_names

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


def test_a_page_opened_at_the_address_of_a_search_shows_its_results(server: SearchServer) -> None:
    sync_api = _chromium()
    executable = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    water = [str(hit.id) for hit in server.index.search("water", 4)]
    forest = [str(hit.id) for hit in server.index.search("forest", 5)]
    shown = "nodes => nodes.map(n => n.dataset.id)"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server.url}/?q=water&k=4")
            page.wait_for_selector("body[data-ready=true]")
            assert page.input_value("#query") == "water" and page.input_value("#k") == "4"
            assert page.locator(".hit").evaluate_all(shown) == water
            page.goto(f"{server.url}/?q=water")  # no k: the server's default (5 here)
            page.wait_for_selector("body[data-ready=true]")
            assert page.locator(".hit").count() == 5
            page.fill("#query", "forest")
            page.click("#go")
            page.wait_for_url("**/?q=forest&k=5")
            page.wait_for_function("document.querySelector('#status').textContent.includes('\"forest\"')")
            assert page.locator(".hit").evaluate_all(shown) == forest
            page.go_back()  # Back shows the search of that address again
            page.wait_for_function("document.querySelector('#status').textContent.includes('\"water\"')")
            assert page.input_value("#query") == "water" and page.locator(".hit").count() == 5
        finally:
            browser.close()
