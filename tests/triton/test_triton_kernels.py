"""Each Triton conv kernel on each of its code paths equals ATen in float64.

The launchers are called with explicit tile configurations so that every constexpr path is taken on
purpose: tap-aligned vs flattened K loop, dense vs block-diagonal group tiles, full vs partial group
blocks, several tiles per group, split-K wgrad; the test asserts the path it means to cover.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.ops.helpers import apply_layout, assert_close
from video3d_fast import ops
from video3d_fast.ops.debug import poison_outputs
from video3d_fast.ops.params import memory_format_of

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module", autouse=True)
def _triton_runs_here():
    why = ops.available_backends()["triton"].reason or ops.backends._device_reason("triton", torch.device(DEVICE))
    if why:
        pytest.skip(why)


@pytest.fixture(autouse=True)
def _strict_fp32():
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


def _kernels():
    from video3d_fast.ops.backends.triton import autotune, conv3d_dgrad, conv3d_fwd, conv3d_wgrad, grouped

    return autotune, conv3d_fwd, conv3d_dgrad, conv3d_wgrad, grouped


# (name, N, C, K, size, kernel, stride, padding, dilation, groups)
PROBLEMS = {
    "dense": (1, 16, 32, (2, 4, 5), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1),
    "stem": (1, 3, 16, (3, 6, 6), (3, 3, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1), 1),
    "strided": (1, 16, 16, (5, 5, 6), (3, 2, 3), (2, 2, 3), (1, 0, 2), (2, 1, 1), 1),
    "grouped": (2, 32, 32, (3, 4, 4), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 8),
    "grouped_s2": (1, 48, 24, (4, 5, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), 3),
    # ResNeXt stage 3-like: 16 channels per group, one group per 16-wide tile; dilated in W
    "grouped_wide": (2, 32, 32, (3, 4, 5), (3, 3, 3), (1, 1, 1), (1, 1, 2), (1, 1, 2), 2),
    # 12 channels per group: taps that are not a power of two wide (flattened wgrad columns)
    "grouped_odd": (1, 24, 24, (3, 4, 5), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 2),
    # W = 1 (a narrow network's last stage): the W stride is 0, so an (s, c) run is not dense
    "thin": (2, 16, 16, (3, 4, 1), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1),
}


def _problem(name, dtype=torch.float32, layout="ncdhw", seed=0):
    n, c, k, size, kernel, stride, padding, dilation, groups = PROBLEMS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *size, generator=g).to(dtype)
    w = (torch.randn(k, c // groups, *kernel, generator=g) / (c // groups * 27) ** 0.5).to(dtype)
    p = ops.make_params(x, w, stride, padding, dilation, groups)
    dy = torch.randn(p.out_shape, generator=g).to(dtype)
    x, w, dy = (apply_layout(t, layout).to(DEVICE) for t in (x, w, dy))
    return x, w, dy, p


def _aten_grads(x, w, dy, p):
    return torch.ops.aten.convolution_backward(
        dy.double(), x.double(), w.double(), None, list(p.stride), list(p.padding), list(p.dilation), False,
        [0, 0, 0], p.groups, [True, True, False])[:2]


def _tiling(p, cfg, kind):
    _, _, _, _, grouped = _kernels()
    if kind == "fwd":
        t = grouped.group_tiling(p.groups, p.out_channels_per_group, p.in_channels_per_group, cfg.block_n)
        return t, t.red_per_tile % cfg.block_k == 0
    if kind == "dgrad":
        t = grouped.group_tiling(p.groups, p.in_channels_per_group, p.out_channels_per_group, cfg.block_n)
        return t, t.red_per_tile % cfg.block_k == 0
    t = grouped.group_tiling(p.groups, p.out_channels_per_group, p.in_channels_per_group, cfg.block_m)
    return t, t.red_per_tile % cfg.block_n == 0


# (problem, (block_m, block_n, block_k), expected tap_aligned, w_runs, tap_runs, block_diagonal, full_groups)
FWD_PATHS = [
    ("dense", (32, 16, 16), True, False, False, False, True),  # aligned, two row and two column tiles
    ("dense", (32, 32, 32), False, False, True, False, True),  # whole taps: 2 of 16 channels per K step
    ("stem", (32, 16, 16), False, True, False, False, True),  # C=3: one (t, r) filter row of 3x3 per K step
    ("stem", (32, 16, 32), False, True, False, False, True),
    ("stem", (64, 16, 16), False, False, False, False, True),  # and the flattened loop, forced (see the test)
    ("grouped_odd", (32, 16, 32), False, False, False, False, True),  # CT = 12: flattened K steps
    ("dense", (32, 16, 64), False, True, False, False, True),  # W_RUNS, one contiguous run of 3*16 (DENSE_RUN)
    ("strided", (16, 16, 16), True, False, False, False, True),
    ("grouped", (32, 16, 16), True, False, False, True, True),  # 4 groups per tile, block-diagonal
    ("grouped", (64, 32, 64), False, False, True, True, True),  # 8 groups of 4: 2 taps of 32 per K step
    ("grouped_s2", (32, 16, 64), False, False, True, True, False),  # Kg=8: 2 groups/tile of 3 -> partial block
    ("grouped_s2", (32, 16, 32), True, False, False, True, False),  # 2*16 channels per tap: aligned, masked
    # W_RUNS on grouped tiles: one (t, r) filter row per K step
    ("grouped", (32, 16, 64), False, True, False, True, True),  # 4 groups of 4: 3*16 of 64 columns
    ("grouped_s2", (32, 16, 128), False, True, False, True, False),  # stride 2, 2 groups per tile of 3
    ("grouped_wide", (32, 16, 64), False, True, False, False, True),  # one group of 16, dilation 2 in W
    # TAP_RUNS where a filter row would fill less than half a step: 8 taps of 16 channels, 4 K steps
    ("grouped", (32, 16, 128), False, False, True, True, True),
    ("grouped_wide", (32, 16, 128), False, False, True, False, True),
]


@pytest.mark.parametrize("name,blocks,aligned,runs,tap_runs,diag,full", FWD_PATHS)
def test_fwd_kernel_paths_match_aten(name, blocks, aligned, runs, tap_runs, diag, full, monkeypatch):
    autotune, conv3d_fwd, _, _, _ = _kernels()
    x, w, _, p = _problem(name, layout="ndhwc")
    cfg = autotune.KernelConfig(*blocks)
    tiling, tap_aligned = _tiling(p, cfg, "fwd")
    if name == "stem" and not runs:
        monkeypatch.setattr(conv3d_fwd, "w_runs", lambda *args: False)
    plan = conv3d_fwd._fwd_plan(p, cfg, torch.channels_last_3d, None, {}, torch.device(DEVICE)).conv
    assert (tap_aligned, plan.constexprs["W_RUNS"], plan.constexprs["TAP_RUNS"], tiling.block_diagonal,
            tiling.full_groups) == (aligned, runs, tap_runs, diag, full)
    scale = torch.rand(p.out_channels, device=DEVICE) + 0.5
    shift = torch.randn(p.out_channels, device=DEVICE)
    res = torch.randn(p.out_shape, device=DEVICE)
    with poison_outputs():
        r = conv3d_fwd.conv3d_fwd(x, w, p, scale=scale, shift=shift, residual=res, relu=True, store_conv=True,
                                  config=cfg)
    c = torch.nn.functional.conv3d(x.double(), w.double(), None, p.stride, p.padding, p.dilation, p.groups)
    assert_close(r.conv, c, torch.float32, "conv output")
    out = torch.relu(c * scale.double().view(1, -1, 1, 1, 1) + shift.double().view(1, -1, 1, 1, 1) + res)
    assert_close(r.out, out, torch.float32, "epilogue output")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
def test_stem_runs_on_four_channel_rows(dtype, layout):
    """C = 3 is padded with a zero channel so that each (s, c) run is dense and 4-aligned (DENSE_RUN, 8-byte
    loads on the GPU); the result is the C = 3 convolution, from any input layout, in the input's format."""
    autotune, conv3d_fwd, _, _, _ = _kernels()
    x, w, _, p = _problem("stem", dtype=dtype, layout=layout, seed=8)
    conv3d_fwd._plans.clear()
    with poison_outputs():
        r = conv3d_fwd.conv3d_fwd(x, w, p, store_conv=True, stats=True, store_out=False)
    (key, plan), = conv3d_fwd._plans.items()
    assert key[0].in_channels == 4 and plan.conv.constexprs["DENSE_RUN"] and plan.conv.constexprs["RUN_C"] == 4
    assert memory_format_of(r.conv) == memory_format_of(x)
    c = torch.nn.functional.conv3d(x.double(), w.double(), None, p.stride, p.padding, p.dilation, p.groups)
    assert_close(r.conv, c, dtype, "conv output")
    rows = torch.arange(p.gemm_m) // r.block_m
    c_rows = c.permute(0, 2, 3, 4, 1).reshape(-1, p.out_channels).cpu()
    want = torch.zeros(r.tile_sum.shape, dtype=torch.float64).index_add_(0, rows, c_rows)
    assert_close(r.tile_sum, want, dtype, "tile sums")  # partials of the rounded conv output


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
def test_stem_weight_gradient_on_four_channel_rows(dtype, layout):
    """wgrad of the C = 3 stem runs on the zero-padded four-channel input (W_RUNS column blocks with
    DENSE_RUN) and returns the three real channels in the weight's own dtype and memory format."""
    autotune, _, _, conv3d_wgrad, _ = _kernels()
    x, w, dy, p = _problem("stem", dtype=dtype, layout=layout, seed=9)
    conv3d_wgrad._plans.clear()
    with poison_outputs():
        gw = conv3d_wgrad.conv3d_wgrad(dy, x, w, p, config=autotune.KernelConfig(16, 16, 32, split_k=2))
    (key, plan), = conv3d_wgrad._plans.items()
    assert key[0].in_channels == 4 and plan.constexprs["W_RUNS"] and plan.constexprs["DENSE_RUN"]
    assert gw.shape == w.shape and gw.dtype == dtype and memory_format_of(gw) == memory_format_of(w)
    assert_close(gw, _aten_grads(x, w, dy, p)[1], dtype, "grad weight")


