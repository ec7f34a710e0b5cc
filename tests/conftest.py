"""Project-wide pytest setup: markers `gpu` (skipped without CUDA; benchmarks/gpu_suite.sh runs them) and
`slow` (skipped unless VIDEO3D_FAST_RUN_SLOW=1, so that the default suite fits CI's budget on 2 cores);
the `cpu_extension` fixture."""
from __future__ import annotations

import os

import pytest
import torch

# Triton decides between compiling and interpreting when a kernel is *defined*; kernels are imported
# lazily, but any test may be the first to touch them, so the choice is made here, before collection.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(
        reason="needs a CUDA device (run by benchmarks/gpu_suite.sh)")
    skip_slow = None if os.environ.get("VIDEO3D_FAST_RUN_SLOW") == "1" else pytest.mark.skip(
        reason="slow; set VIDEO3D_FAST_RUN_SLOW=1 to run")
    for item in items:
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if skip_slow is not None and "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def cpu_extension():
    """Skip when the C++ extension is unavailable, unless VIDEO3D_FAST_REQUIRE_EXTENSION=1 (CI), where
    a missing or broken extension must fail loudly instead of hiding behind skips."""
    from video3d_fast import ops

    status = ops.available_backends()["cpu"]
    if not status.available:
        if os.environ.get("VIDEO3D_FAST_REQUIRE_EXTENSION") == "1":
            pytest.fail(f"C++ extension required but unavailable: {status.reason}")
        pytest.skip(f"C++ extension unavailable: {status.reason}")
    return status
