"""Backend registry: which implementations exist, which are usable here (and why not), and what
``backend="auto"`` picks for a device.

Names: "torch" (reference.py through plain autograd, always there), "cpu" and "cuda" (the C++
extension), "triton" (video3d_fast/ops/backends/triton/). "aten" is the ATen composite base class,
exposed for tests of the custom-op machinery only.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from .base import Backend

BACKENDS = ("torch", "triton", "cuda", "cpu")
# What "auto" tries, best first, per device type. Triton on CPU (its interpreter) is never automatic.
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}

_instances: Dict[str, Backend] = {}
_warned_fallback: set = set()


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why it is unavailable; "" when available


def _construct(name: str) -> Backend:
    if name == "aten":
        return Backend()
    if name in ("cpu", "cuda"):
        from .extension import ExtensionBackend

        return ExtensionBackend(name)
    if name == "triton":
        from .triton import TritonBackend

        return TritonBackend()
    raise ValueError(f"unknown backend {name!r}; expected one of {('auto',) + BACKENDS}")


def get_backend(name: str) -> Backend:
    """The backend object behind a custom-op call ("torch" has none: it is plain autograd)."""
    backend = _instances.get(name)
    if backend is None:
        backend = _instances[name] = _construct(name)
    return backend


def _reason(name: str) -> Optional[str]:
    if name == "torch":
        return None
    try:
        return get_backend(name).unavailable_reason()
    except ImportError as exc:
        return f"cannot import the {name} backend: {exc}"


def available_backends() -> Dict[str, BackendStatus]:
    """Every backend with whether it can run on this machine and, if not, why not."""
    out = {}
    for name in BACKENDS:
        why = _reason(name)
        out[name] = BackendStatus(name, why is None, why or "")
    return out


def _device_reason(name: str, device: torch.device) -> Optional[str]:
    if name == "torch":
        return None
    if name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "Triton runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
    return get_backend(name).device_reason(device)


@torch.compiler.assume_constant_result
def _resolve(requested: str, device_type: str) -> str:
    device = torch.device(device_type)
    if requested == "auto":
        order = AUTO_ORDER.get(device.type, ("torch",))
        for name in order:
            if _reason(name) is None and _device_reason(name, device) is None:
                return name
        if device.type not in _warned_fallback and len(order) > 1:
            _warned_fallback.add(device.type)
            why = "; ".join(f"{n}: {_reason(n) or _device_reason(n, device)}" for n in order if n != "torch")
            warnings.warn(f"video3d_fast: no fused backend for {device.type} tensors, running the unfused "
                          f"torch reference ({why})", RuntimeWarning, stacklevel=3)
        return "torch"
    if requested not in BACKENDS and requested != "aten":
        raise ValueError(f"unknown backend {requested!r}; expected one of {('auto',) + BACKENDS}")
    why = _reason(requested) or _device_reason(requested, device)
    if why is not None:
        raise RuntimeError(f"backend {requested!r} cannot run here: {why}")
    return requested


_resolved: Dict[tuple, str] = {}


def resolve_backend(requested: str, device: torch.device) -> str:
    """Concrete backend name for ``requested`` ("auto" or a name) on ``device``; raises with the reason
    when an explicitly requested backend cannot run. Eager answers are memoised per (request, device
    type, TRITON_INTERPRET), the only inputs that change them within a process."""
    if not isinstance(requested, str):
        raise TypeError(f"backend must be a string, got {type(requested).__name__}")
    if torch.compiler.is_compiling():
        return _resolve(requested, device.type)
    key = (requested, device.type, os.environ.get("TRITON_INTERPRET"))
    name = _resolved.get(key)
    if name is None:
        name = _resolved[key] = _resolve(requested, device.type)
    return name
