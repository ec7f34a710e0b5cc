"""Tests of the Triton backend run its kernels through Triton's interpreter when there is no GPU.

Triton fixes interpreted-vs-compiled when a kernel is *defined*, so TRITON_INTERPRET=1 must be in the
environment before the backend's kernel modules are imported: tests/conftest.py sets it for the whole
pytest process (before collection) when no CUDA device is visible. Other test directories only notice it
through ``ops.available_backends()["triton"]`` reporting the backend available on CPU (``auto`` never
picks Triton for CPU tensors). With a CUDA device nothing is set and the kernels compile for the GPU.
"""
