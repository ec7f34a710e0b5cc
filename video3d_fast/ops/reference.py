"""Pure-PyTorch reference of every op in the contract: the specification the fast backends are tested
against, and the ``backend="torch"`` implementation (plain autograd, no custom op).

Semantics are those of the modules each op replaces:

* :func:`conv3d` is ``F.conv3d``.
* :func:`conv3d_affine_act` is the inference form ``act(conv3d(x, w) * scale + shift [+ residual])``
  with per-output-channel ``scale``/``shift`` (a folded eval-mode BatchNorm3d, or a conv bias with
  ``scale=1``). The epilogue is computed in float32 (float64 for float64 inputs) and rounded once,
  which is what the fused kernels do.
* :func:`conv3d_batchnorm_act` is ``nn.Conv3d -> nn.BatchNorm3d (training mode) [+ residual] -> nn.ReLU``:
  batch statistics over (N, D, H, W), biased variance for normalising, unbiased variance for the running
  update, running stats and ``num_batches_tracked`` updated in place exactly as ``nn.BatchNorm3d`` does.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .params import IntOr3, check_activation, make_params

__all__ = [
    "conv3d",
    "conv3d_affine_act",
    "conv3d_batchnorm_act",
    "batchnorm_momentum_factor",
    "opmath_dtype",
    "per_channel",
]


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / epilogue dtype: float64 for float64 data, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_channel(v: torch.Tensor) -> torch.Tensor:
    """Broadcast a (C,) vector over (N, C, D, H, W)."""
    return v.view(1, -1, 1, 1, 1)


def batchnorm_momentum_factor(momentum: Optional[float], num_batches_tracked: Optional[torch.Tensor]) -> float:
    """nn.BatchNorm's exponential_average_factor; increments num_batches_tracked in place like it."""
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:
            return 1.0 / float(num_batches_tracked)
    if momentum is None:
        return 0.0
    return float(momentum)


def conv3d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOr3 = 1,
    padding: IntOr3 = 0,
    dilation: IntOr3 = 1,
    groups: int = 1,
) -> torch.Tensor:
    p = make_params(input, weight, stride, padding, dilation, groups)
    return F.conv3d(input, weight, bias, p.stride, p.padding, p.dilation, p.groups)


def conv3d_affine_act(
    input: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    stride: IntOr3 = 1,
    padding: IntOr3 = 0,
    dilation: IntOr3 = 1,
    groups: int = 1,
    activation: str = "relu",
) -> torch.Tensor:
    relu = check_activation(activation)
    p = make_params(input, weight, stride, padding, dilation, groups)
    acc = opmath_dtype(input.dtype)
    c = F.conv3d(input, weight, None, p.stride, p.padding, p.dilation, p.groups)
    z = c.to(acc) * per_channel(scale.to(acc)) + per_channel(shift.to(acc))
    if residual is not None:
        z = z + residual.to(acc)
    if relu:
        z = torch.relu(z)
    return z.to(input.dtype)


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
    padding: IntOr3 = 0,
    dilation: IntOr3 = 1,
    groups: int = 1,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    activation: str = "relu",
) -> torch.Tensor:
    relu = check_activation(activation)
    p = make_params(input, weight, stride, padding, dilation, groups)
    c = F.conv3d(input, weight, None, p.stride, p.padding, p.dilation, p.groups)
    factor = batchnorm_momentum_factor(momentum, num_batches_tracked)
    # BatchNorm in opmath (as cuDNN/ATen do internally for low-precision data); running stats are
    # updated through opmath copies when their dtype differs, then written back in place.
    acc = opmath_dtype(input.dtype)
    rm = running_mean if running_mean is None or running_mean.dtype == acc else running_mean.to(acc)
    rv = running_var if running_var is None or running_var.dtype == acc else running_var.to(acc)
    y = F.batch_norm(
        c.to(acc), rm, rv,
        None if bn_weight is None else bn_weight.to(acc),
        None if bn_bias is None else bn_bias.to(acc),
        True, factor, eps,
    )
    if rm is not running_mean:
        running_mean.copy_(rm)
    if rv is not running_var:
        running_var.copy_(rv)
    if residual is not None:
        y = y + residual.to(acc)
    if relu:
        y = torch.relu(y)
    return y.to(input.dtype)