@pytest.mark.parametrize("name,dense", [("dense", True), ("thin", False)])
def test_dense_runs_only_where_the_input_row_is_dense(name, dense):
    """DENSE_RUN reads column j of a W_RUNS step as element j of the input row: right for C = CT with W > 1
    (the forward and wgrad W_RUNS tiles of a 16-channel conv), wrong for W = 1, whose W stride is 0."""
    autotune, conv3d_fwd, _, conv3d_wgrad, _ = _kernels()
    x, w, dy, p = _problem(name, layout="ndhwc", seed=10)
    fwd_cfg, wgrad_cfg = autotune.KernelConfig(32, 16, 64), autotune.KernelConfig(16, 64, 32, split_k=2)
    fwd_plan = conv3d_fwd._fwd_plan(p, fwd_cfg, torch.channels_last_3d, None, {}, torch.device(DEVICE)).conv
    wgrad_plan = conv3d_wgrad._wgrad_plan(p, wgrad_cfg, torch.channels_last_3d, {}, torch.device(DEVICE))
    assert fwd_plan.constexprs["W_RUNS"] and wgrad_plan.constexprs["W_RUNS"]
    assert fwd_plan.constexprs["DENSE_RUN"] == wgrad_plan.constexprs["DENSE_RUN"] == dense
    with poison_outputs():
        out = conv3d_fwd.conv3d_fwd(x, w, p, config=fwd_cfg).out
        gw = conv3d_wgrad.conv3d_wgrad(dy, x, w, p, config=wgrad_cfg)
    ref = torch.nn.functional.conv3d(x.double(), w.double(), None, p.stride, p.padding, p.dilation, p.groups)
    assert_close(out, ref, torch.float32, "conv output")
    assert_close(gw, _aten_grads(x, w, dy, p)[1], torch.float32, "grad weight")


