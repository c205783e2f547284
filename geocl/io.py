"""Output paths: checked before any work, written atomically (a reader, or a rerun after a
crash, never sees half a file), and a write the disk refuses told in one line.

A write that fails because of where it goes, not because of geocl (the disk or the
quota is full, the file system is read-only, permission is denied, an I/O error),
raises :class:`OutputWriteError` naming the file and the reason, after the temporary
file is removed: the final file is left as it was (absent, or the previous complete
version). Python's own writes say why with an ``errno``; GDAL, libtiff and SQLite
(rasterio, pyogrio) often do not (``TIFFAppendToStrip:Write error at scanline 32``,
``no such table: gpkg_contents`` after a ``CREATE TABLE`` that ran out of space), so
for their errors the file system of the output is asked (:func:`write_failure`); and
some they report to nobody (a GeoTIFF cut short on a full disk closes without an
error): :func:`atomic_path` collects those while it writes (:func:`gdal_write_errors`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geocl.errors import GeoclError, InputPermissionError, OutputExistsError

#: errno values that mean "this output cannot be written there": the user's disk,
#: quota, mount or permissions, not a fault of geocl.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG})
#: Below this many free bytes, a failed GDAL/SQLite write is taken as a full disk.
#: Such libraries write blocks of at most a few MiB (a compressed tile, an SQLite page,
#: a strip), so a disk that refused one has less than this left; a real bug rarely
#: coincides with a disk that full.
LOW_SPACE_BYTES = 16 * 2**20
#: How SQLite and GDAL word the errno reasons they do not pass on as errno.
_REASON_WORDS = {
    "database or disk is full": errno.ENOSPC,
    "disk i/o error": errno.EIO,
    "attempt to write a readonly database": errno.EROFS,
    **{os.strerror(number).lower(): number for number in WRITE_ERRNOS},
}
#: How GDAL and libtiff word a failed write (``TIFFAppendToStrip:Write error at scanline 32``,
#: ``IO error writing tag data``); GDAL's other errors while writing (``Cannot modify tag``)
#: are no write failure.
_WRITE_WORDS = re.compile(
    r"write error|error writing|i/?o error|(failed|unable|could not|cannot|can't) (to )?write|write failed|"
    r"short write|flush|no space|disk",
    re.IGNORECASE,
)
#: Modules whose exceptions wrap C libraries that report write failures without errno.
_C_LIBRARIES = ("rasterio", "pyogrio", "fiona", "osgeo", "sqlite3", "rio_cogeo")
#: SQLite's side files of a database (a GeoPackage written in place).
_SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


class OutputWriteError(GeoclError, OSError):
    """An output could not be written: disk or quota full, read-only, permission denied, I/O error.

    Also an :class:`OSError` carrying ``errno``, ``strerror`` and ``filename`` (the
    final file, never the temporary name).

    Args:
        path: the output file.
        number: the errno value.
        detail: added to the reason (e.g. the free space left).
        writing: the file is the output being written (``cannot write (...)``);
            False for another file the write needed (just the reason).
    """

    def __init__(self, path: str | os.PathLike[str], number: int, detail: str = "", *, writing: bool = True) -> None:
        reason = os.strerror(number) + (f": {detail}" if detail else "")
        GeoclError.__init__(self, f"cannot write ({reason})" if writing else reason, path=path)
        self.errno = number
        self.strerror = os.strerror(number)
        self.filename = str(path)

    def __str__(self) -> str:  # OSError's "[Errno 28] ..." form would hide the message
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across processes (Dask workers)
        return (_rebuild_write_error, (self.filename, self.errno, str(self)))


def _rebuild_write_error(path: str, number: int, message: str) -> OutputWriteError:
    error = OutputWriteError(path, number)
    error.args = (message,)
    return error


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling (each once)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _from_c_library(error: BaseException) -> bool:
    return isinstance(error, GdalWriteError) or type(error).__module__.split(".")[0] in _C_LIBRARIES


def write_failure(error: BaseException, path: str | os.PathLike[str] | None = None) -> OutputWriteError | None:
    """The :class:`OutputWriteError` that ``error``, raised while writing ``path``, stands for, else None.

    The rules, first match wins:

    1. an :class:`OSError` with an errno of :data:`WRITE_ERRNOS` in the exception chain
       (naming its own file when that is neither ``path`` nor a temporary file beside it);
    2. an error of GDAL, libtiff or SQLite (rasterio, pyogrio) whose message (or chain)
       words one of those reasons (``No space left on device``, SQLite's ``database or
       disk is full``);
    3. an error of those libraries while the file system of ``path`` is read-only or has
       less than :data:`LOW_SPACE_BYTES` left.

    Anything else (a bug, a bad value) is no write failure: None, and the caller
    re-raises it with its traceback.

    Args:
        error: what was raised.
        path: the output file being written; default: the OSError's file name.
    """
    chain = list(_chain(error))
    for item in chain:
        if isinstance(item, OutputWriteError):
            return item
    for item in chain:
        if isinstance(item, OSError) and item.errno in WRITE_ERRNOS:
            own = None if item.filename is None else Path(os.fsdecode(item.filename))
            if path is None:
                # raised anywhere in a command: a read or a write, the reason says which
                return OutputWriteError(own if own is not None else "output", item.errno, writing=False)
            if own is None or own.parent == Path(path).parent or own == Path(path):
                return OutputWriteError(path, item.errno)
            return OutputWriteError(own, item.errno, writing=False)
    if path is None or not any(_from_c_library(item) for item in chain):
        return None
    text = " ".join(str(item) for item in chain).lower()
    for words, number in _REASON_WORDS.items():
        if words in text:
            return OutputWriteError(path, number)
    return _file_system_failure(Path(path))


def _file_system_failure(path: Path) -> OutputWriteError | None:
    """An :class:`OutputWriteError` when the file system that holds ``path`` is read-only or (almost) full."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return OutputWriteError(path, errno.EROFS)
    free = stats.f_bavail * stats.f_frsize
    if free < LOW_SPACE_BYTES:
        return OutputWriteError(path, errno.ENOSPC, f"{free / 2**20:.1f} MiB free on its disk")
    return None


