"""Process-wide state a comparison needs, set at the command's entry and restored when it ends.

Library code leaves the process as it found it (``design.md``, Contracts): what a
comparison changes for its own duration is a context manager that :func:`run_compare
<geocl.experiments.runner.run_compare>` enters around all of its work.

- :func:`deterministic_algorithms`: torch's deterministic algorithms and the cuBLAS
  workspace setting they need, on for the comparison, back as they were after it.
- :func:`stop_on_sigterm`: SIGTERM (a cluster's time limit, ``kill PID``, a signal to the
  whole process group) stops the comparison instead of failing the row that was running.
  Without it, the DataLoader workers the signal killed surface as a ``RuntimeError``
  ("DataLoader worker ... killed by signal: Terminated") that compare recorded as a
  failed row, and it went on with the next recipe until the scheduler's SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["CompareInterrupted", "Terminated", "deterministic_algorithms", "raise_if_terminated", "stop_on_sigterm"]

log = logging.getLogger(__name__)

#: The cuBLAS workspace that makes its matrix products deterministic (CUDA >= 10.2; see
#: https://docs.nvidia.com/cuda/cublas/#results-reproducibility). Set only when unset.
CUBLAS_WORKSPACE = ":4096:8"


@contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """torch's deterministic algorithms while the block runs (slower; an op without a
    deterministic version fails with a message naming it); the previous mode after.

    ``CUBLAS_WORKSPACE_CONFIG`` is set to :data:`CUBLAS_WORKSPACE` where it is unset (cuBLAS
    needs it for determinism) and removed again after; a value the user set is kept.
    ``enabled=False`` changes nothing.
    """
    if not enabled:
        yield
        return
    import torch  # only when asked: a comparison that reads results alone need not load it

    mode = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


class Terminated(BaseException):  # named as the signal it stands for, as KeyboardInterrupt is
    """SIGTERM arrived while :func:`stop_on_sigterm` was entered.

    A :class:`BaseException`, so that the ``except Exception`` that turns one recipe's or
    one row's error into a failed row lets it through, and not a
    :class:`KeyboardInterrupt`, which Lightning's ``fit`` answers with ``sys.exit(1)``
    (it passes any other exception on after its teardown). :func:`stop_on_sigterm` turns
    it into :class:`CompareInterrupted` when it leaves.
    """


class CompareInterrupted(KeyboardInterrupt):
    """A comparison stopped by SIGTERM: what was finished is kept, and rerunning the same
    command resumes. A :class:`KeyboardInterrupt`, so that the command says so in one line
    and exits non-zero, as on Ctrl-C."""


#: Whether SIGTERM arrived while :func:`stop_on_sigterm` is entered (read by :func:`raise_if_terminated`).
_received = threading.Event()


def raise_if_terminated() -> None:
    """Raise :class:`Terminated` if SIGTERM arrived during the current :func:`stop_on_sigterm`.

    Called where an error is about to be recorded as a failed row: a library that caught
    the :class:`Terminated` and raised its own error (a worker's ``RuntimeError``) must not
    turn the interruption into a failure.
    """
    if _received.is_set():
        raise Terminated(signal.SIGTERM)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while the block runs; the block
    leaves with :class:`CompareInterrupted`. The previous SIGTERM handler is back after.

    Only the first SIGTERM raises: later ones (a scheduler that repeats it) let the
    unwinding (Lightning's teardown, the DataLoader workers' shutdown) finish. Outside the
    main thread, where Python cannot install a handler, nothing changes. Lightning's own
    SIGTERM handler, installed for each ``fit``, calls the handler it found, this one.

    Raises:
        CompareInterrupted: SIGTERM arrived while the block ran (in place of whatever
            error the interruption became on its way out).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _received.clear()

    def stop(signum: int, _frame: FrameType | None) -> None:
        if _received.is_set():
            log.info("SIGTERM again while stopping: ignored")
            return
        _received.set()
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except BaseException:
        # whatever it became on the way out (a worker's RuntimeError, Lightning's teardown error)
        if _received.is_set():
            raise CompareInterrupted("SIGTERM") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        _received.clear()