SPLIT_PATHS = [  # (problem, (block_m, block_n, block_k, split_k)): every K-loop kind, sliced
    ("dense", (32, 16, 16, 5)),  # tap-aligned: 27 steps in 5 slices of 6 (the last one short)
    ("stem", (32, 16, 16, 4)),  # W_RUNS: 9 (t, r) rows in 3 slices of 3 (split 4 -> 3, no empty slice)
    ("grouped_s2", (32, 16, 64, 2)),  # whole-tap steps, block-diagonal tiles with a partial group block
    ("grouped_odd", (32, 16, 32, 2)),  # flattened K steps (12 channels per tap)
    ("strided", (16, 16, 16, 3)),
    ("grouped", (32, 16, 64, 4)),  # W_RUNS on block-diagonal tiles: 9 filter rows in 3 slices of 3
]


@pytest.mark.parametrize("name,blocks", SPLIT_PATHS)
@pytest.mark.parametrize("stats", [False, True])
def test_fwd_split_k_equals_aten_and_the_unsplit_kernel(name, blocks, stats):
    """Split-K partials summed in slice order by the epilogue kernel: same conv, epilogue and per-tile
    BN partials as the one-pass kernel (which the statistics' finalize relies on)."""
    autotune, conv3d_fwd, _, _, _ = _kernels()
    x, w, _, p = _problem(name, layout="ndhwc", seed=4)
    cfg = autotune.KernelConfig(*blocks[:3], split_k=blocks[3])
    one = autotune.KernelConfig(*blocks[:3], split_k=1)
    plan = conv3d_fwd._fwd_plan(p, cfg, torch.channels_last_3d, None, {"STATS": stats}, torch.device(DEVICE))
    assert plan.conv.grid[2] > 1 and plan.epilogue is not None
    scale = torch.rand(p.out_channels, device=DEVICE) + 0.5
    shift = torch.randn(p.out_channels, device=DEVICE)
    res = torch.randn(p.out_shape, device=DEVICE)
    kw = dict(residual=None, relu=True, store_out=not stats, store_conv=True, stats=stats) if stats else dict(
        scale=scale, shift=shift, residual=res, relu=True, store_conv=True)
    with poison_outputs():
        r = conv3d_fwd.conv3d_fwd(x, w, p, config=cfg, **kw)
        ref = conv3d_fwd.conv3d_fwd(x, w, p, config=one, **kw)
    c = torch.nn.functional.conv3d(x.double(), w.double(), None, p.stride, p.padding, p.dilation, p.groups)
    assert_close(r.conv, c, torch.float32, "conv output")
    if stats:
        torch.testing.assert_close(r.tile_sum, ref.tile_sum, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(r.tile_m2, ref.tile_m2, rtol=1e-5, atol=1e-4)
        rows = torch.arange(p.gemm_m) // cfg.block_m  # the partials' tiling: BLOCK_M rows of N*Do*Ho*Wo
        c_rows = c.permute(0, 2, 3, 4, 1).reshape(-1, p.out_channels).cpu()
        want = torch.zeros(r.tile_sum.shape, dtype=torch.float64).index_add_(0, rows, c_rows)
        assert_close(r.tile_sum, want, torch.float32, "tile sums")
    else:
        out = torch.relu(c * scale.double().view(1, -1, 1, 1, 1) + shift.double().view(1, -1, 1, 1, 1) + res)
        assert_close(r.out, out, torch.float32, "epilogue output")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,blocks", SPLIT_PATHS[:2])
def test_fwd_split_k_in_half_precision_on_ncdhw_input(name, blocks, dtype):
    """The split-K slices are fp32; the epilogue rounds once to the data dtype and writes the input's
    (NCDHW) memory format."""
    autotune, conv3d_fwd, _, _, _ = _kernels()
    x, w, _, p = _problem(name, dtype=dtype, layout="ncdhw", seed=5)
    cfg = autotune.KernelConfig(*blocks[:3], split_k=blocks[3])
    scale = torch.rand(p.out_channels, device=DEVICE) + 0.5
    shift = torch.randn(p.out_channels, device=DEVICE)
    with poison_outputs():
        r = conv3d_fwd.conv3d_fwd(x, w, p, scale=scale, shift=shift, relu=True, store_conv=True, config=cfg)
    c = torch.nn.functional.conv3d(x.double(), w.double(), None, p.stride, p.padding, p.dilation, p.groups)
    assert r.out.dtype == dtype and r.out.is_contiguous()
    assert_close(r.conv, c, dtype, "conv output")
    out = torch.relu(c * scale.double().view(1, -1, 1, 1, 1) + shift.double().view(1, -1, 1, 1, 1))
    assert_close(r.out, out, dtype, "epilogue output")


DGRAD_PATHS = [  # (problem, blocks, tap_aligned, w_runs, tap_runs, block_diagonal, full_groups)
    ("dense", (32, 16, 16), True, False, False, False, True),
    ("dense", (32, 16, 64), False, False, True, False, True),  # whole taps: 2 of 32 channels per K step
    ("strided", (16, 16, 16), True, False, False, False, True),  # 12 stride phases, some without taps
    ("strided", (16, 16, 32), False, False, True, False, True),  # whole taps of each phase
    ("grouped", (64, 16, 16), True, False, False, True, True),
    ("grouped_s2", (32, 32, 32), False, False, True, True, False),  # out = C/g = 16, red = K/g = 8, stride 2
    ("grouped_s2", (32, 32, 16), True, False, False, True, False),
    ("grouped_odd", (32, 16, 32), False, False, False, False, True),  # KT = 12: flattened K steps
    # W_RUNS (stride 1): one (t, r) filter row of S runs per K step
    ("dense", (32, 16, 128), False, True, False, False, True),  # 3 runs of 32 output-gradient channels
    ("grouped", (32, 16, 64), False, True, False, True, True),  # 4 groups of 4 per tile, block-diagonal
    ("grouped_wide", (32, 16, 64), False, True, False, False, True),  # one group of 16, dilation 2 in W
    ("grouped_s2", (32, 32, 64), False, False, True, True, False),  # stride 2: never W_RUNS
    ("grouped", (32, 16, 128), False, False, True, True, True),  # a row would fill 48 of 128: 8 taps
]


@pytest.mark.parametrize("name,blocks,aligned,runs,tap_runs,diag,full", DGRAD_PATHS)
def test_dgrad_kernel_paths_match_aten(name, blocks, aligned, runs, tap_runs, diag, full):
    autotune, _, conv3d_dgrad, _, _ = _kernels()
    x, w, dy, p = _problem(name, layout="ndhwc", seed=1)
    cfg = autotune.KernelConfig(*blocks)
    tiling, tap_aligned = _tiling(p, cfg, "dgrad")
    plan = conv3d_dgrad._dgrad_plan(p, cfg, torch.channels_last_3d, {}, torch.device(DEVICE))
    assert (tap_aligned, plan.constexprs["W_RUNS"], plan.constexprs["TAP_RUNS"], tiling.block_diagonal,
            tiling.full_groups) == (aligned, runs, tap_runs, diag, full)
    with poison_outputs():
        gx = conv3d_dgrad.conv3d_dgrad(dy, w, p, torch.channels_last_3d, config=cfg)
    assert gx.is_contiguous(memory_format=torch.channels_last_3d)
    assert_close(gx, _aten_grads(x, w, dy, p)[0], torch.float32, "grad input")


DGRAD_SPLIT_PATHS = [  # (problem, (block_m, block_n, block_k, split_k), slices expected)
    ("dense", (32, 16, 16, 3), 3),  # tap-aligned: 54 K steps in 3 slices of 18
    ("strided", (16, 16, 16, 2), 2),  # 12 stride phases with 0-4 taps: short phases leave slices empty
    ("grouped", (32, 16, 64, 4), 3),  # W_RUNS, block-diagonal: 9 filter rows in 3 slices (4 -> 3)
    ("grouped_s2", (32, 32, 32, 2), 2),  # whole-tap steps, block-diagonal, partial group block, stride 2
    ("grouped_odd", (32, 16, 32, 2), 2),  # flattened K steps (12 channels per tap)
]


@pytest.mark.parametrize("name,blocks,slices", DGRAD_SPLIT_PATHS)
def test_dgrad_split_k_equals_aten_and_the_unsplit_kernel(name, blocks, slices):
    """Each slice writes fp32 partials into its own dx-shaped slab (every element, zeros where a phase has
    no steps left: the slabs are poisoned), summed in slice order into dx."""
    autotune, _, conv3d_dgrad, _, _ = _kernels()
    x, w, dy, p = _problem(name, layout="ndhwc", seed=6)
    cfg = autotune.KernelConfig(*blocks[:3], split_k=blocks[3])
    plan = conv3d_dgrad._dgrad_plan(p, cfg, torch.channels_last_3d, {}, torch.device(DEVICE))
    phases = p.stride[0] * p.stride[1] * p.stride[2]
    assert plan.constexprs["SPLIT_K"] and plan.grid[2] == phases * slices
    with poison_outputs():
        gx = conv3d_dgrad.conv3d_dgrad(dy, w, p, torch.channels_last_3d, config=cfg)
        one = conv3d_dgrad.conv3d_dgrad(dy, w, p, torch.channels_last_3d,
                                        config=autotune.KernelConfig(*blocks[:3], split_k=1))
    assert gx.is_contiguous(memory_format=torch.channels_last_3d)
    assert_close(gx, _aten_grads(x, w, dy, p)[0], torch.float32, "grad input")
    torch.testing.assert_close(gx, one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dgrad_split_k_in_half_precision_into_ncdhw(dtype):
    """fp32 slabs in dx's own (NCDHW) layout; dx is rounded once from their sum."""
    autotune, _, conv3d_dgrad, _, _ = _kernels()
    x, w, dy, p = _problem("strided", dtype=dtype, layout="ncdhw", seed=7)
    cfg = autotune.KernelConfig(16, 16, 16, split_k=2)
    with poison_outputs():
        gx = conv3d_dgrad.conv3d_dgrad(dy, w, p, torch.contiguous_format, config=cfg)
    assert gx.dtype == dtype and gx.is_contiguous()
    assert_close(gx, _aten_grads(x, w, dy, p)[0], dtype, "grad input")


WGRAD_PATHS = [  # (problem, (block_m, block_n, block_k, split_k), tap_aligned, w_runs, tap_runs, block_diag,
    #               full_groups)
    ("dense", (16, 16, 32, 1), True, False, False, False, True),  # rows: 32 channels in 2 tiles; direct write
    ("dense", (32, 32, 16, 3), False, False, True, False, True),  # split-K over 3 position slices; 2 taps/block
    ("stem", (16, 16, 32, 2), False, True, False, False, True),  # one (t, r) filter row (3x3 columns) per block
    ("stem", (32, 16, 32, 2), False, False, False, False, True),  # and the flattened columns, forced (see test)
    ("strided", (16, 16, 64, 4), True, False, False, False, True),
    ("grouped", (16, 16, 32, 2), True, False, False, True, True),
    ("grouped", (32, 64, 16, 1), False, False, True, True, True),  # 8 groups of 4: 2 whole taps per block
    ("grouped", (16, 512, 16, 2), False, False, True, True, True),  # all 27 taps in one block: dy read once
    ("grouped_wide", (16, 256, 16, 2), False, False, True, False, True),  # 16 taps per block, dilation 2 in W
    ("strided", (16, 32, 16, 2), False, False, True, False, True),  # strides and dilation, 2 taps per block
    ("grouped_s2", (16, 64, 16, 3), False, False, True, True, False),  # rows: 2 groups of Kg=8, 3 groups
    ("grouped_s2", (16, 32, 16, 2), True, False, False, True, False),
    ("grouped_odd", (16, 32, 16, 2), False, False, False, False, True),  # CT = 12: flattened columns
    # W_RUNS on grouped tiles: a column block is one (t, r) filter row
    ("grouped", (16, 64, 32, 2), False, True, False, True, True),  # 4 groups of 4: 3*16 of 64 columns
    ("grouped_s2", (16, 128, 16, 2), False, True, False, True, False),  # stride 2, 2 groups per tile of 3 groups
    ("grouped_wide", (16, 64, 32, 1), False, True, False, False, True),  # one group of 16, dilation 2 in W
]


@pytest.mark.parametrize("name,blocks,aligned,runs,tap_runs,diag,full", WGRAD_PATHS)
def test_wgrad_kernel_paths_match_aten(name, blocks, aligned, runs, tap_runs, diag, full, monkeypatch):
    autotune, _, _, conv3d_wgrad, _ = _kernels()
    x, w, dy, p = _problem(name, layout="ndhwc", seed=2)
    cfg = autotune.KernelConfig(*blocks[:3], split_k=blocks[3])
    tiling, tap_aligned = _tiling(p, cfg, "wgrad")
    if name == "stem" and not runs:
        monkeypatch.setattr(conv3d_wgrad, "w_runs", lambda *args: False)
    plan = conv3d_wgrad._wgrad_plan(p, cfg, memory_format_of(w), {}, torch.device(DEVICE))
    assert (tap_aligned, plan.constexprs["W_RUNS"], plan.constexprs["TAP_RUNS"], tiling.block_diagonal,
            tiling.full_groups) == (aligned, runs, tap_runs, diag, full)
    with poison_outputs():
        gw = conv3d_wgrad.conv3d_wgrad(dy, x, w, p, config=cfg)
    assert gw.is_contiguous(memory_format=memory_format_of(w))
    assert_close(gw, _aten_grads(x, w, dy, p)[1], torch.float32, "grad weight")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_kernels_accumulate_in_fp32(dtype):
    """K = 27*16 products of half-precision values: fp32 accumulation keeps the error at output rounding."""
    autotune, conv3d_fwd, conv3d_dgrad, conv3d_wgrad, _ = _kernels()
    x, w, dy, p = _problem("dense", dtype=dtype, seed=3)
    out = conv3d_fwd.conv3d_fwd(x, w, p).out
    ref = torch.nn.functional.conv3d(x.double(), w.double(), None, p.stride, p.padding, p.dilation, p.groups)
    assert out.dtype == dtype
    assert_close(out, ref, dtype, "forward")
    gx_ref, gw_ref = _aten_grads(x, w, dy, p)
    assert_close(conv3d_dgrad.conv3d_dgrad(dy, w, p, torch.contiguous_format), gx_ref, dtype, "dgrad")
    assert_close(conv3d_wgrad.conv3d_wgrad(dy, x, w, p, config=autotune.KernelConfig(32, 32, 32, split_k=2)),
                 gw_ref, dtype, "wgrad")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["grouped", "grouped_wide"])
def test_row_run_loops_in_half_precision_on_ncdhw_input(name, dtype):
    """The W_RUNS loops of grouped tiles (block-diagonal and one group per tile) in fprop, dgrad and
    wgrad with half-precision operands read from NCDHW tensors: fp32 accumulation, one rounding."""
    autotune, conv3d_fwd, conv3d_dgrad, conv3d_wgrad, _ = _kernels()
    x, w, dy, p = _problem(name, dtype=dtype, layout="ncdhw", seed=6)
    fwd_cfg, dgrad_cfg = autotune.KernelConfig(32, 16, 64), autotune.KernelConfig(32, 16, 64)
    wgrad_cfg = autotune.KernelConfig(16, 64, 32, split_k=2)
    assert conv3d_fwd.w_runs(p, fwd_cfg, _tiling(p, fwd_cfg, "fwd")[0])
    assert conv3d_dgrad.w_runs(p, dgrad_cfg, _tiling(p, dgrad_cfg, "dgrad")[0])
    assert conv3d_wgrad.w_runs(p, wgrad_cfg, _tiling(p, wgrad_cfg, "wgrad")[0])
    with poison_outputs():
        out = conv3d_fwd.conv3d_fwd(x, w, p, config=fwd_cfg).out
        gx = conv3d_dgrad.conv3d_dgrad(dy, w, p, torch.contiguous_format, config=dgrad_cfg)
        gw = conv3d_wgrad.conv3d_wgrad(dy, x, w, p, config=wgrad_cfg)
    ref = torch.nn.functional.conv3d(x.double(), w.double(), None, p.stride, p.padding, p.dilation, p.groups)
    assert out.dtype == dtype and out.is_contiguous() and gx.is_contiguous()
    assert_close(out, ref, dtype, "forward")
    gx_ref, gw_ref = _aten_grads(x, w, dy, p)
    assert_close(gx, gx_ref, dtype, "dgrad")
    assert_close(gw, gw_ref, dtype, "wgrad")


def test_launchers_reject_mismatched_arguments():
    _, conv3d_fwd, conv3d_dgrad, conv3d_wgrad, _ = _kernels()
    x, w, dy, p = _problem("dense")
    with pytest.raises(TypeError, match="fp16/bf16/fp32"):
        conv3d_fwd.conv3d_fwd(x.double(), w.double(), p)
    with pytest.raises(ValueError, match="do not match"):
        conv3d_fwd.conv3d_fwd(x[:, :8], w, p)
    with pytest.raises(ValueError, match="residual shape"):
        conv3d_fwd.conv3d_fwd(x, w, p, residual=dy[:, :1])
    with pytest.raises(ValueError, match="do not match"):
        conv3d_dgrad.conv3d_dgrad(dy[:, :1], w, p, torch.contiguous_format)
    with pytest.raises(TypeError, match="matching"):
        conv3d_wgrad.conv3d_wgrad(dy.half(), x, w, p)


def test_group_tiling_covers_every_channel_once():
    _, _, _, _, grouped = _kernels()
    resnext = grouped.group_tiling(32, 4, 4, 16)
    assert (resnext.groups_per_tile, resnext.tiles_per_group, resnext.num_tiles) == (4, 1, 8)
    assert resnext.block_diagonal and resnext.full_groups and resnext.red_per_tile == 16
    wide = grouped.group_tiling(2, 80, 8, 64)
    assert (wide.groups_per_tile, wide.tiles_per_group, wide.num_tiles) == (1, 2, 4)
    odd = grouped.group_tiling(3, 3, 2, 16)
    assert (odd.groups_per_tile, odd.num_tiles, odd.full_groups) == (3, 1, True)
    partial = grouped.group_tiling(3, 8, 16, 16)
    assert (partial.groups_per_tile, partial.num_tiles, partial.full_groups) == (2, 2, False)


def test_default_configs_are_power_of_two_tiles_with_four_warps():
    autotune, _, _, _, _ = _kernels()
    for name in PROBLEMS:
        x, _, _, p = _problem(name)
        dev = torch.device(DEVICE)
        for cfg in (autotune.fwd_candidates(p, x.dtype, dev) + autotune.dgrad_candidates(p, x.dtype, dev)
                    + autotune.wgrad_candidates(p, x.dtype, dev)):
            for b in (cfg.block_m, cfg.block_n, cfg.block_k):
                assert b >= 16 and b & (b - 1) == 0, cfg
            assert cfg.num_warps == 4, cfg


# Odd grouped problems for the W_RUNS loops: (N, C, K, size, kernel, stride, padding, dilation, groups).
# Uneven kernels (S = 2), per-axis strides/padding/dilation, channel counts per group that are not powers of
# two (no vector hints then) and a 1x1x1 conv (one K step per filter row).
ROW_RUN_PROBLEMS = [
    (2, 24, 24, (3, 5, 6), (2, 3, 2), (1, 1, 1), (1, 0, 1), (1, 1, 2), 2),  # CT = 12, S = 2
    (1, 32, 48, (4, 6, 7), (3, 3, 3), (1, 2, 1), (1, 1, 2), (1, 1, 2), 4),  # K/g = 12 > C/g = 8, strided H
    (1, 16, 16, (5, 4, 9), (3, 1, 3), (1, 1, 1), (0, 0, 1), (2, 1, 3), 4),  # dilation 3 in W, R = 1
    (2, 32, 32, (2, 3, 3), (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1), 8),  # 1x1x1 grouped
    (1, 16, 16, (3, 4, 5), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 16),  # depthwise: 16 groups per tile
]


@pytest.mark.parametrize("problem", ROW_RUN_PROBLEMS)
def test_row_run_loops_on_odd_grouped_problems(problem):
    """Each kernel with a tile that takes its W_RUNS loop (dgrad only at stride 1) equals float64 ATen. A
    1x1x1 filter's one-tap row of a power-of-two CT fills only half a step: fprop/dgrad take TAP_RUNS there."""
    autotune, conv3d_fwd, conv3d_dgrad, conv3d_wgrad, grouped = _kernels()
    n, c, k, size, kernel, stride, padding, dilation, groups = problem
    g = torch.Generator().manual_seed(sum(size) + groups)
    x = torch.randn(n, c, *size, generator=g)
    w = torch.randn(k, c // groups, *kernel, generator=g) / (c // groups * 27) ** 0.5
    p = ops.make_params(x, w, stride, padding, dilation, groups)
    dy = torch.randn(p.out_shape, generator=g)
    x, w, dy = (apply_layout(t, "ndhwc").to(DEVICE) for t in (x, w, dy))
    s = p.kernel[2]

    def row_run_cfg(out_per_group, red_per_group, block):
        """(block, width) so that a block of `block` output columns makes the S*CT run narrower than width."""
        ct = grouped.group_tiling(groups, out_per_group, red_per_group, block).red_per_tile
        return ct, max(16, 1 << (s * ct - 1).bit_length())

    ct, bk = row_run_cfg(p.out_channels_per_group, p.in_channels_per_group, 16)
    fwd_cfg = autotune.KernelConfig(16, 16, bk if ct % bk else 2 * bk)
    one_tap_half_step = p.kernel == (1, 1, 1) and ct & (ct - 1) == 0
    fwd_plan = conv3d_fwd._fwd_plan(p, fwd_cfg, torch.channels_last_3d, None, {}, torch.device(DEVICE)).conv
    assert fwd_plan.constexprs["TAP_RUNS" if one_tap_half_step else "W_RUNS"], fwd_cfg
    ct, bn = row_run_cfg(p.out_channels_per_group, p.in_channels_per_group, 16)
    wgrad_cfg = autotune.KernelConfig(16, bn, 32, split_k=2)
    # (a 1x1x1 filter row is one tap: its CT columns fill a block exactly, the tap-aligned case)
    assert conv3d_wgrad.w_runs(p, wgrad_cfg, _tiling(p, wgrad_cfg, "wgrad")[0]) or p.kernel == (1, 1, 1)
    with poison_outputs():
        out = conv3d_fwd.conv3d_fwd(x, w, p, config=fwd_cfg).out
        gw = conv3d_wgrad.conv3d_wgrad(dy, x, w, p, config=wgrad_cfg)
    gx_ref, gw_ref = _aten_grads(x, w, dy, p)
    ref = torch.nn.functional.conv3d(x.double(), w.double(), None, p.stride, p.padding, p.dilation, p.groups)
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gw, gw_ref, torch.float32, "wgrad")
    if p.stride == (1, 1, 1):
        ct, bk = row_run_cfg(p.in_channels_per_group, p.out_channels_per_group, 16)
        dgrad_cfg = autotune.KernelConfig(16, 16, bk if ct % bk else 2 * bk)
        dgrad_plan = conv3d_dgrad._dgrad_plan(p, dgrad_cfg, torch.channels_last_3d, {}, torch.device(DEVICE))
        assert dgrad_plan.constexprs["TAP_RUNS" if one_tap_half_step else "W_RUNS"], dgrad_cfg
        with poison_outputs():
            gx = conv3d_dgrad.conv3d_dgrad(dy, w, p, torch.channels_last_3d, config=dgrad_cfg)
        assert_close(gx, gx_ref, torch.float32, "dgrad")


@pytest.mark.parametrize("name,dtype,layout", [
    ("resnext_g8", torch.float32, "ndhwc"), ("depthwise", torch.float32, "ndhwc"),
    ("resnext_g8", torch.bfloat16, "ndhwc"), ("depthwise", torch.float16, "ndhwc"),
    ("resnext_g8", torch.bfloat16, "ncdhw")])
def test_loop_kinds_only_autotuning_reaches_match_aten(name, dtype, layout):
    """The candidates the GPU lists beyond its heuristic (TAP_RUNS steps of 8 taps, a wgrad column block
    over all taps, unpipelined tiles) on small grouped problems, half precision through the interpreter's
    upcast dot, NCDHW input and input gradient too; the GPU test runs them in bf16 for real."""
    from .cases import SMALL, check_candidate_loops

    p = dataclasses.replace(SMALL[name], layout=layout, dtype=dtype)
    assert check_candidate_loops(p, seed=12, device=DEVICE) >= 4
