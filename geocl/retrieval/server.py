"""``geocl serve``: a local search page over an index (FastAPI, served by uvicorn).

Routes::

    GET  /                     the page (static/search.html): a text box, the top-k
                               thumbnails with scores and captions, and the scene overview
                               with the hits' footprints drawn on it; ``/?q=water&k=5``
                               opens it with that search run (a search can be linked and
                               bookmarked: the page puts each search it runs in its URL)
    GET  /api/info             tile count, default and largest k, overview extent, CRS
    POST /api/search           {"query": str, "k": int} -> {"query", "k", "hits": [...]}
                               (the hits of :meth:`SearchIndex.search`, the same as
                               ``geocl search``, each with its id, rank, score, caption,
                               footprint, its path inside the tile set and thumbnail URL:
                               no path of this machine); a query the model cannot read
                               (empty, too long, unknown words) or a bad k -> 400 {"error": message}
    GET  /thumbnails/<id>.png  a tile's thumbnail
    GET  /overview.png         the overview mosaic

A request body larger than :data:`MAX_BODY_BYTES` is answered 413 before it is read
(a declared ``Content-Length``) or as soon as it grows past it (a chunked body): a
query is at most :data:`~geocl.retrieval.text.MAX_QUERY_CHARS` characters, so no
honest request comes near it. The index is opened and checked whole before the server
listens (:class:`SearchIndex`): a damaged index stops ``geocl serve`` at start.

Queries travel as JSON in a POST body, so a very long one reaches the check that
answers it with a message rather than a URL-length failure. The search route is a plain
function, which FastAPI runs in its thread pool: concurrent queries are served side by
side (the text tower itself runs one at a time under the index's lock, about a
millisecond each). Any request a client gets wrong is answered 400 with a message, never
a 500 with a traceback.

The server binds 127.0.0.1 by default (the page is for the user on this machine);
``host="0.0.0.0"`` shares it on the network, which the user has to ask for.
:class:`SearchServer` runs it in a background thread (tests, notebooks) and stops it
cleanly; :func:`serve` runs it in the foreground until Ctrl-C.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from geocl.errors import GeoclError
from geocl.retrieval.index import OVERVIEW
from geocl.retrieval.search import SearchIndex
from geocl.retrieval.text import QueryError

#: The page.
PAGE = Path(__file__).resolve().parent / "static" / "search.html"
#: Largest k the page may ask for.
MAX_K = 100
#: Largest request body accepted, bytes (64 KiB).
MAX_BODY_BYTES = 64 * 1024


class SearchRequest(BaseModel):
    """The body of ``POST /api/search``; values are checked by the route, so that every mistake gets its message."""

    query: Any = ""
    k: Any = None


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 with a JSON message.

    A declared ``Content-Length`` over the limit is refused before a byte of the body is
    read; otherwise the body is read (at most ``limit`` bytes kept) and handed on to the
    application whole, or refused the moment it passes the limit.
    """

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        content = json.dumps({"error": f"the request body is larger than {self.limit // 1024} KiB"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})


