"""Input gradient (dgrad) of a 3D convolution as implicit GEMM, with phase decomposition for strides.

For stride s, an input position di only receives output od = (di + pad - t*dil) / s from the taps t
for which that division is exact, and which taps those are depends only on di mod s (its phase).
The kernel runs one phase per program (grid axis 2, s_d*s_h*s_w phases) and walks only that phase's
taps, so strided dgrad does no masked-out MMAs (a naive implicit GEMM wastes 7/8 of them at stride 2).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import triton
import triton.language as tl

from ...debug import new_output
from ...params import Conv3dParams
from .autotune import KernelConfig, dgrad_candidates, dgrad_split, pick
from .common import (
    allow_tf32,
    LaunchPlan,
    cdiv,
    channels_last,
    dense_like,
    dot_flags,
    gather_ndhwc,
    kernel_strides,
    launch,
    mma,
    ndhwc_strides,
    split_rows,
)
from .conv3d_wgrad import sum_splits
from .grouped import group_tiling, red_channels, tile_channels


@triton.jit
def phase_taps(phase, pad, dil, stride, T, step):
    """First tap t0 with (phase + pad - t0*dil) divisible by stride, and how many taps (t0, t0+step, ...)
    below T a phase has (0 when none)."""
    t0 = T
    for t in range(0, T):
        hit = (((phase + pad - t * dil) % stride) == 0) & (t0 == T)
        t0 = tl.where(hit, t, t0)
    count = tl.where(t0 < T, (T - t0 + step - 1) // step, 0)
    return t0, count


@triton.jit
def phase_offset(phase, pad, dil, stride, t):
    """od - i for the input position phase + i*stride and tap t (exact division by construction)."""
    return (phase + pad - t * dil) // stride


# Problem sizes are runtime values (not specialised) so that one compiled kernel serves every layer
# shape of a network; strides stay specialised (divisibility by 16 enables vector loads).
DGRAD_SHAPE_ARGS = [
    'D', 'H', 'W', 'Do', 'Ho', 'Wo', 'N', 'T', 'R', 'S', 'str_d', 'str_h', 'str_w', 'pad_d', 'pad_h', 'pad_w',
    'dil_d', 'dil_h', 'dil_w', 'step_d', 'step_h', 'step_w', 'groups', 'out_per_group', 'red_per_group', 'GB',
    'NB', 'steps_per_split', 'split_stride'
]


# Conv -> GEMM (dgrad): rows (BLOCK_M) over the N*D*H*W input positions of one stride phase, columns
# (BLOCK_N) over input channels C (group tiling of grouped.py with out = C/groups, red = K/groups),
# reduction (BLOCK_K) over the flattened (phase's taps) x KT output-gradient channels, KT =
# GB*K/groups, channel fastest. A is gathered from the NDHWC output gradient, B is the weight read
# as [tap, k] x [c] (block-diagonal across groups). TAP_ALIGNED as in conv3d_fwd; W_RUNS (stride 1
# only) as well: a K step is one (t, r) filter row, whose (s, k) pairs are S runs of KT channels.
# TAP_RUNS as in conv3d_fwd (any stride): a K step is BLOCK_K/KT whole taps of the phase.
# SPLIT_K: grid axis 2 is (slice, phase); each slice runs steps_per_split K steps of its phase and stores
# fp32 partials into its own dx-shaped slab of dx_ptr (split_stride elements apart), summed afterwards
# in slice order (conv3d_wgrad.sum_splits): the deep layers of stages 3-4 have 16-64 output tiles and
# 64-400 serial K steps each, latency-bound as fprop was before its split (autotune.dgrad_split).
@triton.jit(do_not_specialize=DGRAD_SHAPE_ARGS)
def conv3d_dgrad_kernel(
    dy_ptr, w_ptr, dx_ptr,
    D, H, W, Do, Ho, Wo, N,
    T, R, S, str_d, str_h, str_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w, step_d, step_h, step_w,
    groups, out_per_group, red_per_group, GB, NB, steps_per_split, split_stride,
    y_sn, y_sd, y_sh, y_sw, y_sc,
    w_sk, w_sc, w_st, w_sr, w_ss,
    x_sn, x_sd, x_sh, x_sw, x_sc,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    TAP_ALIGNED: tl.constexpr, W_RUNS: tl.constexpr, TAP_RUNS: tl.constexpr, RUN_C: tl.constexpr,
    BLOCK_DIAG: tl.constexpr, FULL_GROUPS: tl.constexpr, EVEN_OUT: tl.constexpr, SPLIT_K: tl.constexpr,
    IS_FP32: tl.constexpr, TF32: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    if SPLIT_K:
        phases = str_d * str_h * str_w
        slice_id = phase // phases
        phase = phase - slice_id * phases
    p_w = phase % str_w
    p_h = (phase // str_w) % str_h
    p_d = phase // (str_w * str_h)
    # positions of this phase along each axis (0 when the axis is shorter than the phase)
    Dp = tl.maximum(D - p_d + str_d - 1, 0) // str_d
    Hp = tl.maximum(H - p_h + str_h - 1, 0) // str_h
    Wp = tl.maximum(W - p_w + str_w - 1, 0) // str_w
    Mp = N * Dp * Hp * Wp

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = m < Mp
    n, i, j, l = split_rows(m, tl.maximum(Dp, 1), tl.maximum(Hp, 1), tl.maximum(Wp, 1))
    n_off = n.to(tl.int64) * y_sn

    t0, nt = phase_taps(p_d, pad_d, dil_d, str_d, T, step_d)
    r0, nr = phase_taps(p_h, pad_h, dil_h, str_h, R, step_h)
    s0, ns = phase_taps(p_w, pad_w, dil_w, str_w, S, step_w)

    g0, out_ch, col_group, col_mask = tile_channels(pid_n, groups, out_per_group, GB, NB, BLOCK_N)
    col_in_group = out_ch - col_group * out_per_group
    if EVEN_OUT:  # every column is real and they run contiguously from a multiple of BLOCK_N
        out_ch = g0 * out_per_group + (pid_n % NB) * BLOCK_N + tl.arange(0, BLOCK_N)
        out_ch = tl.max_contiguous(tl.multiple_of(out_ch, BLOCK_N), BLOCK_N)
        if not BLOCK_DIAG:
            col_in_group = (pid_n % NB) * BLOCK_N + tl.arange(0, BLOCK_N)
            col_in_group = tl.max_contiguous(tl.multiple_of(col_in_group, BLOCK_N), BLOCK_N)
    KT = GB * red_per_group
    k_total = nt * nr * ns * KT
    kr = tl.arange(0, BLOCK_K)
    if W_RUNS:  # stride 1: K steps over (t, r); columns (s, k), S runs of KT = RUN_C channels (see fprop)
        k_total = T * R * BLOCK_K
        s_col = kr // RUN_C
        k_col = kr % RUN_C
        run_ch, run_in_group, run_group, run_valid = red_channels(g0, k_col, red_per_group, groups, BLOCK_DIAG)
        run_ok = kr < S * RUN_C
        if not FULL_GROUPS:
            run_ok = run_ok & run_valid
        if RUN_C >= 8 and (RUN_C & (RUN_C - 1)) == 0:
            run_ch = tl.max_contiguous(tl.multiple_of(g0 * red_per_group + k_col, RUN_C), RUN_C)
        # output-gradient column w = l + pad_w - s*dil_w: a run per s, descending
        y_col = run_ch * y_sc - (s_col * dil_w) * y_sw
        ow = l[:, None] + (pad_w - s_col * dil_w)[None, :]
        run_a_ok = run_ok[None, :] & (ow >= 0) & (ow < Wo)  # loop-invariant part of the gather mask
        run_w = run_ch * w_sk + s_col * w_ss
        run_b_ok = run_ok[:, None]
        if not EVEN_OUT:
            run_b_ok = run_b_ok & col_mask[None, :]
        if BLOCK_DIAG:  # a column's weights are zero outside its own group
            run_b_ok = run_b_ok & (run_group[:, None] == col_group[None, :])

    k_begin = 0
    if SPLIT_K:  # this slice's K steps (none for a phase with fewer steps: its slab gets zeros)
        k_begin = slice_id * steps_per_split * BLOCK_K
        k_total = tl.minimum(k_total, k_begin + steps_per_split * BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_total, BLOCK_K):
        if W_RUNS:
            tr = k0 // BLOCK_K
            t = tr // R
            r = tr - t * R
            od = i + pad_d - t * dil_d
            oh = j + pad_h - r * dil_h
            row_ok = row_mask & (od >= 0) & (od < Do) & (oh >= 0) & (oh < Ho)
            row_off = n_off + od * y_sd + oh * y_sh + (l + pad_w) * y_sw
            a = tl.load(dy_ptr + row_off[:, None] + y_col[None, :], mask=row_ok[:, None] & run_a_ok, other=0.0)
            b = tl.load(w_ptr + (run_w + t * w_st + r * w_sr)[:, None] + (col_in_group * w_sc)[None, :],
                        mask=run_b_ok, other=0.0)
        else:
            if TAP_ALIGNED:
                tap = k0 // KT
                kl = (k0 - tap * KT) + kr
                red_valid_k = kl < KT
            elif TAP_RUNS:  # whole taps of RUN_C = KT channels (k0 is a multiple of RUN_C)
                tap = k0 // RUN_C + kr // RUN_C
                kl = kr % RUN_C
                red_valid_k = tap < nt * nr * ns
            else:
                kk = k0 + kr
                tap = kk // KT
                kl = kk - tap * KT
                red_valid_k = kk < k_total
            i_s = tap % ns
            i_r = (tap // ns) % nr
            i_t = tap // (ns * nr)
            t = t0 + i_t * step_d
            r = r0 + i_r * step_h
            s = s0 + i_s * step_w
            red_ch, red_in_group, red_group, red_valid = red_channels(g0, kl, red_per_group, groups, BLOCK_DIAG)
            if TAP_RUNS and FULL_GROUPS:  # a mask constant along each run keeps the loads vectorised
                red_valid = red_valid_k
            else:
                red_valid = red_valid & red_valid_k
            if TAP_RUNS:
                red_ch = tl.max_contiguous(tl.multiple_of(g0 * red_per_group + kl, RUN_C), RUN_C)
            if TAP_ALIGNED:
                # as in conv3d_fwd: starts at a multiple of BLOCK_K
                red_ch = g0 * red_per_group + (k0 - tap * KT) + kr
                red_ch = tl.max_contiguous(tl.multiple_of(red_ch, BLOCK_K), BLOCK_K)
                if FULL_GROUPS:
                    a_mask = row_mask[:, None]
                else:
                    a_mask = row_mask[:, None] & red_valid[None, :]
                a = gather_ndhwc(
                    dy_ptr, n_off[:, None], (i + phase_offset(p_d, pad_d, dil_d, str_d, t))[:, None],
                    (j + phase_offset(p_h, pad_h, dil_h, str_h, r))[:, None],
                    (l + phase_offset(p_w, pad_w, dil_w, str_w, s))[:, None],
                    red_ch[None, :], a_mask, Do, Ho, Wo, y_sd, y_sh, y_sw, y_sc,
                )
            else:
                a = gather_ndhwc(
                    dy_ptr, n_off[:, None], i[:, None] + phase_offset(p_d, pad_d, dil_d, str_d, t)[None, :],
                    j[:, None] + phase_offset(p_h, pad_h, dil_h, str_h, r)[None, :],
                    l[:, None] + phase_offset(p_w, pad_w, dil_w, str_w, s)[None, :],
                    red_ch[None, :], row_mask[:, None] & red_valid[None, :],
                    Do, Ho, Wo, y_sd, y_sh, y_sw, y_sc,
                )
            w_tap = t * w_st + r * w_sr + s * w_ss
            if EVEN_OUT:  # a row-only mask keeps the weight loads (contiguous along C) vectorised
                b_mask = red_valid[:, None]
            else:
                b_mask = red_valid[:, None] & col_mask[None, :]
            if BLOCK_DIAG:
                b_mask = b_mask & (red_group[:, None] == col_group[None, :])
            b_ptrs = w_ptr + (red_ch * w_sk + w_tap)[:, None] + (col_in_group * w_sc)[None, :]
            b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        acc = mma(a, b, acc, IS_FP32, TF32, UPCAST)

    di = p_d + i * str_d
    hi = p_h + j * str_h
    wi = p_w + l * str_w
    x_row = n.to(tl.int64) * x_sn + di * x_sd + hi * x_sh + wi * x_sw
    if SPLIT_K:
        x_row += slice_id.to(tl.int64) * split_stride
    if EVEN_OUT:
        mask = row_mask[:, None]
    else:
        mask = row_mask[:, None] & col_mask[None, :]
    tl.store(dx_ptr + x_row[:, None] + (out_ch * x_sc)[None, :], acc.to(dx_ptr.dtype.element_ty), mask=mask)


def conv3d_dgrad(dy: torch.Tensor, w: torch.Tensor, p: Conv3dParams, input_format: torch.memory_format,
                 config: Optional[KernelConfig] = None) -> torch.Tensor:
    """dL/dx (N, C, D, H, W) in ``input_format`` from dy (N, K, Do, Ho, Wo) and w (K, C/groups, T, R, S).

    The one place dgrad's shapes are checked and its grid chosen (a grid axis per stride phase).
    """
    if tuple(dy.shape) != p.out_shape or tuple(w.shape[:2]) != (p.out_channels, p.in_channels_per_group):
        raise ValueError(f"grad_output {tuple(dy.shape)} / weight {tuple(w.shape)} do not match {p}")
    if dy.dtype != w.dtype or dy.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"triton dgrad needs matching fp16/bf16/fp32 tensors, got {dy.dtype}/{w.dtype}")
    # TF32 is the one dot flag that can change at run time (torch's flag); the others follow the dtype
    key = (p, dy.dtype, dy.device, input_format, config, dy.dtype == torch.float32 and allow_tf32())
    plan = _plans.get(key)
    if plan is None:
        cfg = config or pick("dgrad", p, dy.dtype, dy.device, dgrad_candidates(p, dy.dtype, dy.device),
                             lambda c: conv3d_dgrad(dy, w, p, input_format, config=c))
        plan = _plans[key] = _dgrad_plan(p, cfg, input_format, dot_flags(dy.dtype), dy.device)
    dx = new_output((p.batch, p.in_channels, *p.in_size), dtype=dy.dtype, device=dy.device,
                    memory_format=input_format)
    split = plan.grid[2] // math.prod(p.stride)  # grid axis 2: slice x stride phase
    # split-K: fp32 slabs shaped and laid out like dx, one per slice, then their in-order sum into dx
    dst = dx if split == 1 else new_output((split * p.batch, p.in_channels, *p.in_size), dtype=torch.float32,
                                           device=dy.device, memory_format=input_format)
    launch(conv3d_dgrad_kernel, plan.grid, (channels_last(dy), channels_last(w), dst), plan.args, plan.constexprs,
           plan_token=plan.token)
    if split > 1:
        sum_splits(dst, dx, split)
    return dx


_plans: Dict[tuple, LaunchPlan] = {}


def w_runs(p: Conv3dParams, cfg: KernelConfig, tiling) -> bool:
    """The row-segment K loop (W_RUNS, as in conv3d_fwd): stride 1 (one phase, every tap), the tile's
    output-gradient channels per tap (KT) narrower than a K step, and a whole (s, k) run of S*KT fits one."""
    return p.stride == (1, 1, 1) and tiling.row_runs_preferred(p.kernel[2], cfg.block_k)


def _dgrad_plan(p: Conv3dParams, cfg: KernelConfig, input_format, flags: dict, device: torch.device) -> LaunchPlan:
    tiling = group_tiling(p.groups, p.in_channels_per_group, p.out_channels_per_group, cfg.block_n)
    rows = p.batch * math.prod(cdiv(p.in_size[i], p.stride[i]) for i in range(3))
    steps = [p.stride[i] // math.gcd(p.stride[i], p.dilation[i]) for i in range(3)]
    runs = w_runs(p, cfg, tiling)
    tap_runs = not runs and tiling.tap_runs_fit(cfg.block_k)
    # K steps of the phase with the most taps (every phase at stride 1)
    k_steps = p.kernel[0] * p.kernel[1] if runs else cdiv(
        math.prod(cdiv(p.kernel[i], steps[i]) for i in range(3)) * tiling.red_per_tile, cfg.block_k)
    phases = math.prod(p.stride)
    split = dgrad_split(cdiv(rows, cfg.block_m) * tiling.num_tiles * phases, k_steps, cfg, device)
    steps_per_split = cdiv(k_steps, split)
    split = cdiv(k_steps, steps_per_split)  # no slice without steps in the longest phase
    x_numel = p.batch * p.in_channels * math.prod(p.in_size)
    args = (
        *p.in_size, *p.out_size, p.batch,
        *p.kernel, *p.stride, *p.padding, *p.dilation, *steps,
        *tiling.kernel_args(), steps_per_split, x_numel if split > 1 else 0,
        *ndhwc_strides(dense_like(p.out_shape, torch.channels_last_3d)),
        *kernel_strides(dense_like((p.out_channels, p.in_channels_per_group, *p.kernel), torch.channels_last_3d)),
        *ndhwc_strides(dense_like((p.batch, p.in_channels, *p.in_size), input_format)),
    )
    constexprs = dict(
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        TAP_ALIGNED=tiling.red_per_tile % cfg.block_k == 0, W_RUNS=runs, TAP_RUNS=tap_runs,
        RUN_C=tiling.red_per_tile if runs or tap_runs else 1, BLOCK_DIAG=tiling.block_diagonal,
        FULL_GROUPS=tiling.full_groups, EVEN_OUT=tiling.even_out, SPLIT_K=split > 1,
        **flags, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return LaunchPlan(cfg, (cdiv(rows, cfg.block_m), tiling.num_tiles, phases * split), args, constexprs)
