"""The backend interface, with every method written in ATen ops.

A backend computes the forward and backward pieces of the three ops of the contract. The custom ops in
``video3d_fast/ops/library.py`` call these methods with validated arguments and a :class:`Conv3dParams`.
Fast backends (C++ CPU/CUDA, Triton) subclass :class:`Backend` and override what they accelerate; any
piece they leave alone runs the ATen composite here, so a partial backend is still a correct one.

The explicit backward formulas below are the ones the kernels implement; they are tested against the
autograd of ``reference.py``.

Conventions shared by all backends:
* outputs and ``grad_input`` follow ``memory_format_of(input)``; ``grad_weight`` follows the weight's;
* the epilogue and all reductions run in ``opmath_dtype`` (fp32, fp64 for fp64 data);
* gradients nobody asked for (``mask`` False) are returned as ``None``.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..params import Conv3dParams, memory_format_of
from ..reference import opmath_dtype, per_channel

OptTensor = Optional[torch.Tensor]
REDUCE_DIMS = (0, 2, 3, 4)


def conv_args(p: Conv3dParams):
    """aten.convolution's (stride, padding, dilation, transposed, output_padding, groups)."""
    return list(p.stride), list(p.padding), list(p.dilation), False, [0, 0, 0], p.groups


class RunningStats(NamedTuple):
    """BatchNorm running statistics to update in place after a training-form forward:
    ``mean = lerp(mean, batch_mean, factor)``, ``var = lerp(var, unbiased batch_var, factor)``."""

    mean: torch.Tensor
    var: torch.Tensor
    factor: float


