"""Rasters on a web server or in object storage, read in windows through GDAL's virtual file systems.

A *remote source* is given as a URL or a GDAL virtual path:

==========================  =====================================  =====================================
given                       GDAL reads it through                  credentials (environment only)
==========================  =====================================  =====================================
``https://…``, ``http://…``   ``/vsicurl/https://…``                 ``GDAL_HTTP_HEADERS``, ``GDAL_HTTP_AUTH``,
                                                                   ``GDAL_HTTP_USERPWD``, ``~/.netrc``
``s3://bucket/key``         ``/vsis3/bucket/key``                  ``AWS_ACCESS_KEY_ID``,
                                                                   ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
                                                                   ``AWS_PROFILE``, ``AWS_NO_SIGN_REQUEST``, …
``gs://bucket/key``         ``/vsigs/bucket/key``                  ``GS_ACCESS_KEY_ID``,
                                                                   ``GS_SECRET_ACCESS_KEY``,
                                                                   ``GOOGLE_APPLICATION_CREDENTIALS``,
                                                                   ``GS_NO_SIGN_REQUEST``, …
``/vsi…/…``                 as it is                               that file system's own
==========================  =====================================  =====================================

GDAL fetches only the byte ranges a read needs (the header, then the internal tiles of
a window, or of an overview for a decimated read): a Cloud-Optimized GeoTIFF is never
downloaded whole. Credentials are read by GDAL from the environment variables and files
its documentation lists (https://gdal.org/en/stable/user/virtual_file_systems.html);
geocl takes none as an argument, so none shows in a command line, a log or
``tiles.json``, and :func:`display_url` hides the signature of a pre-signed URL (S3
``X-Amz-*``, Azure SAS ``sig=``) wherever geocl prints one.

:func:`remote_env` sets GDAL's network options (:data:`REMOTE_CONFIG`) for geocl's reads,
each only where the user's environment has not set it. :func:`remote_error` turns GDAL's
messages for a missing object (HTTP 404), a refused one (401/403, missing credentials) and
an unreachable server into one line naming the URL (:class:`RemoteError` and its kinds).
"""

from __future__ import annotations

import contextlib
import ctypes
import email.utils
import functools
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import rasterio

from geocl.errors import GeoclError

__all__ = [
    "REMOTE_CONFIG",
    "RemoteAccessError",
    "RemoteError",
    "RemoteFile",
    "RemoteNotFoundError",
    "RemoteStat",
    "RemoteUnreachableError",
    "display_url",
    "gdal_path",
    "is_remote",
    "remote_env",
    "remote_error",
]

#: URL schemes geocl reads remotely, and the GDAL virtual file system of each.
SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/"}

#: GDAL configuration for reads over the network (set by :func:`remote_env` where the
#: environment does not set the option itself):
#:
#: - ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``: opening a file does not list its
#:   "folder" to look for side-car files (a LIST request on a bucket, a GET of an
#:   HTML index on a web server: slow, and often refused);
#: - ``GDAL_HTTP_MERGE_CONSECUTIVE_RANGES=YES``: adjacent tiles of a window in one request;
#: - ``GDAL_HTTP_MAX_RETRY=3``, ``GDAL_HTTP_RETRY_DELAY=1`` (s, doubled each try): a busy
#:   server's 429/502/503/504 is retried; a 403 or 404 is not (it will not change);
#: - ``GDAL_HTTP_CONNECTTIMEOUT=15``, ``GDAL_HTTP_TIMEOUT=120`` (s): an unreachable
#:   server fails in seconds instead of hanging the command.
REMOTE_CONFIG: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_TIMEOUT": "120",
}

#: Query keys whose values are secrets: S3 and GCS pre-signed URLs, Azure SAS tokens, API keys.
_SECRET_KEYS = re.compile(
    r"^(x-amz-.*|x-goog-.*|sig|signature|se|st|sp|sv|sr|spr|skoid|sktid|skt|ske|sks|skv|token|access_token|"
    r"api[-_]?key|key|secret|password|credential)$",
    re.IGNORECASE,
)


def _text(source: str | os.PathLike[str]) -> str | None:
    """``source`` as the string the user gave, or None for a local path object."""
    if isinstance(source, RemoteFile):
        return source.url
    if isinstance(source, str):
        return source
    return None


