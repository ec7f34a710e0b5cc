"""Test hooks for kernel authors.

``poison_outputs()``: while active, every output buffer a fast backend allocates for its kernels is
pre-filled with NaN (C++ backends through the extension's flag; Triton launchers check
:func:`poison_enabled`), so an element a kernel forgets to write fails the comparison instead of
silently holding stale memory.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .._extension import KERNEL_NAMESPACE, load_extension

_poison = False


def poison_enabled() -> bool:
    return _poison


def _set_extension_flag(enabled: bool) -> None:
    if load_extension().loaded:
        getattr(torch.ops, KERNEL_NAMESPACE).set_poison_outputs(enabled)


@contextlib.contextmanager
def poison_outputs(enabled: bool = True) -> Iterator[None]:
    global _poison
    previous = _poison
    _poison = enabled
    _set_extension_flag(enabled)
    try:
        yield
    finally:
        _poison = previous
        _set_extension_flag(previous)


def new_output(shape, *, dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """torch.empty, or a NaN-filled buffer under poison_outputs() (for Triton launchers)."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if _poison:
        out.fill_(float("nan"))
    return out
