from __future__ import annotations

import torch

from geocl.report.environment import describe_environment, environment_line


def test_the_line_names_the_processor_threads_versions_and_algorithms() -> None:
    environment = describe_environment(deterministic=True)
    assert environment["torch_threads"] == torch.get_num_threads()
    line = environment_line({**environment, "gpu": None, "cpu": "Test CPU", "torch_threads": 4})
    assert "Test CPU (4 threads)" in line
    assert "deterministic algorithms" in line and "non-deterministic" not in line


def test_one_thread_is_singular_and_a_gpu_replaces_the_processor() -> None:
    environment = describe_environment()
    assert "Test CPU (1 thread)," in environment_line(
        {**environment, "gpu": None, "cpu": "Test CPU", "torch_threads": 1}
    )
    line = environment_line({**environment, "gpu": "NVIDIA H200", "torch_threads": 1})
    assert "Measured on NVIDIA H200," in line and "thread" not in line
    assert "default (non-deterministic) algorithms" in line