def create_app(index: SearchIndex, default_k: int = 10) -> Any:
    """The FastAPI application of the search page over an opened index.

    Its answers name tiles by id, path inside the tile set and URL, never by a path of
    this machine; request bodies are limited to :data:`MAX_BODY_BYTES` (413).
    """
    from fastapi import FastAPI, HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    page = PAGE.read_text(encoding="utf-8")
    app = FastAPI(title="geocl search", docs_url=None, redoc_url=None, openapi_url=None)

    def refusal(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Any, _error: RequestValidationError) -> JSONResponse:
        return refusal('send a JSON body {"query": "...", "k": 10}')

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Any, error: StarletteHTTPException) -> JSONResponse:
        return refusal(str(error.detail), error.status_code)

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "tiles": len(index),
            "default_k": default_k,
            "max_k": MAX_K,
            "crs": str(index.crs or ""),
            "overview": {"url": f"/{OVERVIEW}", "extent": index.meta["overview"]["extent"]},
            "example": index.tokenizer.example().strip("'"),
        }

    @app.post("/api/search")
    def search(request: SearchRequest) -> Any:
        query = request.query
        if not isinstance(query, str):
            return refusal("the query must be text")
        k = default_k if request.k is None else request.k
        if isinstance(k, str) and k.strip().isdigit():
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            return refusal(f"k must be a whole number from 1 to {MAX_K}")
        start = time.perf_counter()
        try:
            hits = index.search(query, k)
        except QueryError as error:
            return refusal(error.message)
        return {
            "query": query,
            "k": k,
            "tiles": len(index),
            "milliseconds": round(1000 * (time.perf_counter() - start), 2),
            "hits": [hit.public_dict() for hit in hits],
        }

    @app.get("/thumbnails/{tile}.png")
    def thumbnail(tile: int) -> FileResponse:
        if not 0 <= tile < len(index):
            raise HTTPException(404, f"no tile {tile} in this index")
        try:
            path = index.thumbnail(tile)
        except GeoclError:  # removed since the server started; the message would name a path of this machine
            raise HTTPException(404, f"the thumbnail of tile {tile} is missing from the index; rebuild it") from None
        return FileResponse(path, media_type="image/png")

    @app.get(f"/{OVERVIEW}")
    def overview() -> FileResponse:
        path = index.folder / OVERVIEW
        if not path.is_file():
            raise HTTPException(404, "the overview is missing from the index; rebuild it")
        return FileResponse(path, media_type="image/png")

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening (port 0: a free one), handed to uvicorn.

    Binding here, before the server starts, answers a taken port with a message rather
    than uvicorn's exit, tells the real port of port 0 at once, and queues the
    connections that arrive while the server starts instead of refusing them.

    Raises:
        GeoclError: the address cannot be bound (key ``port``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise GeoclError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; choose another --port", key="port"
        ) from None
    return sock


def _uvicorn_server(app: Any) -> Any:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class SearchServer:
    """The search page served from a background thread.

    Args:
        index: an opened index, or its folder.
        host: address to bind (127.0.0.1: this machine only).
        port: TCP port; 0 = a free one (see :attr:`url`).
        k: the page's default k.

    Raises:
        GeoclError: no index in the folder, or the port is taken.

    Use as a context manager, or :meth:`start` and :meth:`stop`.
    """

    def __init__(self, index: SearchIndex | str | Path, host: str = "127.0.0.1", port: int = 0, k: int = 10) -> None:
        self.index = index if isinstance(index, SearchIndex) else SearchIndex(index)
        self.host = host
        self.socket = listening_socket(host, port)
        self.port = int(self.socket.getsockname()[1])
        self.server = _uvicorn_server(create_app(self.index, k))
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return _url(self.host, self.port)

    def start(self, timeout: float = 30.0) -> SearchServer:
        """Start serving; returns once the server runs.

        Raises:
            GeoclError: the server did not start within ``timeout`` seconds.
        """
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="geocl-search-page", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise GeoclError(f"the search page did not start on {self.url}", key="port")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, wait for the thread to end and release the port."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
        self.socket.close()

    def __enter__(self) -> SearchServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, k: int = 10, echo: Any = print) -> None:
    """Serve the search page of the index in ``folder`` until Ctrl-C (which returns normally).

    The line naming the address is written once the port listens (port 0: the free
    port chosen).

    Raises:
        GeoclError: no index in ``folder``, or the port is taken.
    """
    index = SearchIndex(folder)
    sock = listening_socket(host, port)
    try:
        server = _uvicorn_server(create_app(index, k))
        echo(f"search page for {len(index)} tiles: {_url(host, int(sock.getsockname()[1]))}  (Ctrl-C to stop)")
        sys.stdout.flush()  # the address is what a user (or a script reading the output) waits for
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C and usually raises it again: the way to stop
            pass
        # also when uvicorn returns without raising (seen once under load: the command then said nothing)
        echo("search page stopped")
    finally:
        sock.close()
