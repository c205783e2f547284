"""Where a result was measured: library versions, processor, threads, accelerator.

Float results of the same command differ between processors (another instruction set,
another summation order), and few-label training amplifies such differences; a
results file that names its machine lets a reader tell a method's effect from a
machine's. Conclusions rest on the paired intervals, not on one run.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: Libraries whose versions change numbers.
LIBRARIES = (
    "geocl",
    "torch",
    "torchvision",
    "lightning",
    "lightly",
    "timm",
    "segmentation-models-pytorch",
    "kornia",
    "torchgeo",
    "torchmetrics",
    "numpy",
    "scipy",
)


def processor_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_environment(*, deterministic: bool = False) -> dict[str, Any]:
    """The machine and libraries of this process, as plain data (``environment.json``)."""
    import torch

    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": processor_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "deterministic": deterministic,
        "versions": versions,
    }


def environment_line(environment: dict[str, Any]) -> str:
    """One line for a results table's footer."""
    versions = environment["versions"]
    threads = environment["torch_threads"]
    device = environment["gpu"] or f"{environment['cpu']} ({threads} thread{'' if threads == 1 else 's'})"
    mode = "deterministic algorithms" if environment["deterministic"] else "default (non-deterministic) algorithms"
    return (
        f"Measured on {device}, torch {versions.get('torch')}, geocl {versions.get('geocl')}, {mode}; "
        "float results differ between processors: conclusions rest on the paired intervals, not on one run."
    )
