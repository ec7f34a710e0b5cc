"""The one place where conv3d problem sizes are normalised, checked and derived.

Every backend (reference, C++ CPU/CUDA, Triton) and every fake (meta) implementation takes a
:class:`Conv3dParams`; output-size and implicit-GEMM arithmetic exist nowhere else in Python.
The C++ side mirrors it in ``csrc/conv3d/conv3d_params.h``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

IntOr3 = Union[int, Sequence[int]]
Triple = Tuple[int, int, int]

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ACTIVATIONS = ("relu", "none")


def triple(value: IntOr3, name: str) -> Triple:
    """Expand an int or a 1- or 3-sequence to a 3-tuple of Python ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a sequence of 3 ints, got a bool")
    if isinstance(value, int):
        return (value, value, value)
    try:
        items = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of 3 ints, got {value!r}") from None
    if len(items) == 1:
        return (items[0],) * 3
    if len(items) != 3:
        raise ValueError(f"{name} must have 3 elements (depth, height, width), got {len(items)}: {value!r}")
    return items  # type: ignore[return-value]


def _out_size(size: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class Conv3dParams:
    """Shape of one 3D convolution, NCDHW semantics (the layout in memory may be NDHWC).

    GEMM view (forward): M = N·Do·Ho·Wo, N_gemm = K/groups per group, K_gemm = (C/groups)·T·R·S.
    """

    batch: int
    in_channels: int
    in_size: Triple  # D, H, W
    out_channels: int
    kernel: Triple  # T, R, S
    stride: Triple
    padding: Triple
    dilation: Triple
    groups: int

    def __post_init__(self):
        # Derived sizes, computed once: the launchers read them on every call, and params are memoised
        # per shape. Plain attributes, not fields: equality, hashing and astuple see the fields only.
        out_size = tuple(
            _out_size(self.in_size[i], self.kernel[i], self.stride[i], self.padding[i], self.dilation[i])
            for i in range(3)
        )
        object.__setattr__(self, "_out_size", out_size)
        object.__setattr__(self, "_out_shape", (self.batch, self.out_channels, *out_size))
        object.__setattr__(self, "_gemm_m", self.batch * out_size[0] * out_size[1] * out_size[2])

    @property
    def out_size(self) -> Triple:
        return self._out_size  # type: ignore[attr-defined]

    @property
    def out_shape(self) -> Tuple[int, int, int, int, int]:
        return self._out_shape  # type: ignore[attr-defined]

    @property
    def in_channels_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_channels_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def gemm_m(self) -> int:
        return self._gemm_m  # type: ignore[attr-defined]

    @property
    def gemm_k(self) -> int:
        t, r, s = self.kernel
        return self.in_channels_per_group * t * r * s

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the forward conv (FLOPs = 2 x MACs)."""
        return self.gemm_m * self.out_channels * self.gemm_k

    def as_conv_args(self):
        """(stride, padding, dilation, groups) as lists, the form aten and our custom ops take."""
        return list(self.stride), list(self.padding), list(self.dilation), self.groups


def _check_tensor(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")



def resolve_padding(padding, kernel: Triple, dilation: Triple, stride: Triple) -> Triple:
    """Accept an int/triple or nn.Conv3d's strings 'valid' and 'same' (symmetric padding only)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0)
        if padding == "same":
            if stride != (1, 1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions (as in nn.Conv3d)")
            total = tuple(d * (k - 1) for k, d in zip(kernel, dilation))
            if any(t % 2 for t in total):
                raise ValueError(
                    "padding='same' needs symmetric padding here: dilation*(kernel-1) must be even on every axis, "
                    f"got {total}"
                )
            return tuple(t // 2 for t in total)  # type: ignore[return-value]
        raise ValueError(f"padding must be an int, a 3-tuple, 'valid' or 'same', got {padding!r}")
    return triple(padding, "padding")


_PARAMS_CACHE: dict = {}
_PARAMS_CACHE_SIZE = 4096


def _hashable(v):
    """Lists (what aten and the custom ops take) as tuples, for memo keys."""
    return tuple(v) if isinstance(v, list) else v


def make_params(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: IntOr3 = 1,
    padding: Union[IntOr3, str] = 0,
    dilation: IntOr3 = 1,
    groups: int = 1,
) -> Conv3dParams:
    """Validate input/weight and conv arguments, return the problem size.

    Raises TypeError/ValueError with a message naming the offending argument: wrong ndim,
    channels not matching weight x groups, non-positive stride/dilation, negative padding,
    output size < 1, dtype mixes, tensors on different devices.

    Everything checked depends only on shapes, dtypes, devices and the conv arguments, so eager calls
    memoise the result per such key (validation was a visible share of a small layer's host time).
    """
    if torch.compiler.is_compiling() or not (isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return _make_params_uncached(input, weight, stride, padding, dilation, groups)
    try:
        key = (input.shape, weight.shape, input.dtype, weight.dtype, input.device, weight.device,
               _hashable(stride), _hashable(padding), _hashable(dilation), groups)
        hit = _PARAMS_CACHE.get(key)
    except TypeError:  # an unhashable argument: let the full check report it
        return _make_params_uncached(input, weight, stride, padding, dilation, groups)
    if hit is None:
        hit = _make_params_uncached(input, weight, stride, padding, dilation, groups)
        if len(_PARAMS_CACHE) >= _PARAMS_CACHE_SIZE:
            _PARAMS_CACHE.clear()
        _PARAMS_CACHE[key] = hit
    return hit


def _make_params_uncached(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: IntOr3 = 1,
    padding: Union[IntOr3, str] = 0,
    dilation: IntOr3 = 1,
    groups: int = 1,
) -> Conv3dParams:
    _check_tensor(input, "input")
    _check_tensor(weight, "weight")
    if input.dim() != 5:
        raise ValueError(
            f"input must be 5-D (N, C, D, H, W), got {input.dim()}-D with shape {tuple(input.shape)}"
        )
    if weight.dim() != 5:
        raise ValueError(
            f"weight must be 5-D (K, C/groups, T, R, S), got {weight.dim()}-D with shape {tuple(weight.shape)}"
        )
    if input.dtype not in FLOATING_DTYPES:
        raise TypeError(f"input dtype must be one of float16/bfloat16/float32/float64, got {input.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"weight dtype {weight.dtype} does not match input dtype {input.dtype}")
    if weight.device != input.device:
        raise ValueError(f"weight is on {weight.device} but input is on {input.device}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    stride3 = triple(stride, "stride")
    dilation3 = triple(dilation, "dilation")
    if any(s < 1 for s in stride3):
        raise ValueError(f"stride must be >= 1 on every axis, got {stride3}")
    if any(d < 1 for d in dilation3):
        raise ValueError(f"dilation must be >= 1 on every axis, got {dilation3}")
    kernel = tuple(int(k) for k in weight.shape[2:])
    padding3 = resolve_padding(padding, kernel, dilation3, stride3)  # type: ignore[arg-type]
    if any(p < 0 for p in padding3):
        raise ValueError(f"padding must be >= 0 on every axis, got {padding3}")
    n, c = int(input.shape[0]), int(input.shape[1])
    k, cg = int(weight.shape[0]), int(weight.shape[1])
    if c % groups != 0:
        raise ValueError(f"input channels ({c}) must be divisible by groups ({groups})")
    if k % groups != 0:
        raise ValueError(f"weight out_channels ({k}) must be divisible by groups ({groups})")
    if cg * groups != c:
        raise ValueError(
            f"weight expects {cg} channels per group x {groups} groups = {cg * groups} input channels, "
            f"but input has {c} channels (input {tuple(input.shape)}, weight {tuple(weight.shape)})"
        )
    if any(kk < 1 for kk in kernel) or k < 1:
        raise ValueError(f"weight has a zero-size dimension: {tuple(weight.shape)}")
    if n < 1 or any(int(s) < 1 for s in input.shape[2:]):
        raise ValueError(f"input has a zero-size dimension: {tuple(input.shape)}")
    params = Conv3dParams(
        batch=n,
        in_channels=c,
        in_size=tuple(int(s) for s in input.shape[2:]),  # type: ignore[arg-type]
        out_channels=k,
        kernel=kernel,  # type: ignore[arg-type]
        stride=stride3,
        padding=padding3,
        dilation=dilation3,
        groups=groups,
    )
    if any(o < 1 for o in params.out_size):
        raise ValueError(
            f"output size {params.out_size} would be < 1 for input spatial size {params.in_size}, kernel "
            f"{kernel}, stride {stride3}, padding {padding3}, dilation {dilation3}"
        )
    return params


def check_channel_vector(
    t: Optional[torch.Tensor], name: str, channels: int, input: torch.Tensor, allow_none: bool = False
) -> None:
    """Per-output-channel vectors (scale, shift, BN weight/bias, running stats, conv bias)."""
    if t is None:
        if allow_none:
            return
        raise ValueError(f"{name} is required")
    _check_tensor(t, name)
    if t.dim() != 1 or t.shape[0] != channels:
        raise ValueError(f"{name} must have shape ({channels},) (one value per output channel), got {tuple(t.shape)}")
    if t.device != input.device:
        raise ValueError(f"{name} is on {t.device} but input is on {input.device}")
    if t.dtype not in (torch.float32, input.dtype):
        raise TypeError(f"{name} dtype must be float32 or the input dtype {input.dtype}, got {t.dtype}")


def check_residual(residual: Optional[torch.Tensor], params: Conv3dParams, input: torch.Tensor) -> None:
    if residual is None:
        return
    _check_tensor(residual, "residual")
    if tuple(residual.shape) != params.out_shape:
        raise ValueError(f"residual must have the output shape {params.out_shape}, got {tuple(residual.shape)}")
    if residual.dtype != input.dtype:
        raise TypeError(f"residual dtype {residual.dtype} does not match input dtype {input.dtype}")
    if residual.device != input.device:
        raise ValueError(f"residual is on {residual.device} but input is on {input.device}")


def check_activation(activation: str) -> bool:
    """Return True for relu, False for none."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation == "relu"


def params_from_lists(input_shape, weight_shape, stride, padding, dilation, groups) -> Conv3dParams:
    """Rebuild params inside custom ops, whose schema carries plain int lists (already validated)."""
    if not torch.compiler.is_compiling():
        key = (tuple(input_shape), tuple(weight_shape), tuple(stride), tuple(padding), tuple(dilation), groups)
        try:
            hit = _PARAMS_FROM_LISTS_CACHE.get(key)
        except TypeError:  # symbolic sizes (fake tensors with dynamic shapes) are not hashable
            return _params_from_lists(input_shape, weight_shape, stride, padding, dilation, groups)
        if hit is None:
            if len(_PARAMS_FROM_LISTS_CACHE) >= _PARAMS_CACHE_SIZE:
                _PARAMS_FROM_LISTS_CACHE.clear()
            hit = _PARAMS_FROM_LISTS_CACHE[key] = _params_from_lists(*key)
        return hit
    return _params_from_lists(input_shape, weight_shape, stride, padding, dilation, groups)


_PARAMS_FROM_LISTS_CACHE: dict = {}


def _params_from_lists(input_shape, weight_shape, stride, padding, dilation, groups) -> Conv3dParams:
    return Conv3dParams(
        batch=int(input_shape[0]),
        in_channels=int(input_shape[1]),
        in_size=tuple(int(s) for s in input_shape[2:]),  # type: ignore[arg-type]
        out_channels=int(weight_shape[0]),
        kernel=tuple(int(s) for s in weight_shape[2:]),  # type: ignore[arg-type]
        stride=tuple(stride),  # type: ignore[arg-type]
        padding=tuple(padding),  # type: ignore[arg-type]
        dilation=tuple(dilation),  # type: ignore[arg-type]
        groups=int(groups),
    )


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The layout our ops give outputs (and gradients) that correspond to ``t``.

    channels_last_3d when ``t`` is channels_last_3d and not also plain-contiguous (ambiguous sizes,
    e.g. C == 1, count as contiguous); contiguous_format otherwise. Fake and real implementations
    both follow this rule, so compiled graphs see the strides the kernels produce.
    """
    if t.dim() == 5 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
