"""Run a test function in N gloo processes on the CPU (DDP-correctness checks of losses).

Usage::

    def _worker(rank: int, world: int, out: Path) -> None:   # module level: spawn pickles it
        ...compute on this rank's rows, torch.save(result, out / f"rank{rank}.pt")

    results = run_distributed(_worker, world=2, out=tmp_path)   # list of what each rank saved
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port nobody listens on (for the process group's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, worker: Callable[[int, int, Path], None], world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        worker(rank, world, Path(out))
    finally:
        dist.destroy_process_group()


def run_distributed(worker: Callable[[int, int, Path], None], world: int, out: Path) -> list[Any]:
    """Run ``worker(rank, world, out)`` in ``world`` processes of one gloo group.

    Returns:
        What each rank saved as ``out / f"rank{rank}.pt"``, in rank order.
    """
    mp.spawn(_entry, args=(worker, world, free_port(), str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(world)]
