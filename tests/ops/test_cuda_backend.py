"""The "cuda" backend (cuDNN conv + our CUDA epilogue kernels) equals the reference on the GPU.

Runs only where CUDA is available (benchmarks/gpu_suite.sh on the H100). Reference values are computed
by reference.py on the same device in float64 where cuDNN allows, else in the test dtype.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from video3d_fast import ops
from video3d_fast.ops import reference
from video3d_fast.ops.debug import poison_outputs
from video3d_fast.ops.params import memory_format_of

from .helpers import ConvProblem, assert_close, leaf
from .test_backends_vs_reference import GRID, problems

pytestmark = pytest.mark.gpu
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _strict_fp32():
    """TF32 would make cuDNN's fp32 convs differ from the float64 reference by ~1e-3."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _check_affine(p: ConvProblem, relu: bool, seed: int):
    x, w, scale, shift, res = p.make(torch.Generator().manual_seed(seed), device="cuda")
    act = "relu" if relu else "none"
    ours = [leaf(t) for t in (x, w, scale, shift, res)]
    refs = [leaf(t) for t in (x, w, scale, shift, res)]
    with poison_outputs():
        y = ops.conv3d_affine_act(*ours, activation=act, backend="cuda", **p.conv_kwargs)
    y_ref = reference.conv3d_affine_act(*refs, activation=act, **p.conv_kwargs)
    assert y.is_contiguous(memory_format=memory_format_of(x))
    assert_close(y, y_ref, p.dtype, "output", 2.0)
    grad = torch.randn(y.shape, device="cuda", dtype=torch.float64).to(p.dtype)
    with poison_outputs():
        y.backward(grad)
    y_ref.backward(grad)
    for name, a, b in zip(("input", "weight", "scale", "shift", "residual"), ours, refs):
        if a is not None:
            assert_close(a.grad, b.grad, p.dtype, f"grad {name}", 10.0)


def _check_batchnorm(p: ConvProblem, relu: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x, w, gamma, beta, res = p.make(gen, device="cuda")
    stat = torch.float64 if p.dtype == torch.float64 else torch.float32
    running = [torch.randn(p.k, dtype=stat, device="cuda"), torch.rand(p.k, dtype=stat, device="cuda") + 0.5]
    running_ref = [t.clone() for t in running]
    act = "relu" if relu else "none"
    ours = [leaf(t) for t in (x, w, gamma, beta, res)]
    refs = [leaf(t) for t in (x, w, gamma, beta, res)]
    with poison_outputs():
        y = ops.conv3d_batchnorm_act(ours[0], ours[1], ours[2], ours[3], *running, None, ours[4],
                                     activation=act, backend="cuda", **p.conv_kwargs)
    y_ref = reference.conv3d_batchnorm_act(refs[0], refs[1], refs[2], refs[3], *running_ref, None, refs[4],
                                           activation=act, **p.conv_kwargs)
    assert_close(y, y_ref, p.dtype, "output", 2.0)
    for a, b, what in zip(running, running_ref, ("running_mean", "running_var")):
        assert_close(a, b, stat, what, 50.0)
    grad = torch.randn(y.shape, device="cuda", dtype=torch.float64).to(p.dtype)
    with poison_outputs():
        y.backward(grad)
    y_ref.backward(grad)
    factor = {torch.float64: 10.0, torch.float32: 50.0}.get(p.dtype, 5.0)
    for name, a, b in zip(("input", "weight", "bn_weight", "bn_bias", "residual"), ours, refs):
        if a is not None:
            assert_close(a.grad, b.grad, p.dtype, f"grad {name}", factor)


@pytest.fixture(scope="module", autouse=True)
def _need_cuda_backend():
    status = ops.available_backends()["cuda"]
    if not status.available:
        pytest.fail(f"cuda backend unavailable on a CUDA machine: {status.reason}")


@GRID
@given(p=problems(dtypes=DTYPES), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_cuda_affine_act_matches_reference_grid(p, relu, seed):
    _check_affine(p, relu, seed)


@GRID
@given(p=problems(dtypes=DTYPES), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_cuda_batchnorm_act_matches_reference_grid(p, relu, seed):
    if p.n * p.out_size()[0] * p.out_size()[1] * p.out_size()[2] < 4:  # see the CPU grid test
        return
    if (p.c // p.groups) * p.kernel[0] * p.kernel[1] * p.kernel[2] < 2:  # likewise
        return
    _check_batchnorm(p, relu, seed)


# Real layer shapes (batch 2): R3D stem, ResNet-50 bottleneck 1x1 with residual, ResNeXt grouped 3x3x3.
LAYERS = {
    "stem7x7x7": ConvProblem(n=2, c=3, k=64, size=(16, 56, 56), kernel=(7, 7, 7), stride=(1, 2, 2),
                             padding=(3, 3, 3)),
    "r50-1x1-res": ConvProblem(n=2, c=64, k=256, size=(8, 28, 28), kernel=(1, 1, 1), padding=(0, 0, 0),
                               residual=True),
    "rx101-grouped-s2": ConvProblem(n=2, c=256, k=256, size=(8, 28, 28), stride=(2, 2, 2), groups=32),
    "r18-layer4": ConvProblem(n=2, c=512, k=512, size=(1, 4, 4)),
}


@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(LAYERS))
def test_cuda_backend_on_real_layer_shapes(name, dtype, layout):
    base = LAYERS[name]
    p = ConvProblem(**{**base.__dict__, "dtype": dtype, "layout": layout})
    _check_affine(p, True, 0)
    _check_batchnorm(p, True, 1)
