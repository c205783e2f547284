"""Tests for geocl.data.malloc: glibc's thresholds tuned only inside malloc_tuning(), and restored after."""

from __future__ import annotations

import pytest

from geocl.data import malloc
from geocl.data.malloc import COMPUTE_MMAP_THRESHOLD, MMAP_THRESHOLD, computing, malloc_tuning, streaming

SMALL, LARGE = MMAP_THRESHOLD, COMPUTE_MMAP_THRESHOLD


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thresholds handed to glibc, in order, from a process where geocl has set none yet."""
    thresholds: list[int] = []
    monkeypatch.setattr(malloc, "_STATE", malloc._MallocState())
    monkeypatch.setattr(malloc, "_set_mmap_threshold", thresholds.append)
    return thresholds


def test_outside_a_tuning_section_nothing_changes(calls: list[int]) -> None:
    with streaming(), computing():
        pass
    with computing():
        pass
    assert calls == []
    with malloc_tuning():  # a section where nothing streams changes nothing either
        with computing():
            pass
    assert calls == []


def test_streaming_fixes_the_threshold_and_model_calls_and_the_end_lift_it(calls: list[int]) -> None:
    with malloc_tuning():
        with streaming():
            with streaming():  # nested: only the outer one's end lifts it
                with computing():
                    assert calls[-1] == LARGE
            assert calls[-1] == SMALL
        assert calls == [SMALL, SMALL, LARGE, SMALL, LARGE]
    assert calls == [SMALL, SMALL, LARGE, SMALL, LARGE]  # glibc's dynamic rule cannot be given back: 32 MiB stays
    assert (malloc._STATE.tuned, malloc._STATE.streaming) == (0, 0)


def test_the_threshold_found_on_entry_is_restored_on_exit(calls: list[int]) -> None:
    found = 4 * 2**20  # set by an earlier section of this process
    malloc._STATE.threshold = found
    with malloc_tuning(), streaming():
        pass
    assert calls == [SMALL, LARGE, found]
    assert malloc._STATE.threshold == found


def test_only_the_last_section_to_close_restores(calls: list[int]) -> None:
    malloc._STATE.threshold = found = 8 * 2**20
    outer = malloc_tuning()
    outer.__enter__()  # e.g. a worker thread's section, still streaming
    with streaming():
        with malloc_tuning():  # a section of another thread, closed first
            pass
        assert calls == [SMALL]  # the other section did not restore under a streaming one
    outer.__exit__(None, None, None)
    assert calls == [SMALL, LARGE, found]
    assert malloc._STATE.tuned == 0


def test_the_thresholds_reach_glibc_without_error() -> None:
    with malloc_tuning(), streaming(), computing():
        pass  # mallopt really called (where libc is glibc); a wrong signature would raise here
