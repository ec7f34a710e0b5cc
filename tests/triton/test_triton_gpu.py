"""The ``triton`` backend on the GPU at real layer sizes (3D ResNet-50 / ResNeXt-101 at 16x112x112, small
batch): the same checks as the interpreter tests, compiled kernels, bf16 for real (the interpreter can
only test bf16 through its fp32-upcast dot), fp16, fp32 with and without TF32.

Kept to a few shapes per problem class: every distinct kernel specialisation costs a compile.
"""
from __future__ import annotations

import pytest
import torch

from tests.ops.helpers import assert_close
from video3d_fast import ops
from video3d_fast.ops import reference

from .cases import LARGE, check_affine_act, check_batchnorm_act, check_candidate_loops, variant

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def _strict_fp32():
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("name", ["r50_stem", "r50_l1_conv3_res", "rx101_l1_grouped", "depthwise64"])
def test_affine_act_bf16_matches_reference_at_layer_size(name):
    p = variant(LARGE[name], dtype=BF16, layout="ndhwc")
    check_affine_act(p, True, seed=1, device="cuda", backward=name != "r50_stem")


@pytest.mark.parametrize(
    "name", ["r50_stem", "r50_l1_conv2", "r50_l2_conv2_s2", "rx101_l1_grouped", "rx101_l2_grouped_s2",
             "rx101_l3_grouped", "rx101_l4_grouped", "r50_l4_conv2"]  # l3/l4: the W_RUNS fprop and dgrad
)
def test_batchnorm_act_bf16_matches_reference_at_layer_size(name):
    p = variant(LARGE[name], dtype=BF16, layout="ndhwc", residual=name == "rx101_l1_grouped")
    check_batchnorm_act(p, True, seed=2, device="cuda")


@pytest.mark.parametrize("name", ["rx101_l1_grouped", "rx101_l2_grouped_s2", "rx101_l3_grouped", "rx101_l4_grouped"])
def test_whole_tap_and_l1_candidates_are_right_in_bf16(name):
    """Loop kinds only autotuning picks (TAP_RUNS, unpipelined L1 tiles) compiled for real, bf16, each
    ResNeXt-101 grouped stage: fprop, dgrad and wgrad against float64 ATen."""
    assert check_candidate_loops(variant(LARGE[name], dtype=BF16, layout="ndhwc"), seed=11, device="cuda",
                                 sm_count=torch.cuda.get_device_properties(0).multi_processor_count) >= 4


def test_stem_weight_gradient_on_the_triton_kernel_too(monkeypatch):
    """The stem's weight gradient runs on cuDNN by default on a GPU (faster there); the Triton kernel
    behind the switch must stay correct at the real size."""
    monkeypatch.setenv("VIDEO3D_FAST_TRITON_STEM_WGRAD", "triton")
    check_batchnorm_act(variant(LARGE["r50_stem"], dtype=BF16, layout="ndhwc"), True, seed=8, device="cuda")


def test_ncdhw_bf16_input_is_converted_and_returned_ncdhw():
    check_affine_act(variant(LARGE["r50_l1_conv3_res"], dtype=BF16, layout="ncdhw"), True, seed=3, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_dtypes_match_reference_at_layer_size(dtype):
    check_affine_act(variant(LARGE["rx101_l1_grouped"], dtype=dtype, layout="ndhwc"), True, seed=4, device="cuda")
    check_batchnorm_act(variant(LARGE["r50_l1_conv2"], dtype=dtype, layout="ndhwc"), True, seed=5, device="cuda")
    if dtype == torch.float32:  # the grouped W_RUNS loops with fp32 operands (32-row tiles, 128-wide K steps)
        check_batchnorm_act(variant(LARGE["rx101_l4_grouped"], dtype=dtype, layout="ndhwc"), True, seed=7,
                            device="cuda")


def test_fp32_uses_tf32_only_when_torch_allows_it():
    p = variant(LARGE["r50_l1_conv2"], layout="ndhwc")
    x, w, scale, shift, _ = p.make(torch.Generator().manual_seed(6), device="cuda")
    exact = reference.conv3d(x.double(), w.double(), None, **p.conv_kwargs)
    strict = ops.conv3d(x, w, backend="triton", **p.conv_kwargs)
    torch.backends.cudnn.allow_tf32 = True
    tf32 = ops.conv3d(x, w, backend="triton", **p.conv_kwargs)
    assert_close(strict, exact, torch.float32, "ieee fp32", 5.0)
    assert_close(tf32, exact, torch.bfloat16, "tf32")  # tf32 keeps 10 mantissa bits
    assert not torch.equal(strict, tf32)


def test_training_form_is_deterministic_on_gpu():
    p = variant(LARGE["rx101_l2_grouped_s2"], dtype=BF16, layout="ndhwc")
    x, w, gamma, beta, _ = p.make(torch.Generator().manual_seed(7), device="cuda")
    results = []
    for _ in range(2):
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = ops.conv3d_batchnorm_act(xs, ws, gamma, beta, None, None, backend="triton", **p.conv_kwargs)
        y.backward(torch.ones_like(y))
        results.append((y, xs.grad, ws.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["r50_l2_conv2_s2", "rx101_l3_grouped"])
def test_recomputed_conv_output_gives_identical_gradients_on_gpu(name):
    """save_conv_out=False recomputes c with the forward kernel in backward: split-K, tiles and rounding
    must match the training forward's, so the gradients are bit-identical (the many-row stage-2 layer
    takes the separate-finalize path, the stage-3 layer the fused one)."""
    p = variant(LARGE[name], dtype=BF16, layout="ndhwc", residual=True)
    x, w, gamma, beta, res = p.make(torch.Generator().manual_seed(9), device="cuda")
    results = []
    for save in (True, False):
        xs, ws, gs = x.clone().requires_grad_(True), w.clone().requires_grad_(True), gamma.clone().requires_grad_(True)
        y = ops.conv3d_batchnorm_act(xs, ws, gs, beta, None, None, residual=res, backend="triton",
                                     save_conv_out=save, **p.conv_kwargs)
        y.backward(torch.randn(y.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(10)).to(BF16))
        results.append((y, xs.grad, ws.grad, gs.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["r50_l1_conv2", "r50_l2_conv2_s2"])
def test_rebuilt_unit_outputs_give_identical_bits_on_gpu(name, monkeypatch):
    """Outputs rebuilt in backward (library._OutputRecipe) must equal the forward's to the bit: the stage-1
    layer takes the separate finalize, the stride-2 layer the finalize inside BN-apply."""
    from .test_triton_ops import _two_unit_chain

    p = variant(LARGE[name], dtype=BF16, layout="ndhwc")
    kept, reference_run = _two_unit_chain(p, 11, False, monkeypatch)
    rebuilt, run = _two_unit_chain(p, 11, True, monkeypatch)
    assert rebuilt < kept
    for a, b in zip(reference_run, run):
        assert torch.equal(a, b)


def test_autotuning_times_gpu_work_not_the_host_launch_path():
    """autotune._gpu_ms replays a CUDA graph: twenty launches of a one-element add take ~1-2 us each on
    the GPU and ~5 us each on the host, so eager timing (do_bench) measures the host and graph replay
    does not."""
    import triton.testing

    from video3d_fast.ops.backends.triton import autotune

    x = torch.zeros(1, device="cuda")

    def launches():
        for _ in range(20):
            x.add_(1.0)

    graph_ms = autotune._gpu_ms(launches, x.device)
    eager_ms = triton.testing.do_bench(launches, warmup=5, rep=20)
    assert 0 < graph_ms < 0.7 * eager_ms, (graph_ms, eager_ms)