def check_output_folder(folder: str | os.PathLike[str], *, key: str | None = None) -> Path:
    """Make sure ``folder`` can receive a run's files, before any work starts.

    Creates it (and its parents) when missing.

    Raises:
        GeoclError: naming the path (and ``key``, the option or recipe key that gave it)
            when it is an existing file, cannot be created, or is not writable.
    """
    folder = Path(folder)
    where = f" (given by {key})" if key else ""
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"is a file, not a folder{where}; choose another output folder", path=folder, key=key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = InputPermissionError if isinstance(exc, PermissionError) else GeoclError
        raise error(f"cannot create the output folder{where}: {exc.strerror or exc}", path=folder, key=key) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputPermissionError(f"output folder is not writable{where}", path=folder, key=key)
    return folder


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike[str], *, key: str | None = None) -> Iterator[Path]:
    """:func:`check_output_folder` for a job that may still refuse its input: when the job
    raises a :class:`GeoclError`, the folders this created are removed again while empty.

    Yields:
        The folder, as :func:`check_output_folder` returns it.
    """
    folder = Path(folder)
    missing = [path for path in (folder, *folder.absolute().parents) if not path.exists()]  # deepest first
    checked = check_output_folder(folder, key=key)
    try:
        yield checked
    except GeoclError:
        for path in missing:
            with contextlib.suppress(OSError):  # a folder the job wrote into is not empty: it stays
                path.rmdir()
        raise


