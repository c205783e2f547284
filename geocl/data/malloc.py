"""glibc's malloc thresholds while geocl streams rasters: opt-in at a command's entry, restored on exit.

glibc serves a buffer above its *mmap threshold* with a fresh ``mmap``, returned to the
system on free, and smaller ones from its heap. Its dynamic rule raises the threshold
after a large buffer is freed, so a pass over a scene (a tile-sized buffer read and
freed per tile) ends up served from the heap, which fragments and grows by about a
tile per tile read. geocl therefore fixes the threshold while it streams
(:data:`MMAP_THRESHOLD`) and lifts it for model calls and after streaming
(:data:`COMPUTE_MMAP_THRESHOLD`). See mallopt(3).

The thresholds are one setting of the whole process, so library code does not change
them by itself: :func:`malloc_tuning` is entered at a command's or a worker's entry
(:func:`geocl.cli.main`, :func:`geocl.distributed.run_task`) and restores what it found
on exit. Inside it, :func:`streaming` (entered by :func:`geocl.data.rasters.bounded_memory`)
and :func:`computing` (around each model call of a sliding-window prediction) switch the
thresholds; outside it they change nothing. Where the C library is not glibc nothing
is tuned. This module imports no third-party package (the CLI enters it before any).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["COMPUTE_MMAP_THRESHOLD", "MMAP_THRESHOLD", "computing", "malloc_tuning", "streaming"]

#: glibc's mmap threshold while streaming (bytes): tile-sized buffers stay in mmap,
#: returned on free, so memory does not grow with the number of tiles read.
MMAP_THRESHOLD = 128 * 1024
#: glibc's mmap threshold for computing (bytes): after streaming, and for the model calls
#: made while streaming. With :data:`MMAP_THRESHOLD`, every model activation above 128 KiB
#: is a fresh mmap, zero-filled page by page: a resnet18 forward pass ran 1.9x slower, and
#: the demo's probe rows after its tiling 1.8x. 32 MiB is the ceiling glibc's own dynamic
#: rule climbs to on 64-bit systems (its trim threshold then being twice that).
COMPUTE_MMAP_THRESHOLD = 32 * 2**20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


class _MallocState:
    """What geocl has done to the thresholds in this process: one record, as they are one
    setting of the process, changed under a lock (worker threads may stream at once).

    Attributes:
        tuned: open :func:`malloc_tuning` sections (tuning is allowed while > 0).
        streaming: open :func:`streaming` sections inside them.
        threshold: the mmap threshold geocl set last, or None: glibc's own dynamic rule.
        before: ``threshold`` when the first open :func:`malloc_tuning` section was entered.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tuned = 0
        self.streaming = 0
        self.threshold: int | None = None
        self.before: int | None = None

    def apply(self, threshold: int) -> None:
        self.threshold = threshold
        _set_mmap_threshold(threshold)


_STATE = _MallocState()


@functools.cache
def _libc() -> Any:
    """The C library, loaded once: computing() switches thresholds around every model call."""
    return ctypes.CDLL("libc.so.6")


def _set_mmap_threshold(threshold: int) -> None:
    """Fix glibc's mmap threshold (and the trim threshold with it), where the C library is glibc."""
    try:
        libc = _libc()
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD if threshold == MMAP_THRESHOLD else 2 * threshold)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


@contextlib.contextmanager
def malloc_tuning() -> Iterator[None]:
    """Let :func:`streaming` and :func:`computing` tune glibc's malloc while open; restore it on exit.

    Sections nest and may be open in several threads at once; when the last one closes,
    the threshold in force when the first one opened is set again. When that was glibc's
    own dynamic rule, :data:`COMPUTE_MMAP_THRESHOLD` stays instead (only if a section
    changed anything): ``mallopt(M_MMAP_THRESHOLD)`` switches the rule off and glibc has no
    call that switches it back on (mallopt(3)); 32 MiB is where the rule ends up on 64-bit
    systems.
    """
    with _STATE.lock:
        if not _STATE.tuned:
            _STATE.before = _STATE.threshold
        _STATE.tuned += 1
    try:
        yield
    finally:
        with _STATE.lock:
            _STATE.tuned -= 1
            if not _STATE.tuned and _STATE.threshold is not None:
                target = COMPUTE_MMAP_THRESHOLD if _STATE.before is None else _STATE.before
                if _STATE.threshold != target:
                    _STATE.apply(target)


@contextlib.contextmanager
def streaming() -> Iterator[None]:
    """Inside :func:`malloc_tuning`: :data:`MMAP_THRESHOLD` while open; leaving the last open
    one sets :data:`COMPUTE_MMAP_THRESHOLD`, so that training later in the same command runs
    at full speed. Outside it: nothing changes."""
    with _STATE.lock:
        tuning = _STATE.tuned > 0
        if tuning:
            _STATE.apply(MMAP_THRESHOLD)
            _STATE.streaming += 1
    try:
        yield
    finally:
        if tuning:
            with _STATE.lock:
                _STATE.streaming -= 1
                if not _STATE.streaming:
                    _STATE.apply(COMPUTE_MMAP_THRESHOLD)


@contextlib.contextmanager
def computing() -> Iterator[None]:
    """A model call inside :func:`streaming`: :data:`COMPUTE_MMAP_THRESHOLD` for its duration.

    Its activations are freed when it returns, so the heap it grows is reused by the next
    call and does not depend on the scene's size. Outside a tuned streaming section: nothing changes.
    """
    with _STATE.lock:
        active = _STATE.streaming > 0
        if active:
            _STATE.apply(COMPUTE_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if active:
            with _STATE.lock:
                _STATE.apply(MMAP_THRESHOLD)
