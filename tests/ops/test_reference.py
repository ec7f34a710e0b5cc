"""The pure-PyTorch reference equals the modules each op replaces: nn.Conv3d, nn.BatchNorm3d, nn.ReLU."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from video3d_fast.ops import fold_batchnorm, reference

from .helpers import ConvProblem, assert_close, leaf


def _modules(p: ConvProblem, bn_kwargs=None):
    torch.manual_seed(0)
    conv = nn.Conv3d(p.c, p.k, p.kernel, p.stride, p.padding, p.dilation, p.groups, bias=False).double()
    bn = nn.BatchNorm3d(p.k, **(bn_kwargs or {})).double()
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
        if bn.running_mean is not None:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return conv, bn


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
def test_reference_affine_act_matches_conv_bn_eval_relu(residual, groups):
    p = ConvProblem(c=8, k=8, groups=groups, stride=(1, 2, 1), dtype=torch.float64, residual=residual)
    conv, bn = _modules(p)
    bn.eval()
    x, _, _, _, res = p.make(torch.Generator().manual_seed(1))
    expected = bn(conv(x))
    if res is not None:
        expected = expected + res
    expected = torch.relu(expected)
    scale, shift = fold_batchnorm(bn)
    out = reference.conv3d_affine_act(x, conv.weight, scale, shift, res, **p.conv_kwargs)
    assert_close(out, expected, torch.float64, "affine form vs modules")


@pytest.mark.parametrize(
    "bn_kwargs",
    [{}, {"momentum": None}, {"momentum": 0.3, "eps": 1e-3}, {"affine": False}, {"track_running_stats": False}],
    ids=["default", "cumulative", "momentum0.3", "no-affine", "untracked"],
)
@pytest.mark.parametrize("residual", [False, True])
def test_reference_batchnorm_act_matches_modules_in_training(bn_kwargs, residual):
    p = ConvProblem(c=6, k=10, size=(4, 5, 6), dtype=torch.float64, residual=residual, groups=2)
    conv, bn = _modules(p, bn_kwargs)
    bn.train()
    conv_ref, bn_ref = _modules(p, bn_kwargs)
    bn_ref.train()
    gen = torch.Generator().manual_seed(2)
    for step in range(3):  # several steps: running stats and num_batches_tracked evolve
        x, _, _, _, res = p.make(gen)
        x_mod, x_ref = leaf(x), leaf(x)
        r_mod, r_ref = leaf(res), leaf(res)
        y_mod = bn(conv(x_mod))
        if r_mod is not None:
            y_mod = y_mod + r_mod
        y_mod = torch.relu(y_mod)
        y_ref = reference.conv3d_batchnorm_act(
            x_ref, conv_ref.weight, bn_ref.weight, bn_ref.bias, bn_ref.running_mean, bn_ref.running_var,
            bn_ref.num_batches_tracked, r_ref, momentum=bn_ref.momentum, eps=bn_ref.eps, **p.conv_kwargs,
        )
        assert_close(y_ref, y_mod, torch.float64, f"step {step} output")
        grad = torch.randn(y_mod.shape, generator=gen, dtype=torch.float64)
        y_mod.backward(grad)
        y_ref.backward(grad)
        assert_close(x_ref.grad, x_mod.grad, torch.float64, "grad input")
        if r_mod is not None:
            assert_close(r_ref.grad, r_mod.grad, torch.float64, "grad residual")
    assert_close(conv_ref.weight.grad, conv.weight.grad, torch.float64, "grad weight")
    if bn.weight is not None:
        assert_close(bn_ref.weight.grad, bn.weight.grad, torch.float64, "grad bn weight")
        assert_close(bn_ref.bias.grad, bn.bias.grad, torch.float64, "grad bn bias")
    if bn.running_mean is not None:
        assert_close(bn_ref.running_mean, bn.running_mean, torch.float64, "running_mean")
        assert_close(bn_ref.running_var, bn.running_var, torch.float64, "running_var")
        assert int(bn_ref.num_batches_tracked) == int(bn.num_batches_tracked) == 3


def test_fold_batchnorm_includes_conv_bias_and_is_differentiable():
    bn = nn.BatchNorm3d(5).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    bias = torch.randn(5, dtype=torch.float64)
    c = torch.randn(2, 5, 3, 3, 3, dtype=torch.float64)
    scale, shift = fold_batchnorm(bn, conv_bias=bias)
    expected = bn(c + bias.view(1, -1, 1, 1, 1))
    got = c * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1)
    assert_close(got, expected, torch.float64, "folded affine")
    scale.sum().backward()
    assert bn.weight.grad is not None and bn.running_var.grad is None


def test_reference_conv3d_is_f_conv3d_for_grouped_dilated_input():
    p = ConvProblem(c=8, k=16, groups=8, dilation=(2, 1, 2), padding=(2, 1, 0), dtype=torch.float64)
    x, w, *_ = p.make(torch.Generator().manual_seed(3))
    expected = torch.nn.functional.conv3d(x, w, None, p.stride, p.padding, p.dilation, p.groups)
    assert_close(reference.conv3d(x, w, None, **p.conv_kwargs), expected, torch.float64, "conv3d")
