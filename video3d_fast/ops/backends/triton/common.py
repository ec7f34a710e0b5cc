"""Pieces every Triton kernel family of this backend shares: interpreter detection, dtype/precision
choices, NDHWC stride helpers (host side) and the implicit-im2col gather and MMA step (device side).

Vectorisation hints (tl.multiple_of / tl.max_contiguous) are written in the kernel bodies: set inside a
helper they land on the helper's block argument and are lost when Triton inlines the call.

Layout convention of all kernels: activations are addressed through five strides given in
(N, D, H, W, C) order, so any memory layout works; the launchers hand the kernels channels_last_3d
(NDHWC-dense) activations because then C is the unit-stride axis the gathers run along.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

try:  # launch hooks live here in the Triton versions whose launcher API the direct launch uses (3.6, 3.8 read)
    from triton import knobs
except ImportError:  # pragma: no cover - older Triton: always launch through the JIT
    knobs = None

# Triton decides at decoration time whether a kernel is compiled or interpreted; remember the
# mode the kernels of this package were defined in (see TritonBackend.device_reason).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

TORCH_TO_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
KERNEL_DTYPES = tuple(TORCH_TO_TL)  # float64 runs the ATen composite (see TritonBackend)


@dataclass(frozen=True)
class LaunchPlan:
    """What a launcher computes once per problem (tile config, grid, integer arguments, constexprs) and
    reuses on every call: the host-side cost of a launch is then a dict lookup and the launch itself."""

    cfg: object  # autotune.KernelConfig
    grid: tuple
    args: tuple  # the kernel's integer arguments, in order
    constexprs: dict
    # stands for (args, constexprs) in launch's cache key: hashing ~50 integers per launch cost ~1.5 us.
    # A plan is launched with one kernel only.
    token: int = field(init=False, compare=False, default=0)

    def __post_init__(self):
        object.__setattr__(self, "token", next(_plan_tokens))


_plan_tokens = itertools.count(1)


# ------------------------------------------------------------------------------------------------
# launching: Triton's JIT entry binds and specialises ~50 arguments per call (tens of microseconds of
# host time per launch, several launches per layer); after the first call of a specialisation its
# compiled kernel is called directly.
# ------------------------------------------------------------------------------------------------
DIRECT_LAUNCH = (not INTERPRETED and knobs is not None
                 and os.environ.get("VIDEO3D_FAST_TRITON_DIRECT_LAUNCH", "1") != "0")
_compiled: dict = {}


def launch(kernel, grid: tuple, tensors: tuple, args: tuple = (), constexprs: Optional[dict] = None,
           floats: tuple = (), plan_token: int = 0) -> None:
    """``kernel[grid](*tensors, *args, *floats, **constexprs)``: the kernel's parameters are its tensors,
    then its integer arguments, then its float arguments, then its constexprs.

    The first call of each specialisation goes through Triton's JIT, which compiles (or loads) the
    kernel and returns it; later calls launch that compiled kernel on the current stream without the
    JIT's per-argument binding. The cache key holds everything the JIT specialises on: each tensor's
    dtype and 16-byte alignment, the integer arguments (their values, a superset of what Triton
    distinguishes), the constexprs and the device. Float arguments (eps, a momentum factor) are never
    specialised and stay out of the key (a cumulative-average momentum changes every step, and each value
    would have been a JIT call and a cache entry); they travel apart from ``args`` so that the key is
    built from the caller's tuples as they are (scanning ~50 arguments for floats cost ~9 us per launch).
    ``plan_token`` (a LaunchPlan's token, whose args and constexprs these are) replaces them in the key.
    A launch hook (profilers) takes the JIT path.
    """
    constexprs = constexprs or {}
    if not DIRECT_LAUNCH or _launch_hooks_set():
        kernel[grid](*tensors, *args, *floats, **constexprs)
        return
    device = torch.cuda.current_device()
    aligned = tuple([(t.dtype, t.data_ptr() & 15 == 0) for t in tensors])
    # id(kernel): kernels are module-level objects that live as long as the process; JITFunction.__hash__
    # itself costs ~0.6 us
    key = ((plan_token, device, aligned) if plan_token else
           (id(kernel), device, aligned, args, tuple(constexprs.items())))
    hit = _compiled.get(key)
    if hit is None:
        hit = _first_launch(kernel, grid, tensors, args, floats, constexprs)
        if hit is not None:
            _compiled[key] = hit
        return
    compiled, tail = hit
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    compiled.run(grid[0], g1, g2, torch._C._cuda_getCurrentRawStream(device), compiled.function,
                 compiled.packed_metadata, None, None, None, *tensors, *args, *floats, *tail)


def _first_launch(kernel, grid: tuple, tensors: tuple, args: tuple, floats: tuple, constexprs: dict):
    """Launch through the JIT; returns (compiled kernel, constexpr values in parameter order) for the
    direct launches that follow, or None when this Triton version's compiled kernel cannot be called."""
    if any(type(a) is float for a in args):  # would make one cache entry per value: a launcher bug
        raise TypeError(f"{getattr(kernel, '__name__', kernel)}: float arguments go in floats=, not args=")
    compiled = kernel[grid](*tensors, *args, *floats, **constexprs)
    if not (hasattr(compiled, "packed_metadata") and hasattr(compiled, "function")):
        return None
    # positional values of the constexpr parameters, in the kernel's parameter order
    return compiled, tuple(constexprs[name] for name in kernel.arg_names[len(tensors) + len(args) + len(floats):])


def _launch_hooks_set() -> bool:
    """Whether a launch hook is registered (Triton keeps them in a HookChain, or None in old versions)."""
    hook = knobs.runtime.launch_enter_hook
    return hook is not None and bool(getattr(hook, "calls", True))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def kernel_strides(t: torch.Tensor) -> Tuple[int, ...]:
    """``t.stride()`` with 0 for size-1 dimensions.

    Their index is always 0, so the stride is irrelevant to the addresses; torch reports 1 for them
    (e.g. every filter-tap stride of a 1x1x1 weight), which Triton would specialise as a constant 1
    and thereby lose the divisibility-by-16 that vectorises the loads."""
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride()))


