"""Tests of the Triton backend: run its kernels through Triton's interpreter when there is no GPU.

Triton fixes interpreted-vs-compiled when a kernel is *defined*, so TRITON_INTERPRET=1 must be in the
environment before the backend's kernel modules are imported. This conftest sets it while pytest
collects this directory (before any test runs; the backend imports its kernels lazily, on first use).
The variable then stays set for the rest of the pytest process: other test directories only notice it
through ``ops.available_backends()["triton"]`` reporting the backend available on CPU (``auto`` never
picks Triton for CPU tensors). With a CUDA device nothing is set and the kernels compile for the GPU.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
