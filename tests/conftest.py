"""Project-wide pytest setup: the `gpu` marker skips without CUDA; shared helpers for op tests."""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (run by benchmarks/gpu_suite.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def cpu_extension():
    """Skip when the C++ extension is unavailable, unless VIDEO3D_FAST_REQUIRE_EXTENSION=1 (CI), where
    a missing or broken extension must fail loudly instead of hiding behind skips."""
    import os

    from video3d_fast import ops

    status = ops.available_backends()["cpu"]
    if not status.available:
        if os.environ.get("VIDEO3D_FAST_REQUIRE_EXTENSION") == "1":
            pytest.fail(f"C++ extension required but unavailable: {status.reason}")
        pytest.skip(f"C++ extension unavailable: {status.reason}")
    return status
