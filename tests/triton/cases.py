"""Problems and checks shared by the interpreter tests and the GPU tests of the Triton backend.

Every problem class of the kernels appears here once: tap-aligned dense conv, the flattened-K stem
(C=3), strides with dilation (dgrad phases), 1x1x1 downsampling, ResNeXt block-diagonal groups,
depthwise, odd group sizes (partial group blocks), groups wider than a tile. The GPU tests run the same
checks at real layer sizes.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import pytest
import torch

from tests.ops.helpers import ConvProblem, assert_close, leaf
from video3d_fast import ops
from video3d_fast.ops import reference
from video3d_fast.ops.debug import poison_outputs
from video3d_fast.ops.params import memory_format_of

# Small enough for the interpreter (a few hundred output rows), each with >= 2 row tiles.
SMALL: Dict[str, ConvProblem] = {
    "dense3x3x3": ConvProblem(n=2, c=16, k=16, size=(3, 5, 6)),
    "stem_c3": ConvProblem(n=1, c=3, k=16, size=(3, 8, 8), kernel=(3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)),
    "stride2_dilated": ConvProblem(n=2, c=8, k=12, size=(5, 6, 7), stride=(2, 2, 2), dilation=(1, 2, 1),
                                   padding=(1, 2, 1)),
    "downsample1x1": ConvProblem(n=2, c=16, k=32, size=(4, 6, 6), kernel=(1, 1, 1), stride=(2, 2, 2),
                                 padding=(0, 0, 0)),
    "resnext_g8": ConvProblem(n=2, c=32, k=32, size=(3, 4, 5), groups=8),
    "depthwise": ConvProblem(n=2, c=16, k=16, size=(3, 6, 6), groups=16, stride=(1, 2, 2)),
    "odd_groups": ConvProblem(n=2, c=6, k=9, size=(3, 5, 4), kernel=(2, 3, 1), padding=(0, 1, 1), groups=3),
    "wide_groups": ConvProblem(n=1, c=8, k=160, size=(3, 4, 5), kernel=(1, 1, 1), padding=(0, 0, 0), groups=2),
}

# Real layer shapes (3D ResNet-50 / ResNeXt-101 at 16x112x112, small batch) for the GPU tests.
LARGE: Dict[str, ConvProblem] = {
    "r50_stem": ConvProblem(n=1, c=3, k=64, size=(16, 112, 112), kernel=(7, 7, 7), stride=(1, 2, 2),
                            padding=(3, 3, 3)),
    "r50_l1_conv2": ConvProblem(n=2, c=64, k=64, size=(8, 28, 28)),
    "r50_l1_conv3_res": ConvProblem(n=2, c=64, k=256, size=(8, 28, 28), kernel=(1, 1, 1), padding=(0, 0, 0),
                                    residual=True),
    "r50_l2_conv2_s2": ConvProblem(n=2, c=128, k=128, size=(8, 28, 28), stride=(2, 2, 2)),
    "r50_l2_down": ConvProblem(n=2, c=256, k=512, size=(8, 28, 28), kernel=(1, 1, 1), stride=(2, 2, 2),
                               padding=(0, 0, 0)),
    "r50_l4_conv2": ConvProblem(n=2, c=512, k=512, size=(2, 4, 4)),
    "rx101_l1_grouped": ConvProblem(n=2, c=128, k=128, size=(8, 28, 28), groups=32),
    "rx101_l2_grouped_s2": ConvProblem(n=2, c=256, k=256, size=(8, 28, 28), groups=32, stride=(2, 2, 2)),
    "rx101_l3_grouped": ConvProblem(n=2, c=512, k=512, size=(2, 7, 7), groups=32),
    "rx101_l4_grouped": ConvProblem(n=2, c=1024, k=1024, size=(1, 4, 4), groups=32),
    "depthwise64": ConvProblem(n=2, c=64, k=64, size=(8, 28, 28), groups=64),
}

# ‖ours - ref‖/‖ref‖ factors over tests.ops.helpers.REL_TOL. Gradients: both sides round the conv
# backward operand once, in different orders; BN backward subtracts nearly equal means.
OUT_FACTOR = 2.0
GRAD_FACTOR = {torch.float64: 10.0, torch.float32: 10.0, torch.float16: 5.0, torch.bfloat16: 3.0}
BN_GRAD_FACTOR = {torch.float64: 10.0, torch.float32: 50.0, torch.float16: 8.0, torch.bfloat16: 4.0}


def variant(p: ConvProblem, **changes) -> ConvProblem:
    return dataclasses.replace(p, **changes)


def check_conv3d(p: ConvProblem, seed: int, device: str = "cpu", bias: bool = True, backward: bool = True):
    """ops.conv3d(backend="triton") vs reference.conv3d: value, layout, and grads of input/weight/bias."""
    x, w, _, shift, _ = p.make(torch.Generator().manual_seed(seed), device=device)
    b = shift.to(p.dtype) if bias else None
    ours = [leaf(t) for t in (x, w, b)]
    refs = [leaf(t) for t in (x, w, b)]
    with poison_outputs():
        y = ops.conv3d(*ours, backend="triton", **p.conv_kwargs)
    y_ref = reference.conv3d(*refs, **p.conv_kwargs)
    assert y.is_contiguous(memory_format=memory_format_of(x))
    assert_close(y, y_ref, p.dtype, "output", OUT_FACTOR)
    if not backward:
        return
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grad = grad.to(device=device, dtype=p.dtype)
    with poison_outputs():
        y.backward(grad)
    y_ref.backward(grad)
    for name, a, r in zip(("input", "weight", "bias"), ours, refs):
        if a is not None:
            assert a.grad.is_contiguous(memory_format=memory_format_of(a))
            assert_close(a.grad, r.grad, p.dtype, f"grad {name}", GRAD_FACTOR[p.dtype])


def check_affine_act(p: ConvProblem, relu: bool, seed: int, device: str = "cpu", backward: bool = True,
                     train_scale: bool = True):
    """Inference form: value, layout, and grads of input, weight, scale, shift, residual."""
    x, w, scale, shift, res = p.make(torch.Generator().manual_seed(seed), device=device)
    act = "relu" if relu else "none"
    ours = [leaf(t) for t in (x, w, scale, shift, res)]
    refs = [leaf(t) for t in (x, w, scale, shift, res)]
    if not train_scale:  # frozen BN: no conv output is saved for d/d scale
        ours[2].requires_grad_(False)
        refs[2].requires_grad_(False)
    with poison_outputs():
        y = ops.conv3d_affine_act(*ours, activation=act, backend="triton", **p.conv_kwargs)
    y_ref = reference.conv3d_affine_act(*refs, activation=act, **p.conv_kwargs)
    assert y.is_contiguous(memory_format=memory_format_of(x))
    assert_close(y, y_ref, p.dtype, "output", OUT_FACTOR)
    if not backward:
        return
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grad = grad.to(device=device, dtype=p.dtype)
    with poison_outputs():
        y.backward(grad)
    y_ref.backward(grad)
    for name, a, b in zip(("input", "weight", "scale", "shift", "residual"), ours, refs):
        if a is not None and a.requires_grad:
            assert_close(a.grad, b.grad, p.dtype, f"grad {name}", GRAD_FACTOR[p.dtype])


def check_batchnorm_act(p: ConvProblem, relu: bool, seed: int, device: str = "cpu", backward: bool = True,
                        momentum: Optional[float] = 0.1):
    """Training form: value, running statistics, num_batches_tracked, and all five gradients."""
    gen = torch.Generator().manual_seed(seed)
    x, w, gamma, beta, res = p.make(gen, device=device)
    running = [torch.randn(p.k, generator=gen, dtype=torch.float64).float().to(device),
               (torch.rand(p.k, generator=gen, dtype=torch.float64) + 0.5).float().to(device)]
    running_ref = [t.clone() for t in running]
    nbt, nbt_ref = torch.tensor(2, device=device), torch.tensor(2, device=device)
    act = "relu" if relu else "none"
    ours = [leaf(t) for t in (x, w, gamma, beta, res)]
    refs = [leaf(t) for t in (x, w, gamma, beta, res)]
    with poison_outputs():
        y = ops.conv3d_batchnorm_act(ours[0], ours[1], ours[2], ours[3], *running, nbt, ours[4],
                                     momentum=momentum, activation=act, backend="triton", **p.conv_kwargs)
    y_ref = reference.conv3d_batchnorm_act(refs[0], refs[1], refs[2], refs[3], *running_ref, nbt_ref, refs[4],
                                           momentum=momentum, activation=act, **p.conv_kwargs)
    assert y.is_contiguous(memory_format=memory_format_of(x))
    assert_close(y, y_ref, p.dtype, "output", OUT_FACTOR)
    assert int(nbt) == int(nbt_ref) == 3
    for a, b, what in zip(running, running_ref, ("running_mean", "running_var")):
        assert_close(a, b, torch.float32, what, 50.0)  # fp32 stats of rounded conv outputs, summed differently
    if not backward:
        return
    grad = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=p.dtype)
    with poison_outputs():
        y.backward(grad)
    y_ref.backward(grad)
    for name, a, b in zip(("input", "weight", "bn_weight", "bn_bias", "residual"), ours, refs):
        if a is not None:
            assert_close(a.grad, b.grad, p.dtype, f"grad {name}", BN_GRAD_FACTOR[p.dtype])


@dataclasses.dataclass
class LauncherRun:
    """One launcher ("fwd", "dgrad", "wgrad") on one problem: the GPU heuristic's candidate list, a launch
    with a given config, the float64 ATen result it must match and the tolerance factor over REL_TOL."""
    candidates: list
    run: object
    expected: torch.Tensor
    factor: float


@dataclasses.dataclass
class Launchers:
    params: object  # Conv3dParams
    input_format: torch.memory_format
    weight_format: torch.memory_format
    by_op: Dict[str, LauncherRun]


def launcher_runs(p: ConvProblem, seed: int, device: str = "cpu", sm_count: int = 132) -> Launchers:
    """fprop, dgrad and wgrad of ``p`` on fresh random data, with the candidate lists a GPU of ``sm_count``
    SMs gets (autotune.launcher_candidates) whatever the device."""
    from video3d_fast.ops.backends.triton import autotune, conv3d_dgrad, conv3d_fwd, conv3d_wgrad

    x, w, _, _, _ = p.make(torch.Generator().manual_seed(seed), device=device)
    params = ops.make_params(x, w, **p.conv_kwargs)
    dy = torch.randn(params.out_shape, generator=torch.Generator().manual_seed(seed + 1)).to(device, p.dtype)
    dy = dy.contiguous(memory_format=torch.channels_last_3d)
    ref = torch.nn.functional.conv3d(x.double(), w.double(), None, **p.conv_kwargs)
    gx_ref, gw_ref = torch.ops.aten.convolution_backward(
        dy.double(), x.double(), w.double(), None, list(params.stride), list(params.padding),
        list(params.dilation), False, [0, 0, 0], params.groups, [True, True, False])[:2]
    with pytest.MonkeyPatch.context() as gpu:  # the GPU's candidate lists; the kernels run where x is
        gpu.setattr(autotune, "INTERPRETED", False)
        gpu.setattr(autotune, "_sm_count", lambda device: sm_count)
        lists = {op: autotune.launcher_candidates(op, params, p.dtype, x.device) for op in ("fwd", "dgrad", "wgrad")}
    fmt = memory_format_of(x)
    return Launchers(params, fmt, memory_format_of(w), {
        "fwd": LauncherRun(lists["fwd"], lambda c: conv3d_fwd.conv3d_fwd(x, w, params, config=c).out, ref,
                           OUT_FACTOR),
        "dgrad": LauncherRun(lists["dgrad"], lambda c: conv3d_dgrad.conv3d_dgrad(dy, w, params, fmt, config=c),
                             gx_ref, GRAD_FACTOR[p.dtype]),
        "wgrad": LauncherRun(lists["wgrad"], lambda c: conv3d_wgrad.conv3d_wgrad(dy, x, w, params, config=c),
                             gw_ref, GRAD_FACTOR[p.dtype]),
    })


def check_candidate_loops(p: ConvProblem, seed: int, device: str = "cpu", sm_count: int = 132) -> int:
    """The loop kinds that only autotuning reaches (TAP_RUNS steps, unpipelined L1 tiles) on ``p``: for
    fprop, dgrad and wgrad, the first candidate taking TAP_RUNS and the first with num_stages=1, as the GPU
    heuristic lists them (``sm_count`` SMs), against float64 ATen. Returns how many configurations ran."""
    from video3d_fast.ops.backends.triton import conv3d_dgrad, conv3d_fwd, conv3d_wgrad

    launchers = launcher_runs(p, seed, device, sm_count)
    params, dev = launchers.params, torch.device(device)
    plan_of = {
        "fwd": lambda c: conv3d_fwd._fwd_plan(params, c, torch.channels_last_3d, None, {}, dev).conv,
        "dgrad": lambda c: conv3d_dgrad._dgrad_plan(params, c, launchers.input_format, {}, dev),
        "wgrad": lambda c: conv3d_wgrad._wgrad_plan(params, c, launchers.weight_format, {}, dev),
    }
    ran = 0
    for op, r in launchers.by_op.items():
        picks = [next((c for c in r.candidates if c.split_k == 0 and plan_of[op](c).constexprs["TAP_RUNS"]), None),
                 next((c for c in r.candidates if c.num_stages == 1), None)]
        for cfg in dict.fromkeys(c for c in picks if c is not None):
            with poison_outputs():
                out = r.run(cfg)
            assert_close(out, r.expected, p.dtype, f"{op} {cfg}", r.factor)
            ran += 1
    return ran
