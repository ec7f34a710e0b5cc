"""The public op API: plain/grouped conv3d and the two fused conv + BatchNorm + residual + ReLU forms.

Every function validates its arguments (clear TypeError/ValueError before any kernel runs), applies
autocast, picks a backend (``backend="auto"`` or a name from :func:`available_backends`) and calls the
differentiable custom op of ``library.py``; ``backend="torch"`` runs ``reference.py`` through plain
autograd instead.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple, Union

import torch

from . import reference
from .backends import get_backend, resolve_backend
from .backends.base import RunningStats
from . import library
from .params import (
    IntOr3,
    check_activation,
    check_channel_vector,
    check_residual,
    make_params,
)
from .reference import batchnorm_momentum_factor, opmath_dtype

__all__ = ["conv3d", "conv3d_affine_act", "conv3d_batchnorm_act", "fold_batchnorm", "recompute_conv_outputs",
           "recomputing_conv_outputs"]

# Default of conv3d_batchnorm_act's save_conv_out (see recompute_conv_outputs).
_RECOMPUTE_CONV_OUTPUTS = False


@contextlib.contextmanager
def recompute_conv_outputs(enabled: bool = True) -> Iterator[None]:
    """Inside this block, training-form calls (``conv3d_batchnorm_act``, hence every fused conv + BN unit of
    a model in training mode) do not keep the pre-BatchNorm conv output for backward; backward computes
    the convolution again from the saved input and weight.

    The conv output is the one activation per layer the fused op keeps that a network does not keep
    anyway (the layer's output is the next layer's saved input), so this takes roughly one activation per
    conv unit off the memory held between forward and backward (`benchmarks/activation_memory.py`), for one
    more forward convolution per unit in backward. Like gradient checkpointing, but per conv and without
    re-running BatchNorm (its batch statistics are kept). Calls with an explicit ``save_conv_out`` ignore it.
    """
    global _RECOMPUTE_CONV_OUTPUTS
    previous = _RECOMPUTE_CONV_OUTPUTS
    _RECOMPUTE_CONV_OUTPUTS = bool(enabled)
    try:
        yield
    finally:
        _RECOMPUTE_CONV_OUTPUTS = previous


def recomputing_conv_outputs() -> bool:
    """Whether training-form calls without an explicit ``save_conv_out`` recompute the conv output now."""
    return _RECOMPUTE_CONV_OUTPUTS


def _autocast(*tensors: Optional[torch.Tensor]):
    """Cast floating activations/weights to the autocast dtype where autocast is on (like F.conv3d)."""
    first = tensors[0]
    if not isinstance(first, torch.Tensor):  # make_params reports the type error
        return tensors
    device_type = first.device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64 else t
        for t in tensors
    )


# Eager inference plans. Everything the argument checks of conv3d_affine_act look at is a shape, dtype
# or device, or a scalar argument, so per such key the checks run once; the plan keeps their result and
# the backend's runner (kernel and argument lists bound). Host time matters: on a 1 ms CPU layer the
# checks and the op-argument round trip were several percent, right after a kernel that evicted the
# interpreter's caches. Keys compare with ==, so stride=1.0 may meet stride=1's plan: the same conv.
_AFFINE_PLANS: dict = {}
_PLANS_MAX = 4096


# The training form's argument checks, memoised the same way (their result: params, relu, backend).
_BN_CHECKS: dict = {}


def _signature(t: Optional[torch.Tensor]):
    """What the argument checks look at in a tensor argument (AttributeError for a non-tensor)."""
    return None if t is None else (t.shape, t.dtype, t.device)


def _autocast_dtype(input: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast casts the activations/weights to (None when off): part of every memo key,
    since the checks see the cast tensors."""
    device_type = input.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


class _AffinePlan:
    __slots__ = ("params", "relu", "backend", "run")

    def __init__(self, params, relu: bool, backend: str):
        self.params, self.relu, self.backend = params, relu, backend
        self.run = None if backend == "torch" else get_backend(backend).affine_act_runner(params, relu)