def is_remote(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` names a remote file (``http(s)://``, ``s3://``, ``gs://``) or a GDAL ``/vsi…`` path.

    A :class:`pathlib.Path` is always local (a URL does not survive ``Path()``: it
    folds ``//`` to ``/``).
    """
    text = _text(source)
    if text is None:
        return False
    return text.startswith("/vsi") or urlsplit(text).scheme.lower() in SCHEMES


def gdal_path(source: str | os.PathLike[str]) -> str:
    """The name GDAL opens ``source`` by: ``https://h/a.tif`` -> ``/vsicurl/https://h/a.tif``,
    ``s3://b/k`` -> ``/vsis3/b/k``, ``gs://b/k`` -> ``/vsigs/b/k``; a ``/vsi…`` path or a local
    path as it is."""
    text = _text(source)
    if text is None:
        return os.fspath(source)
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("s3", "gs"):
        return SCHEMES[scheme] + text.split("://", 1)[1]
    if scheme in ("http", "https"):
        return SCHEMES[scheme] + text
    return text


def display_url(source: str | os.PathLike[str]) -> str:
    """``source`` for messages and records: the values of secret query keys (signatures,
    tokens, SAS parameters) replaced by ``…``, everything else as given."""
    text = _text(source)
    if text is None:
        return os.fspath(source)
    if text.startswith("/vsicurl/"):
        return "/vsicurl/" + display_url(text[len("/vsicurl/") :])
    parts = urlsplit(text)
    if not parts.query:
        return text
    query = [(key, "…" if _SECRET_KEYS.match(key) else value) for key, value in parse_qsl(parts.query, True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="…/:,", quote_via=_quote_keeping)))


def _quote_keeping(text: str | bytes, safe: str | bytes, *_: object) -> str:
    """``urllib.parse.quote`` that leaves the characters in ``safe`` as they are, non-ASCII ones included.

    ``urlencode`` passes ``str`` here (the query is text); bytes, which its ``quote_via``
    may be given, are read as UTF-8.
    """
    text = text.decode() if isinstance(text, bytes) else text
    safe = safe.decode() if isinstance(safe, bytes) else safe
    return "".join(char if char in safe else quote(char, safe="") for char in text)


@contextlib.contextmanager
def remote_env() -> Iterator[None]:
    """GDAL's network options (:data:`REMOTE_CONFIG`) for the duration of the block.

    An option the user set as an environment variable keeps the user's value. Nested
    inside another ``rasterio.Env``, the outer options stay in force.
    """
    options = {key: value for key, value in REMOTE_CONFIG.items() if key not in os.environ}
    with rasterio.Env(**options):
        yield


# ------------------------------------------------------------------ errors


class RemoteError(GeoclError, OSError):
    """A remote file could not be read; the message names its URL (signature hidden).

    Also an :class:`OSError`; its kinds are the matching built-in errors, as torchgeo's
    ``DatasetNotFoundError`` is a ``FileNotFoundError``.

    Args:
        url: the file (or STAC document) at fault.
        reason: what went wrong, and how to fix it.
        where: what the file is to geocl (``item S2B_33UUP, asset B08``), or ''.
    """

    def __init__(self, url: str, reason: str, where: str = "") -> None:
        GeoclError.__init__(self, f"{where + ': ' if where else ''}{reason}", path=display_url(url))
        self.url = display_url(url)
        self.filename = self.url

    def __str__(self) -> str:  # OSError's "[Errno ...]" form would hide the message
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across processes (Dask workers)
        return (_rebuild, (type(self), str(self), self.url))


def _rebuild(kind: type[RemoteError], message: str, url: str) -> RemoteError:
    error = kind.__new__(kind)
    error.args = (message,)
    error.path, error.key, error.url, error.filename = url, None, url, url
    return error


class RemoteNotFoundError(RemoteError, FileNotFoundError):
    """The server or bucket has no such file (HTTP 404, S3 ``NoSuchKey``)."""


class RemoteAccessError(RemoteError, PermissionError):
    """The server refused the file (HTTP 401/403) or no credentials were found for it."""


class RemoteUnreachableError(RemoteError, ConnectionError):
    """The server could not be reached (no such host, connection refused, timeout)."""


#: GDAL's words for a refusal: S3/GCS error codes and the missing-credentials message.
_REFUSED = re.compile(
    r"AccessDenied|Access Denied|InvalidAccessKeyId|SignatureDoesNotMatch|InvalidCredentials|"
    r"No valid (AWS|GCS|GS) credentials|credentials",
    re.IGNORECASE,
)
_MISSING = re.compile(r"NoSuchKey|NoSuchBucket|does not exist in the file system|not found", re.IGNORECASE)
#: Where GDAL looks for credentials, by file system: the hint of a refusal.
_CREDENTIAL_HINTS = {
    "/vsis3/": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or AWS_NO_SIGN_REQUEST=YES "
    "for a public bucket",
    "/vsigs/": "GS_ACCESS_KEY_ID and GS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, or "
    "GS_NO_SIGN_REQUEST=YES for a public bucket",
    "/vsicurl/": "GDAL_HTTP_HEADERS (e.g. 'Authorization: Bearer ...'), GDAL_HTTP_USERPWD or ~/.netrc, "
    "or a fresh pre-signed URL",
}


def _credential_hint(path: str) -> str:
    for prefix, hint in _CREDENTIAL_HINTS.items():
        if path.startswith(prefix):
            return f"; geocl takes credentials from the environment only: set {hint}"
    return "; geocl takes credentials from the environment only (GDAL's variables for this file system)"


def remote_error(error: BaseException, url: str | os.PathLike[str], where: str = "") -> RemoteError | None:
    """The :class:`RemoteError` that a rasterio/GDAL error on remote file ``url`` stands for, else None.

    Read from GDAL's message (rasterio passes it on): ``HTTP response code: 404``, S3's
    ``NoSuchKey`` -> :class:`RemoteNotFoundError`; ``HTTP response code: 401/403``,
    ``AccessDenied``, no credentials -> :class:`RemoteAccessError` (with where GDAL looks
    for credentials); ``CURL error: …`` (unknown host, refused connection, timeout) and
    HTTP 5xx after GDAL's retries -> :class:`RemoteUnreachableError`. None for a local
    file and for other errors (a corrupt file: the caller's own message).

    Args:
        error: what rasterio raised.
        url: the remote file (as given, or GDAL's name of it).
        where: what the file is to geocl (``item X, asset B08``), put before the reason.
    """
    if isinstance(error, RemoteError):
        return error
    if not is_remote(url):
        return None
    shown = _text(url) or os.fspath(url)
    for item in _chain(error):  # rasterio's error, then what it was raised from
        found = _classify(str(item).replace(gdal_path(shown), "").replace(shown, ""), shown, where)
        if found is not None:
            return found
    return None


def _classify(text: str, url: str, where: str) -> RemoteError | None:
    """The :class:`RemoteError` GDAL's message ``text`` (the URL taken out of it) stands for, else None."""
    code = re.search(r"HTTP (?:response )?code:? ?(\d{3})", text)
    status = int(code.group(1)) if code else None
    if status == 404 or (status is None and _MISSING.search(text) and not _REFUSED.search(text)):
        return RemoteNotFoundError(url, "not found (HTTP 404): check the URL, bucket and key", where)
    if status in (401, 403) or (status is None and _REFUSED.search(text)):
        said = f"HTTP {status}" if status else _first_sentence(text)
        return RemoteAccessError(url, f"access denied ({said}){_credential_hint(gdal_path(url))}", where)
    curl = re.search(r"CURL error: ?(.*)", text)
    if curl is not None:
        return RemoteUnreachableError(url, f"unreachable ({_first_sentence(curl.group(1))})", where)
    if status is not None and status >= 500:
        return RemoteUnreachableError(url, f"the server failed (HTTP {status}) after retries; try again later", where)
    if status is not None:
        return RemoteError(url, f"refused by the server (HTTP {status})", where)
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[a-z0-9])\. ", text.strip(), maxsplit=1)[0].rstrip(".")


# ------------------------------------------------------------------ files


@dataclass(frozen=True)
class RemoteStat:
    """What identifies a remote file's content, in the names of :func:`os.stat` (cache keys).

    Attributes:
        st_size: bytes (``Content-Length``), 0 when the server does not say.
        st_mtime_ns: ``Last-Modified`` in ns since the epoch; without it a number derived
            from the ``ETag``; 0 when the server sends neither.
        etag: the ``ETag``, or ''.
    """

    st_size: int
    st_mtime_ns: int
    etag: str = ""


@functools.cache
def _libgdal() -> Any:
    """The GDAL library rasterio loaded (found in /proc on Linux), for the one call rasterio lacks; else None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libgdal" in line.rsplit("/", 1)[-1]})
    except OSError:
        return None
    for path in paths:
        try:
            library = ctypes.CDLL(path)  # already loaded: dlopen hands back its handle
            library.VSIGetFileMetadata.restype = ctypes.POINTER(ctypes.c_char_p)
            library.VSIGetFileMetadata.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
            library.CSLDestroy.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        except (OSError, AttributeError):
            continue
        return library
    return None


def http_headers(path: str) -> dict[str, str]:
    """The HTTP headers GDAL got for a network file (``VSIGetFileMetadata(path, "HEADERS")``), or {}.

    rasterio has no binding for this GDAL call, so it is made through ctypes on the
    GDAL library rasterio loaded; where that library cannot be found: {}. GDAL keeps
    the answer of its first request for the file, so this costs no request after the
    file was opened.
    """
    library = _libgdal()
    if library is None:
        return {}
    with remote_env():
        listing = library.VSIGetFileMetadata(path.encode(), b"HEADERS", None)
    headers: dict[str, str] = {}
    if not listing:
        return headers
    try:
        index = 0
        while listing[index]:
            key, _, value = listing[index].decode(errors="replace").partition("=")
            headers[key.lower()] = value
            index += 1
    finally:
        library.CSLDestroy(listing)
    return headers


def remote_stat(path: str) -> RemoteStat:
    """:class:`RemoteStat` of a remote file from its HTTP headers (zeros where the server says nothing)."""
    headers = http_headers(path)
    size = int(headers.get("content-length", "0") or 0)
    if "content-range" in headers:  # the answer to GDAL's first range request: "bytes 0-16383/2086014"
        size = int(headers["content-range"].rsplit("/", 1)[-1] or size)
    etag = headers.get("etag", "")
    modified = headers.get("last-modified")
    mtime = 0
    if modified:
        with contextlib.suppress(TypeError, ValueError):
            mtime = int(email.utils.parsedate_to_datetime(modified).timestamp() * 1e9)
    if not mtime and etag:
        mtime = int.from_bytes(hashlib.sha256(etag.encode()).digest()[:7], "big")
    return RemoteStat(size, mtime, etag)


class RemoteFile(os.PathLike[str]):
    """A remote raster file, with the part of :class:`pathlib.Path` geocl uses on raster files.

    ``os.fspath()`` (and so ``rasterio.open``) gives GDAL's name of it (:func:`gdal_path`);
    ``str()`` gives the URL as the user gave it, signature hidden (:func:`display_url`),
    which is what messages and ``tiles.json`` show. Two RemoteFiles are equal when GDAL's
    names are.

    Args:
        url: ``https://…``, ``http://…``, ``s3://…``, ``gs://…`` or a ``/vsi…`` path.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.gdal = gdal_path(url)

    def __fspath__(self) -> str:
        return self.gdal

    def __str__(self) -> str:
        return display_url(self.url)

    def __repr__(self) -> str:
        return f"RemoteFile({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteFile) and other.gdal == self.gdal

    def __hash__(self) -> int:
        return hash(self.gdal)

    def __lt__(self, other: RemoteFile) -> bool:
        return self.gdal < other.gdal

    @property
    def name(self) -> str:
        """The last part of the path, without query (``scene.tif``)."""
        return PurePosixPath(urlsplit(self.url).path if "://" in self.url else self.url).name

    @property
    def stem(self) -> str:
        """:attr:`name` without its suffix."""
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        """:attr:`name`'s suffix (``.tif``)."""
        return PurePosixPath(self.name).suffix

    def resolve(self) -> RemoteFile:
        """Itself: a URL is absolute."""
        return self

    def stat(self) -> RemoteStat:
        """Size and modification time from the server's headers (:func:`remote_stat`)."""
        return remote_stat(self.gdal)
