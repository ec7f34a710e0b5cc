"""Backends "cpu" and "cuda": the C++ extension (csrc/), one class for both since the C++ ops dispatch
on the tensors' device. The convolution itself is ATen's (oneDNN / cuDNN); the fused epilogues,
BatchNorm statistics and BN+ReLU backward are our kernels (csrc/cpu/, csrc/conv3d/).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..._extension import KERNEL_NAMESPACE, load_extension
from .base import Backend


def _kernels():
    return getattr(torch.ops, KERNEL_NAMESPACE)


def _mask(mask) -> list:
    return [int(bool(m)) for m in mask]


class ExtensionBackend(Backend):
    def __init__(self, device_type: str):
        self.name = device_type
        self.device_type = device_type

    def unavailable_reason(self) -> Optional[str]:
        status = load_extension()
        if not status.loaded:
            return f"C++ extension not available: {status.reason}"
        if self.device_type == "cuda":
            if not status.cuda_compiled:
                return status.reason or "extension built without CUDA sources"
            if not torch.cuda.is_available():
                return "no CUDA device visible to torch"
        return None

    def device_reason(self, device: torch.device) -> Optional[str]:
        if device.type != self.device_type:
            return f"backend '{self.name}' runs on {self.device_type} tensors, got {device.type} tensors"
        return None

    def affine_act_forward(self, x, w, scale, shift, residual, p, relu, save_conv_out):
        out, conv_out = _kernels().affine_act_forward(
            x, w, scale, shift, residual, *p.as_conv_args(), relu, save_conv_out
        )
        return out, (conv_out if save_conv_out else None)

    def affine_act_runner(self, p, relu):
        op = _kernels().affine_act_forward.default
        stride, padding, dilation, groups = p.as_conv_args()

        def run(x, w, scale, shift, residual):
            return op(x, w, scale, shift, residual, stride, padding, dilation, groups, relu, False)[0]
        return run

    def affine_act_backward(self, grad, out, conv_out, x, w, scale, p, relu, mask):
        return list(_kernels().affine_act_backward(
            grad, out, conv_out, x, w, scale, *p.as_conv_args(), relu, _mask(mask)
        ))

    def batchnorm_act_forward(self, x, w, gamma, beta, residual, p, eps, relu):
        return tuple(_kernels().batchnorm_act_forward(x, w, gamma, beta, residual, *p.as_conv_args(), eps, relu))

    def batchnorm_act_backward(self, grad, out, conv_out, mean, var, x, w, gamma, p, eps, relu, mask):
        return list(_kernels().batchnorm_act_backward(
            grad, out, conv_out, mean, var, x, w, gamma, *p.as_conv_args(), eps, relu, _mask(mask)
        ))
