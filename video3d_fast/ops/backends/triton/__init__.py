"""Backend "triton": implicit-GEMM 3D convolution kernels written in Triton, with BatchNorm, residual
and ReLU fused around them, forward and backward.

Kernel families, one file each (every file's top comment states its conv -> GEMM mapping):

* ``conv3d_fwd.py``  forward conv, dense and grouped, fused epilogue: scale/shift (conv bias or
  folded eval BN), residual, ReLU; or, for the training form, the pre-BN output plus per-tile BN
  statistics partials;
* ``conv3d_dgrad.py`` input gradient, stride phases decomposed (no wasted MMAs at stride 2);
* ``conv3d_wgrad.py`` weight gradient, split-K over N*Do*Ho*Wo with fp32 partials;
* ``grouped.py``     the block-diagonal group tiling all three share (several groups per tile);
* ``bn.py``          BN finalize, BN-apply + residual + ReLU, backward reductions with dReLU, and the
  gradient prologue (BN backward / affine scale, dReLU) feeding dgrad and wgrad;
* ``autotune.py``    tile configurations, heuristic by default, opt-in cached autotuning.

Kernels run on CUDA tensors, and on CPU tensors through Triton's interpreter when TRITON_INTERPRET=1
is set before this backend's kernels are first used (Triton fixes the mode when a kernel is defined,
so the kernel modules are imported lazily, on the first call).

What runs the inherited ATen composite instead: float64 data (every method; Triton's fp64 dot is
not part of this backend's tested surface). Everything else -- fp16, bf16, fp32 (TF32 when
``torch.backends.cudnn.allow_tf32``), any stride/padding/dilation/groups, any layout -- runs the
kernels here, with one measured exception: the weight gradient of a narrow-channel stem (C = 3) on a
GPU goes to cuDNN (H200, bf16, ResNeXt-101 stem at batch 8: cuDNN 1.32 ms, our best tiling 3.24 ms).
``VIDEO3D_FAST_TRITON_STEM_WGRAD=triton`` keeps it on the Triton kernel.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import torch

from ...params import memory_format_of
from ..base import Backend

_KERNEL_MODULE = __name__ + ".common"


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _uses_kernels(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16, torch.float32)


class _Kernels:
    """The kernel modules, imported on first use (see the module docstring: TRITON_INTERPRET must be set
    before they are defined) and then read as attributes: a ``from .x import y`` statement inside a method
    costs ~1-2 us of host time per call."""

    def __getattr__(self, name: str):
        from . import bn, conv3d_dgrad, conv3d_fwd, conv3d_wgrad

        for module in (bn, conv3d_dgrad, conv3d_fwd, conv3d_wgrad):
            setattr(self, module.__name__.rsplit(".", 1)[1], module)
        return object.__getattribute__(self, name)


_k = _Kernels()


def _stem_wgrad_on_cudnn(x: torch.Tensor, p) -> bool:
    """The C=3 stem's weight gradient on a GPU: cuDNN was 2.5x faster than our best tiling on the H200
    (before the kernel ran on four-channel rows: benchmarks/notes_triton.md, session 6, says when to switch)."""
    return (x.is_cuda and p.groups == 1 and p.in_channels_per_group < 16
            and os.environ.get("VIDEO3D_FAST_TRITON_STEM_WGRAD", "cudnn") != "triton")


def _wgrad(gc: torch.Tensor, x: torch.Tensor, w: torch.Tensor, p) -> torch.Tensor:
    """dL/dw in w's dtype and memory format."""
    if _stem_wgrad_on_cudnn(x, p):
        gw = torch.ops.aten.convolution_backward(
            gc, x, w, None, list(p.stride), list(p.padding), list(p.dilation), False, [0, 0, 0], p.groups,
            [False, True, False])[1]
        return gw.contiguous(memory_format=memory_format_of(w))
    return _k.conv3d_wgrad.conv3d_wgrad(gc, x, w, p)


