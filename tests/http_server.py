"""A small static HTTP server for tests of remote rasters: Range requests, byte counts, 403s.

Run as a process (``python -m tests.http_server ROOT``), so GDAL's curl talks to a real
server over a real socket, as it does to an object store: the tests start it with
:func:`serve`. It serves the files under ``ROOT`` and:

- honours ``Range: bytes=...`` with one range (206 and ``Content-Range``) or several
  (206, ``multipart/byteranges``), as object stores do, answers ``HEAD``, and sends
  ``Content-Length``, ``Accept-Ranges``, ``Last-Modified`` and an ``ETag``;
- answers 404 for a missing file and 403 for every path under ``/private/`` (an object
  the caller may not read);
- counts the body bytes it sent per path: ``GET /_stats`` returns
  ``{"bytes": {path: n}, "requests": {path: n}}`` (not counted itself), ``GET /_reset``
  sets the counts to zero.

The port is chosen by the system (bind to port 0, no race between choosing and binding)
and printed as the first line of stdout: ``PORT 41234``.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import hashlib
import json
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
_BOUNDARY = "geocl-test-boundary"


class _Counts:
    """Body bytes and requests per path, shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes: dict[str, int] = {}
        self.requests: dict[str, int] = {}

    def add(self, path: str, sent: int) -> None:
        with self.lock:
            self.bytes[path] = self.bytes.get(path, 0) + sent
            self.requests[path] = self.requests.get(path, 0) + 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {"bytes": dict(self.bytes), "requests": dict(self.requests)}

    def reset(self) -> None:
        with self.lock:
            self.bytes.clear()
            self.requests.clear()


def _ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """``[(first, last)]`` (inclusive) of a ``bytes=`` Range header, clipped to the file; None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes":
        return None
    ranges = []
    for part in spec.split(","):
        match = _RANGE.match(part)
        if match is None:
            return None
        start, end = match.groups()
        if start == "":  # the last N bytes
            if end == "":
                return None
            first, last = max(0, size - int(end)), size - 1
        else:
            first, last = int(start), (int(end) if end else size - 1)
        last = min(last, size - 1)
        if first > last:
            continue
        ranges.append((first, last))
    return ranges or None


def make_handler(root: Path, counts: _Counts) -> type[BaseHTTPRequestHandler]:
    """The request handler class serving ``root`` and counting into ``counts``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: tests read their own output
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            if self.path == "/_stats":
                self._reply(200, json.dumps(counts.snapshot()).encode(), "application/json")
                return
            if self.path == "/_reset":
                counts.reset()
                self._reply(200, b"{}", "application/json")
                return
            self._serve(body=True)

        def _reply(self, status: int, body: bytes, kind: str = "text/plain", *, send: bool = True) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send:
                self.wfile.write(body)

        def _serve(self, *, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/private/"):
                self._reply(403, b"Forbidden", send=body)
                return
            file = (root / path.lstrip("/")).resolve()
            if not file.is_relative_to(root) or not file.is_file():
                self._reply(404, b"Not Found", send=body)
                return
            data = file.read_bytes()
            size = len(data)
            kind = "application/json" if file.suffix == ".json" else "image/tiff"
            stat = file.stat()
            headers = {
                "Accept-Ranges": "bytes",
                "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
                "ETag": '"' + hashlib.sha1(data).hexdigest()[:16] + '"',
            }
            asked = self.headers.get("Range")
            ranges = _ranges(asked, size) if asked else None
            if asked and ranges is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if ranges is None:
                status, payload, content_type = 200, data, kind
            elif len(ranges) == 1:
                first, last = ranges[0]
                status, payload, content_type = 206, data[first : last + 1], kind
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            else:
                parts = []
                for first, last in ranges:
                    parts.append(
                        f"--{_BOUNDARY}\r\nContent-Type: {kind}\r\nContent-Range: bytes {first}-{last}/{size}\r\n\r\n".encode()
                        + data[first : last + 1]
                        + b"\r\n"
                    )
                status, payload = 206, b"".join(parts) + f"--{_BOUNDARY}--\r\n".encode()
                content_type = f"multipart/byteranges; boundary={_BOUNDARY}"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(payload)
                counts.add(path, len(payload))

    return Handler


@dataclass
class Server:
    """A running test server process.

    Attributes:
        url: its base URL, ``http://127.0.0.1:PORT``.
        process: the server process.
    """

    url: str
    process: subprocess.Popen[str]

    def stats(self) -> dict[str, dict[str, int]]:
        """Body bytes and requests per path since the start or the last :meth:`reset`."""
        with urllib.request.urlopen(f"{self.url}/_stats", timeout=10) as response:
            return json.loads(response.read())

    def bytes_sent(self, path: str) -> int:
        """Body bytes sent for ``path`` (``/scene.tif``)."""
        return self.stats()["bytes"].get(path, 0)

    def reset(self) -> None:
        """Set the counts to zero."""
        urllib.request.urlopen(f"{self.url}/_reset", timeout=10).close()


@contextlib.contextmanager
def serve(root: Path) -> Iterator[Server]:
    """Run the server over ``root`` in its own process for the duration of the block."""
    repository = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.http_server", str(root)], cwd=repository, stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline() if process.stdout is not None else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"the test HTTP server did not start: {line!r}")
        yield Server(f"http://127.0.0.1:{int(line.split()[1])}", process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.http_server ROOT [--port N]``: serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    counts = _Counts()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.root.resolve(), counts))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
