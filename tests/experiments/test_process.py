"""Process-wide state a comparison sets: on while it runs, as it was after (issue 24); SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from geocl.experiments.process import (
    CUBLAS_WORKSPACE,
    CompareInterrupted,
    deterministic_algorithms,
    raise_if_terminated,
    stop_on_sigterm,
)


@pytest.fixture
def torch_mode() -> Iterator[None]:
    """Put torch's deterministic mode back whatever a test leaves."""
    mode, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(mode, warn_only=warn_only)


def test_deterministic_algorithms_are_on_inside_and_as_before_after(
    torch_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    with deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_deterministic_algorithms_keep_the_users_settings_and_restore_them_after_an_error(
    torch_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    with pytest.raises(ValueError, match="inside"), deterministic_algorithms():
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's value is kept
        assert not torch.is_deterministic_algorithms_warn_only_enabled()  # errors, not warnings, while it runs
        raise ValueError("inside")
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_deterministic_algorithms_disabled_change_nothing(torch_mode: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    with deterministic_algorithms(False):
        assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def _rows_until_terminated(failed: list[str]) -> None:
    """Rows as compare runs them: each row's exception becomes a failed row; the second receives SIGTERM."""
    for row in range(3):
        try:
            if row == 1:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises during the sleep
        except Exception as exc:  # as compare's own rows
            raise_if_terminated()
            failed.append(f"{row}: {exc}")


def test_sigterm_stops_the_rows_instead_of_failing_one_and_the_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    failed: list[str] = []
    start = time.perf_counter()
    with pytest.raises(CompareInterrupted) as caught, stop_on_sigterm():
        _rows_until_terminated(failed)
    assert time.perf_counter() - start < 4  # stopped at once, not after the sleep
    assert failed == [] and isinstance(caught.value, KeyboardInterrupt)  # the CLI's "interrupted" line
    assert signal.getsignal(signal.SIGTERM) is before
    raise_if_terminated()  # the next comparison starts afresh


def test_an_interruption_that_became_another_error_still_stops() -> None:
    """What a DataLoader does: a worker's death while stopping surfaces as its own RuntimeError."""
    failed: list[str] = []
    with pytest.raises(CompareInterrupted), stop_on_sigterm():
        for row in range(2):
            try:
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)
                except BaseException as error:
                    raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated.") from error
            except Exception as exc:  # as compare's own rows
                raise_if_terminated()
                failed.append(f"{row}: {exc}")
    assert failed == []


def test_a_second_sigterm_while_stopping_lets_the_unwinding_finish() -> None:
    cleaned: list[str] = []
    with pytest.raises(CompareInterrupted), stop_on_sigterm():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler that repeats it
            time.sleep(0.05)
            cleaned.append("teardown")
    assert cleaned == ["teardown"]


def test_errors_without_sigterm_pass_unchanged() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError, match="bug"), stop_on_sigterm():
        raise ValueError("bug")
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_nothing_changes() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def run() -> None:
        with stop_on_sigterm():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before]