def ndhwc_strides(t: torch.Tensor) -> Tuple[int, int, int, int, int]:
    """Element strides (see kernel_strides) of a 5-D (N, C, D, H, W) tensor in (N, D, H, W, C) order.
    Memoised per (shape, strides): the per-channel kernels call it for every tensor of every launch."""
    key = (t.shape, t.stride())
    hit = _ndhwc_cache.get(key)
    if hit is None:
        s = kernel_strides(t)
        hit = _ndhwc_cache[key] = (s[0], s[2], s[3], s[4], s[1])
        if len(_ndhwc_cache) > 4096:
            _ndhwc_cache.clear()
    return hit


_ndhwc_cache: dict = {}


def dense_like(shape, memory_format: torch.memory_format) -> torch.Tensor:
    """A storage-less tensor with the strides a dense ``shape`` tensor in ``memory_format`` gets."""
    return torch.empty(shape, device="meta", memory_format=memory_format)


def on_four_channels(p) -> bool:
    """Whether the fprop and wgrad launchers run this conv on four-channel copies (four_channel_copy,
    four_channel_params): the C = 3 stem, one group."""
    return p.in_channels == 3 and p.groups == 1


def four_channel_copy(t: torch.Tensor) -> torch.Tensor:
    """An NDHWC-dense copy of a 3-channel (N, 3, D, H, W) activation or (K, 3, T, R, S) weight with a zero
    fourth channel. The C = 3 stem runs on it: its W_RUNS (s, c) runs then start on 8-byte boundaries
    and load as vectors (DENSE_RUN) instead of 2-byte elements; the extra channel adds zeros."""
    t4 = torch.empty((t.shape[0], 4, *t.shape[2:]), dtype=t.dtype, device=t.device,
                     memory_format=torch.channels_last_3d)
    t4[:, :3] = t
    t4[:, 3] = 0
    return t4


def four_channel_params(p):
    """``p`` (a 3-input-channel Conv3dParams) with 4 input channels, memoised."""
    hit = _four_channel_params.get(p)
    if hit is None:
        hit = _four_channel_params[p] = dataclasses.replace(p, in_channels=4)
    return hit


_four_channel_params: dict = {}


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """NDHWC-dense version of ``t`` (no copy when it already is)."""
    return t.contiguous(memory_format=torch.channels_last_3d)


def allow_tf32() -> bool:
    """Whether torch lets fp32 convolutions use TF32 tensor cores (the cuDNN conv flag)."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except AttributeError:  # pragma: no cover - future torch without the legacy flag
        return torch.backends.cudnn.conv.fp32_precision == "tf32"


def dot_flags(dtype: torch.dtype) -> dict:
    """constexpr kwargs of every kernel that calls :func:`mma` for operands of ``dtype``.

    IS_FP32 selects TF32/IEEE per torch's flag; UPCAST turns bf16 operands into fp32 before
    ``tl.dot`` under the interpreter, whose bf16 dot returns garbage (values and rounding of bf16
    loads/stores stay bf16, so the semantics tested are those of the GPU path).
    """
    is_fp32 = dtype == torch.float32
    return dict(
        IS_FP32=is_fp32,
        TF32=is_fp32 and allow_tf32() and not INTERPRETED,
        UPCAST=INTERPRETED and dtype == torch.bfloat16,
    )


@triton.jit
def mma(a, b, acc, IS_FP32: tl.constexpr, TF32: tl.constexpr, UPCAST: tl.constexpr):
    """acc += a @ b with fp32 accumulation."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif IS_FP32:
        if TF32:
            acc = tl.dot(a, b, acc, input_precision="tf32")
        else:
            acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def gather_ndhwc(ptr, n_off, d, h, w, ch, mask, D, H, W, s_d, s_h, s_w, s_c):
    """Load ``ptr[n, d, h, w, ch]`` with zero fill outside the volume (the conv's padding).

    Arguments broadcast against each other, so one helper serves both orientations of the implicit
    im2col tile: [rows = output positions, cols = (tap, channel)] in fprop/dgrad and
    [rows = positions, cols = (tap, channel)] as the B operand of wgrad. ``n_off`` is the int64
    batch offset; the in-sample offset fits int32 for any activation below 2**31 elements per sample.
    """
    inside = mask & (d >= 0) & (d < D) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    offs = n_off + d * s_d + h * s_h + w * s_w + ch * s_c
    return tl.load(ptr + offs, mask=inside, other=0.0)


@triton.jit
def split_rows(m, Do, Ho, Wo):
    """Row index of the GEMM over N*Do*Ho*Wo -> (n, od, oh, ow)."""
    ow = m % Wo
    t = m // Wo
    oh = t % Ho
    t = t // Ho
    od = t % Do
    n = t // Do
    return n, od, oh, ow


@triton.jit
def split_taps(tap, R, S):
    """Flattened filter tap index over T*R*S -> (t, r, s)."""
    s = tap % S
    t = tap // S
    r = t % R
    t = t // R
    return t, r, s