def update_running_stats(running: RunningStats, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """nn.BatchNorm's running update from the batch mean and biased variance over ``count`` values."""
    with torch.no_grad():
        running.mean.lerp_(mean.detach().to(running.mean.dtype), running.factor)
        unbiased = var.detach() * (count / (count - 1))
        running.var.lerp_(unbiased.to(running.var.dtype), running.factor)


def like_input(t: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=memory_format_of(input))


def relu_mask(grad: torch.Tensor, out: torch.Tensor, relu: bool) -> torch.Tensor:
    """dL/dz for z the pre-activation, in opmath."""
    g = grad.to(opmath_dtype(grad.dtype))
    return g * (out > 0) if relu else g


class Backend:
    """ATen composite implementation; the base class of every backend."""

    name = "aten"

    def batchnorm_act_rebuilder(self, x: torch.Tensor, mean: torch.Tensor, relu: bool):
        """``rebuild(conv_out) -> out`` reproducing, bit for bit, the output of the ``batchnorm_act_forward``
        call (without residual) that returned ``mean``; None when this backend cannot promise that. Lets the
        op layer keep the conv output instead of the output (see library._OutputRecipe)."""
        return None

    def fuses_running_stats(self, x: torch.Tensor, running: RunningStats) -> bool:
        """Whether ``batchnorm_act_forward(..., running=running)`` updates the running statistics itself
        (inside its kernels); otherwise the caller applies :func:`update_running_stats`."""
        return False

    # --- availability -------------------------------------------------------------------------
    def unavailable_reason(self) -> Optional[str]:
        """None when usable on this machine, else a sentence saying why not."""
        return None

    def device_reason(self, device: torch.device) -> Optional[str]:
        """None when this backend can run on ``device``, else why not."""
        return None

    # --- plain / grouped conv -----------------------------------------------------------------
    def conv3d_forward(self, x: torch.Tensor, w: torch.Tensor, bias: OptTensor, p: Conv3dParams) -> torch.Tensor:
        y = torch.ops.aten.convolution(x, w, bias, *conv_args(p))
        return like_input(y, x)

    def conv3d_backward(
        self, grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor, p: Conv3dParams, mask: Sequence[bool]
    ) -> Tuple[OptTensor, OptTensor, OptTensor]:
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, w, [p.out_channels] if mask[2] else None, *conv_args(p), list(mask)
        )
        gx = like_input(gx, x) if mask[0] else None
        gw = gw.contiguous(memory_format=memory_format_of(w)) if mask[1] else None
        return gx, gw, (gb if mask[2] else None)

    # --- inference form: act(conv * scale + shift [+ residual]) --------------------------------
    def affine_act_forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
        residual: OptTensor,
        p: Conv3dParams,
        relu: bool,
        save_conv_out: bool,
    ) -> Tuple[torch.Tensor, OptTensor]:
        c = self.conv3d_forward(x, w, None, p)
        acc = opmath_dtype(x.dtype)
        z = c.to(acc) * per_channel(scale.to(acc)) + per_channel(shift.to(acc))
        if residual is not None:
            z = z + residual.to(acc)
        if relu:
            z = torch.relu(z)
        return like_input(z.to(x.dtype), x), (c if save_conv_out else None)

    def affine_act_runner(self, p: Conv3dParams, relu: bool):
        """``run(x, w, scale, shift, residual) -> out`` for repeated no-grad calls of one validated problem
        (eager inference): a backend may bind its kernel and arguments once."""
        def run(x, w, scale, shift, residual):
            return self.affine_act_forward(x, w, scale, shift, residual, p, relu, False)[0]
        return run

    def affine_act_backward(
        self,
        grad: torch.Tensor,
        out: torch.Tensor,
        conv_out: OptTensor,
        x: torch.Tensor,
        w: torch.Tensor,
        scale: torch.Tensor,
        p: Conv3dParams,
        relu: bool,
        mask: Sequence[bool],
    ) -> List[OptTensor]:
        """mask/returns: (input, weight, scale, shift, residual)."""
        gz = relu_mask(grad, out, relu)
        g_scale = g_shift = g_res = None
        if mask[2]:
            if conv_out is None:
                raise RuntimeError("grad of scale needs the saved conv output (save_conv_out=True)")
            g_scale = (gz * conv_out.to(gz.dtype)).sum(REDUCE_DIMS).to(scale.dtype)
        if mask[3]:
            g_shift = gz.sum(REDUCE_DIMS).to(scale.dtype)
        if mask[4]:
            g_res = like_input(gz.to(x.dtype), x)
        gx = gw = None
        if mask[0] or mask[1]:
            gc = (gz * per_channel(scale.to(gz.dtype))).to(x.dtype)
            gx, gw, _ = self.conv3d_backward(gc, x, w, p, (mask[0], mask[1], False))
        return [gx, gw, g_scale, g_shift, g_res]

    # --- training form: act(batchnorm_train(conv) [+ residual]) --------------------------------
    def batchnorm_act_forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        residual: OptTensor,
        p: Conv3dParams,
        eps: float,
        relu: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (out, conv_out, mean, biased var); mean/var in opmath dtype."""
        c = self.conv3d_forward(x, w, None, p)
        acc = opmath_dtype(x.dtype)
        var, mean = torch.var_mean(c.to(acc), dim=REDUCE_DIMS, correction=0)
        a = gamma.to(acc) * torch.rsqrt(var + eps)
        b = beta.to(acc) - mean * a
        z = c.to(acc) * per_channel(a) + per_channel(b)
        if residual is not None:
            z = z + residual.to(acc)
        if relu:
            z = torch.relu(z)
        return like_input(z.to(x.dtype), x), c, mean, var

    def batchnorm_act_backward(
        self,
        grad: torch.Tensor,
        out: torch.Tensor,
        conv_out: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
        x: torch.Tensor,
        w: torch.Tensor,
        gamma: torch.Tensor,
        p: Conv3dParams,
        eps: float,
        relu: bool,
        mask: Sequence[bool],
    ) -> List[OptTensor]:
        """mask/returns: (input, weight, bn_weight, bn_bias, residual)."""
        gz = relu_mask(grad, out, relu)
        acc = gz.dtype
        invstd = torch.rsqrt(var.to(acc) + eps)
        xhat = (conv_out.to(acc) - per_channel(mean.to(acc))) * per_channel(invstd)
        sum_g = gz.sum(REDUCE_DIMS)
        sum_gx = (gz * xhat).sum(REDUCE_DIMS)
        g_gamma = sum_gx.to(gamma.dtype) if mask[2] else None
        g_beta = sum_g.to(gamma.dtype) if mask[3] else None
        g_res = like_input(gz.to(x.dtype), x) if mask[4] else None
        gx = gw = None
        if mask[0] or mask[1]:
            count = conv_out.numel() // conv_out.shape[1]
            k = gamma.to(acc) * invstd
            gc = per_channel(k) * (gz - per_channel(sum_g / count) - xhat * per_channel(sum_gx / count))
            gx, gw, _ = self.conv3d_backward(gc.to(x.dtype), x, w, p, (mask[0], mask[1], False))
        return [gx, gw, g_gamma, g_beta, g_res]
