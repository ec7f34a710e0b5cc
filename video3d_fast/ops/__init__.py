"""video3d_fast.ops: fused 3D-conv ops with interchangeable backends.

    from video3d_fast import ops
    y = ops.conv3d_affine_act(x, w, scale, shift, residual=r, padding=1)        # inference form
    y = ops.conv3d_batchnorm_act(x, w, bn.weight, bn.bias, bn.running_mean,      # training form
                                 bn.running_var, bn.num_batches_tracked, padding=1)
    y = ops.conv3d(x, w, groups=32, padding=1)                                   # plain / grouped
    with ops.recompute_conv_outputs():  # less activation memory: backward recomputes each conv output
        loss = model(clips).sum()                                               # (training form only)
    ops.available_backends()   # {"torch": ..., "triton": ..., "cuda": ..., "cpu": ...} with reasons

Every op takes ``backend=`` ("auto", "torch", "triton", "cuda", "cpu").
"""
from . import library  # noqa: F401  (registers the custom ops)
from .backends import BACKENDS, BackendStatus, available_backends, resolve_backend
from .functional import (
    conv3d,
    conv3d_affine_act,
    conv3d_batchnorm_act,
    fold_batchnorm,
    recompute_conv_outputs,
    recomputing_conv_outputs,
)
from .params import Conv3dParams, make_params

__all__ = [
    "BACKENDS",
    "BackendStatus",
    "Conv3dParams",
    "available_backends",
    "conv3d",
    "conv3d_affine_act",
    "conv3d_batchnorm_act",
    "fold_batchnorm",
    "make_params",
    "recompute_conv_outputs",
    "recomputing_conv_outputs",
    "resolve_backend",
]