def check_output_file(path: str | os.PathLike[str], *, key: str | None = None) -> Path:
    """Make sure a file can be written at ``path`` (its folder writable, it no folder), before any work.

    Raises:
        GeoclError: naming the path when it is a folder or its folder cannot take it.
    """
    path = Path(path)
    if path.is_dir():
        where = f" (given by {key})" if key else ""
        raise OutputExistsError(f"is a folder, not a file{where}; give a file name", path=path, key=key)
    check_output_folder(path.parent if str(path.parent) else Path("."), key=key)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputPermissionError("exists and is not writable", path=path, key=key)
    return path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` on success.

    The temporary name keeps the final suffix so format drivers that look at it
    (GDAL, OGR) pick the right one. On error the temporary file (and SQLite's side
    files of it) is removed and ``final`` is left as it was; a failure of the disk
    (:func:`write_failure`) is raised as :class:`OutputWriteError` naming ``final``.

    GDAL errors raised by nobody count too: rasterio logs the errors GDAL reports
    while closing a file instead of raising them, so a GeoTIFF written on a full disk
    "succeeds" as an empty or truncated file. While the block runs they are collected
    (:func:`gdal_write_errors`); a failed write among them (``Write error``, ``IO
    error``, ``No space left on device``) fails the write before the rename, with the
    reason :func:`write_failure` finds, else as an I/O error quoting GDAL. Other GDAL
    errors (``Cannot modify tag``) leave the file to be renamed, as before.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise (write_failure(error, final) or error) from None
    temp = final.with_name(f".{final.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        with gdal_write_errors() as signalled:
            try:
                yield temp
                failed = [message for message in signalled if _WRITE_WORDS.search(message)]
                if failed:  # GDAL failed to write but nobody raised: the file may be cut
                    raise GdalWriteError("; ".join(failed))
                os.replace(temp, final)
            except Exception as error:
                # asked before the temporary file goes: it may be what filled the disk
                failure = write_failure(error, final)
                if failure is None and isinstance(error, GdalWriteError):  # a failed write, reason unsaid
                    failure = OutputWriteError(final, errno.EIO, str(error).split("; ")[0])
                if failure is None:
                    raise
                raise failure from None
    finally:
        for side in ("", *_SQLITE_SIDE_FILES):
            Path(f"{temp}{side}").unlink(missing_ok=True)


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically; returns ``final`` as a :class:`~pathlib.Path`."""
    with atomic_path(final) as temp:
        temp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``final`` atomically."""
    with atomic_path(final) as temp:
        temp.write_text(text)


def save_figure(figure: Any, final: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write a matplotlib figure (a bare ``Figure``, no pyplot state) as PNG atomically.

    The canvas is fitted to what is drawn (``bbox_inches="tight"``), so a title or label longer than
    the figure is widened into the picture rather than cut at its edge.

    Args:
        figure: a ``matplotlib.figure.Figure``.
        final: the PNG path.
        dpi: resolution.

    Returns:
        The PNG path.
    """
    final = Path(final)
    with atomic_path(final) as temp:
        figure.savefig(temp, dpi=dpi, format="png", bbox_inches="tight")
    return final


class GdalWriteError(RuntimeError):
    """Errors GDAL reported during a write that rasterio logged instead of raising (their messages)."""


# One switch for all writes of the process (nested, or in threads): the first write in
# installs it, the last one out restores what it found.
_guard_lock = threading.Lock()
_guard_depth = 0
_guard_saved: list[tuple[Any, Any]] = []
_guard_lists: dict[int, list[list[str]]] = {}
_libtiffs: list[Any] = []
#: rasterio's loggers of GDAL's errors (``GDAL signalled an error`` at INFO).
_GDAL_LOGGERS = ("rasterio._env", "rasterio._err")


class _GdalErrors(logging.Handler):
    """Hands each GDAL failure rasterio logs to the writes open in the thread that caused it."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg != "GDAL signalled an error: err_no=%r, msg=%r" or not isinstance(record.args, tuple):
            return
        for signalled in _guard_lists.get(record.thread or 0, []):
            signalled.append(str(record.args[-1]))


_handler = _GdalErrors(logging.INFO)


@contextlib.contextmanager
def gdal_write_errors() -> Iterator[list[str]]:
    """Collect the failures GDAL and libtiff report in this thread while a file is written.

    Yields the list their messages are added to. Two kinds reach nobody otherwise:

    - rasterio logs the errors of ``GDALClose`` (where a GeoTIFF's last blocks and its
      directory are flushed) at INFO instead of raising them; rasterio's loggers of them
      are set to INFO for the duration (and restored), with a handler that only collects;
    - libtiff reports a failed ``write()`` with no GDAL handle to its process-wide error
      handler, which prints ``_tiffWriteProc: No space left on device.`` on the C
      library's stderr, while GDAL carries on and closes a cut file without any error.
      That handler is replaced by one that collects the message (formatted by the C
      library's ``vsnprintf``) for the duration, then restored.

    Only where rasterio is loaded; libtiff is found through /proc (Linux).
    """
    global _guard_depth
    signalled: list[str] = []
    thread = threading.get_ident()
    with _guard_lock:
        if _guard_depth == 0 and "rasterio" in sys.modules:
            _guard_saved.clear()
            for name in _GDAL_LOGGERS:
                logger = logging.getLogger(name)
                _guard_saved.append((logger, logger.level))
                if logger.getEffectiveLevel() > logging.INFO:
                    logger.setLevel(logging.INFO)
                logger.addHandler(_handler)
            for library in _loaded_libtiffs():
                _guard_saved.append((library, library.TIFFSetErrorHandler(_libtiff_collector())))
        _guard_depth += 1
        _guard_lists.setdefault(thread, []).append(signalled)
    try:
        yield signalled
    finally:
        with _guard_lock:
            _guard_lists[thread].remove(signalled)
            if not _guard_lists[thread]:
                del _guard_lists[thread]
            _guard_depth -= 1
            if _guard_depth == 0:
                for owner, saved in _guard_saved:
                    if isinstance(owner, logging.Logger):
                        owner.removeHandler(_handler)
                        owner.setLevel(saved)
                    else:
                        owner.TIFFSetErrorHandler(saved)
                _guard_saved.clear()


#: libtiff's ``TIFFErrorHandler``: ``void (*)(const char* module, const char* fmt, va_list ap)``.
#: A ``va_list`` argument travels as a pointer on x86-64 and AArch64 Linux, as ``vsnprintf`` takes it.
_TIFF_ERROR_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
_collector: list[Any] = []


def _libtiff_collector() -> Any:
    """The C callback that hands libtiff's messages to the writes open in the calling thread (made once)."""
    if not _collector:
        libc = ctypes.CDLL(None)
        libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

        def collect(module: bytes | None, fmt: bytes | None, args: int | None) -> None:
            text = ctypes.create_string_buffer(512)
            if fmt:
                libc.vsnprintf(text, len(text), fmt, args)
            message = f"{(module or b'libtiff').decode(errors='replace')}: {text.value.decode(errors='replace')}"
            for signalled in _guard_lists.get(threading.get_ident(), []):
                signalled.append(message)

        _collector.append(_TIFF_ERROR_HANDLER(collect))  # kept: libtiff holds a pointer to it
    return _collector[0]


def _loaded_libtiffs() -> list[Any]:
    """The libtiff libraries loaded in this process (GDAL's, through rasterio), found in /proc (Linux; else none).

    Remembered once found: reading the memory map at every write of thousands of tiles costs time.
    """
    if _libtiffs:
        return _libtiffs
    try:
        with open("/proc/self/maps") as maps:
            rows = [fields for fields in map(str.split, maps) if len(fields) == 6]
        paths = {fields[5] for fields in rows if "libtiff" in Path(fields[5]).name}
    except OSError:
        return []
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)  # the library already loaded: dlopen hands back its handle
            library.TIFFSetErrorHandler.restype = ctypes.c_void_p
            library.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
        except (OSError, AttributeError):
            continue
        _libtiffs.append(library)
    return _libtiffs