class TritonBackend(Backend):
    """The ``triton`` backend (see the module docstring for what each method launches)."""

    name = "triton"

    # --- availability -------------------------------------------------------------------------
    def unavailable_reason(self) -> Optional[str]:
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            return f"triton is not installed ({exc})"
        if torch.cuda.is_available() or _interpret_requested():
            return None
        return "no CUDA device is visible to torch and TRITON_INTERPRET=1 is not set"

    def device_reason(self, device: torch.device) -> Optional[str]:
        kernels = sys.modules.get(_KERNEL_MODULE)
        if device.type == "cuda":
            if kernels is not None and kernels.INTERPRETED:
                return "the Triton kernels were defined under TRITON_INTERPRET=1 and only run on CPU tensors"
            return None
        if device.type == "cpu":
            if not _interpret_requested():
                return "Triton runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
            if kernels is not None and not kernels.INTERPRETED:
                return ("TRITON_INTERPRET=1 was set after the Triton kernels were defined; set it before "
                        "the first triton-backend call")
            return None
        return f"the triton backend runs on cuda tensors (cpu under TRITON_INTERPRET=1), got {device.type}"

    # --- plain / grouped conv -----------------------------------------------------------------
    def conv3d_forward(self, x, w, bias, p):
        if not _uses_kernels(x):
            return super().conv3d_forward(x, w, bias, p)
        return _k.conv3d_fwd.conv3d_fwd(x, w, p, shift=None if bias is None else bias.contiguous()).out

    def conv3d_backward(self, grad, x, w, p, mask):
        if not _uses_kernels(x):
            return super().conv3d_backward(grad, x, w, p, mask)
        gx = _k.conv3d_dgrad.conv3d_dgrad(grad, w, p, memory_format_of(x)) if mask[0] else None
        gw = _wgrad(grad, x, w, p) if mask[1] else None
        gb = _k.bn.grad_sums(grad, None, False)[0].to(grad.dtype) if mask[2] else None
        return gx, gw, gb

    # --- inference form -----------------------------------------------------------------------
    def affine_act_forward(self, x, w, scale, shift, residual, p, relu, save_conv_out):
        if not _uses_kernels(x):
            return super().affine_act_forward(x, w, scale, shift, residual, p, relu, save_conv_out)
        r = _k.conv3d_fwd.conv3d_fwd(x, w, p, scale=scale.contiguous(), shift=shift.contiguous(),
                                     residual=residual, relu=relu, store_conv=save_conv_out)
        return r.out, r.conv

    def affine_act_backward(self, grad, out, conv_out, x, w, scale, p, relu, mask):
        if not _uses_kernels(x):
            return super().affine_act_backward(grad, out, conv_out, x, w, scale, p, relu, mask)
        grad_prologue, grad_sums = _k.bn.grad_prologue, _k.bn.grad_sums
        g_scale = g_shift = g_res = None
        if mask[2] and conv_out is None:
            raise RuntimeError("grad of scale needs the saved conv output (save_conv_out=True)")
        if mask[2] or mask[3]:
            sum_g, sum_gc = grad_sums(grad, out, relu, c=conv_out if mask[2] else None)
            g_scale = sum_gc.to(scale.dtype) if mask[2] else None
            g_shift = sum_g.to(scale.dtype) if mask[3] else None
        gc = None
        if mask[0] or mask[1] or mask[4]:
            gc, g_res = grad_prologue(grad, out, relu, scale.contiguous(), store_gc=bool(mask[0] or mask[1]),
                                      gz_format=memory_format_of(x) if mask[4] else None)
        gx, gw = self._conv_grads(gc, x, w, p, mask)
        return [gx, gw, g_scale, g_shift, g_res]

    # --- training form ------------------------------------------------------------------------
    def fuses_running_stats(self, x, running):
        # the finalize step updates fp32, dense buffers in fp32; other dtypes keep torch's lerp_
        mean, var = running.mean, running.var
        return (_uses_kernels(x) and mean.dtype == torch.float32 and var.dtype == torch.float32
                and mean.is_contiguous() and var.is_contiguous())

    def batchnorm_act_forward(self, x, w, gamma, beta, residual, p, eps, relu, running=None):
        if not _uses_kernels(x):
            return super().batchnorm_act_forward(x, w, gamma, beta, residual, p, eps, relu)
        r = _k.conv3d_fwd.conv3d_fwd(x, w, p, store_out=False, store_conv=True, stats=True)
        out, stats = _k.bn.bn_forward(r, p.gemm_m, gamma.contiguous(), beta.contiguous(), residual, relu, eps,
                                      memory_format_of(x), running)
        return out, r.conv, stats[0], stats[1]

    def batchnorm_act_rebuilder(self, x, mean, relu):
        # batchnorm_act_forward returns mean as row 0 of its (4, K) statistics buffer, whose rows 2-3 hold
        # the (a, b) BN-apply used: the same kernel on the same values gives the same bits
        stats = mean._base
        if not _uses_kernels(x) or stats is None or tuple(stats.shape) != (4, mean.numel()):
            return None
        apply, fmt = _k.bn.channel_affine_act, memory_format_of(x)
        return lambda conv_out: apply(conv_out, stats, None, relu, fmt)

    def batchnorm_act_backward(self, grad, out, conv_out, mean, var, x, w, gamma, p, eps, relu, mask):
        if not _uses_kernels(x):
            return super().batchnorm_act_backward(grad, out, conv_out, mean, var, x, w, gamma, p, eps, relu, mask)
        need_gc = bool(mask[0] or mask[1])
        sums, gc, g_res = _k.bn.bn_backward(grad, out, relu, conv_out, mean.float().contiguous(),
                                            var.float().contiguous(), gamma.contiguous(), eps, store_gc=need_gc,
                                            gz_format=memory_format_of(x) if mask[4] else None,
                                            need_sums=bool(mask[2] or mask[3]))
        g_gamma = sums[1].to(gamma.dtype) if mask[2] else None
        g_beta = sums[0].to(gamma.dtype) if mask[3] else None
        gx, gw = self._conv_grads(gc, x, w, p, mask)
        return [gx, gw, g_gamma, g_beta, g_res]

    # --- shared -------------------------------------------------------------------------------
    @staticmethod
    def _conv_grads(gc, x, w, p, mask):
        """(grad_input, grad_weight) of the conv from the conv-output gradient ``gc``."""
        gx = _k.conv3d_dgrad.conv3d_dgrad(gc, w, p, memory_format_of(x)) if mask[0] else None
        gw = _wgrad(gc, x, w, p) if mask[1] else None
        return gx, gw