def conv3d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOr3 = 1,
    padding: Union[IntOr3, str] = 0,
    dilation: IntOr3 = 1,
    groups: int = 1,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """3D convolution, plain or grouped (ResNeXt, depthwise); same semantics as ``F.conv3d``.

    Args:
        input: (N, C, D, H, W), NCDHW or channels_last_3d, float16/bfloat16/float32/float64.
        weight: (K, C/groups, T, R, S), same dtype and device.
        bias: optional (K,).
    Returns:
        (N, K, Do, Ho, Wo) in the input's dtype and memory format.
    """
    input, weight, bias = _autocast(input, weight, bias)
    p = make_params(input, weight, stride, padding, dilation, groups)
    if bias is not None:
        check_channel_vector(bias, "bias", p.out_channels, input)
        if bias.dtype != input.dtype:
            raise TypeError(f"bias dtype {bias.dtype} does not match input dtype {input.dtype}")
    name = resolve_backend(backend, input.device)
    if name == "torch":
        return reference.conv3d(input, weight, bias, p.stride, p.padding, p.dilation, p.groups)
    return library.conv3d(input, weight, bias, *p.as_conv_args(), name)


def conv3d_affine_act(
    input: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    stride: IntOr3 = 1,
    padding: Union[IntOr3, str] = 0,
    dilation: IntOr3 = 1,
    groups: int = 1,
    activation: str = "relu",
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Inference form: ``act(conv3d(input, weight) * scale + shift [+ residual])``.

    ``scale``/``shift`` are per output channel, shape (K,), float32 or the input dtype: an eval-mode
    BatchNorm3d folded by :func:`fold_batchnorm`, or a conv bias (scale = 1). ``residual`` has the
    output's shape and is added before the activation (ResNet blocks). ``activation`` is "relu" or
    "none". Differentiable in input, weight, scale, shift and residual (fine-tuning with frozen BN).
    The epilogue runs in float32 (float64 for float64 data) and is rounded once.
    """
    plan = key = None
    if not torch.compiler.is_compiling():
        try:
            key = (_signature(input), _signature(weight), _signature(scale), _signature(shift),
                   _signature(residual), _autocast_dtype(input), stride, padding, dilation, groups, activation,
                   backend)
            plan = _AFFINE_PLANS.get(key)
        except (AttributeError, TypeError):  # a non-tensor or an unhashable argument: the checks report it
            key = None
    if plan is not None:
        p, relu, name = plan.params, plan.relu, plan.backend
        input, weight, residual = _autocast(input, weight, residual)  # the key holds the autocast dtype
        if plan.run is not None and not library.use_custom_ops() and not library.needs_autograd(
                input, weight, scale, shift, residual):
            return plan.run(input, weight, scale, shift, residual)
    else:
        relu = check_activation(activation)
        input, weight, residual = _autocast(input, weight, residual)
        p = make_params(input, weight, stride, padding, dilation, groups)
        check_channel_vector(scale, "scale", p.out_channels, input)
        check_channel_vector(shift, "shift", p.out_channels, input)
        check_residual(residual, p, input)
        name = resolve_backend(backend, input.device)
        if key is not None:
            if len(_AFFINE_PLANS) >= _PLANS_MAX:
                _AFFINE_PLANS.clear()
            _AFFINE_PLANS[key] = _AffinePlan(p, relu, name)
    if name == "torch":
        return reference.conv3d_affine_act(
            input, weight, scale, shift, residual, p.stride, p.padding, p.dilation, p.groups, activation
        )
    save_conv_out = torch.is_grad_enabled() and scale.requires_grad
    out, _ = library.conv3d_affine_act(
        input, weight, scale, shift, residual, *p.as_conv_args(), relu, save_conv_out, name
    )
    return out


def conv3d_batchnorm_act(
    input: torch.Tensor,
    weight: torch.Tensor,
    bn_weight: Optional[torch.Tensor],
    bn_bias: Optional[torch.Tensor],
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    num_batches_tracked: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    stride: IntOr3 = 1,
    padding: Union[IntOr3, str] = 0,
    dilation: IntOr3 = 1,
    groups: int = 1,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    activation: str = "relu",
    *,
    backend: str = "auto",
    save_conv_out: Optional[bool] = None,
) -> torch.Tensor:
    """Training form: conv3d -> BatchNorm3d in training mode -> [+ residual] -> activation.

    Identical in value to ``nn.Conv3d(bias=False) -> nn.BatchNorm3d (train) -> (+ residual) -> nn.ReLU``:
    batch statistics over (N, D, H, W), biased variance to normalise, unbiased variance for the running
    update, ``momentum`` (None = cumulative average) and ``eps`` as in nn.BatchNorm3d. ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` are updated in place (pass None to not track, like
    ``track_running_stats=False``); ``bn_weight``/``bn_bias`` None means ``affine=False``.
    Only the pre-BN conv output (and the output, for the ReLU mask) is kept for backward; with
    ``save_conv_out=False`` (default: False inside :func:`recompute_conv_outputs`, else True) not even
    that: backward computes the conv again. The ``torch`` backend is plain autograd and ignores it.
    """
    checked = key = None
    if not torch.compiler.is_compiling():
        try:
            key = (_signature(input), _signature(weight), _signature(bn_weight), _signature(bn_bias),
                   _signature(running_mean), _signature(running_var), _signature(residual),
                   _autocast_dtype(input), stride, padding, dilation, groups, momentum, eps, activation, backend)
            checked = _BN_CHECKS.get(key)
        except (AttributeError, TypeError):  # a non-tensor or an unhashable argument: the checks report it
            key = None
    if checked is not None:
        p, relu, name = checked
        input, weight, residual = _autocast(input, weight, residual)  # the key holds the autocast dtype
    else:
        relu = check_activation(activation)
        input, weight, residual = _autocast(input, weight, residual)
        p = make_params(input, weight, stride, padding, dilation, groups)
        for name_, vec in (("bn_weight", bn_weight), ("bn_bias", bn_bias), ("running_mean", running_mean),
                           ("running_var", running_var)):
            check_channel_vector(vec, name_, p.out_channels, input, allow_none=True)
        if (running_mean is None) != (running_var is None):
            raise ValueError("running_mean and running_var must both be given or both be None")
        check_residual(residual, p, input)
        if not isinstance(eps, (int, float)) or eps <= 0:
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        if momentum is not None and not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
        if p.gemm_m <= 1:
            raise ValueError(
                f"expected more than 1 value per channel when training, got output shape {p.out_shape}"
            )
        name = resolve_backend(backend, input.device)
        if key is not None:
            if len(_BN_CHECKS) >= _PLANS_MAX:
                _BN_CHECKS.clear()
            _BN_CHECKS[key] = (p, relu, name)
    if name == "torch":
        return reference.conv3d_batchnorm_act(
            input, weight, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked, residual,
            p.stride, p.padding, p.dilation, p.groups, momentum, eps, activation,
        )
    stat_dtype = bn_weight.dtype if bn_weight is not None else opmath_dtype(input.dtype)
    if bn_weight is None:
        bn_weight = torch.ones(p.out_channels, dtype=stat_dtype, device=input.device)
    if bn_bias is None:
        bn_bias = torch.zeros(p.out_channels, dtype=stat_dtype, device=input.device)
    running = None
    if running_mean is not None and running_var is not None:
        running = RunningStats(running_mean, running_var, batchnorm_momentum_factor(momentum, num_batches_tracked))
    if save_conv_out is None:
        save_conv_out = not _RECOMPUTE_CONV_OUTPUTS
    return library.conv3d_batchnorm_act(
        input, weight, bn_weight, bn_bias, residual, *p.as_conv_args(), float(eps), relu, bool(save_conv_out), name,
        running=running,
    )[0]


def fold_batchnorm(
    bn: torch.nn.modules.batchnorm._BatchNorm, conv_bias: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm (optionally after a conv bias), for conv3d_affine_act.

    scale = weight / sqrt(running_var + eps); shift = bias - running_mean * scale (+ conv_bias * scale).
    Differentiable in the BN's weight and bias (so frozen-statistics fine-tuning trains them).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm needs running statistics (track_running_stats=True)")
    invstd = torch.rsqrt(bn.running_var + bn.eps)
    scale = invstd if bn.weight is None else bn.weight * invstd
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if conv_bias is not None:
        shift = shift + conv_bias * scale
    return scale, shift
