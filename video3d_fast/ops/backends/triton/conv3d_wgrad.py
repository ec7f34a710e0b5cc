"""Weight gradient (wgrad) of a 3D convolution as implicit GEMM with split-K over N*Do*Ho*Wo.

The reduction runs over every output position (hundreds of thousands at batch 8), while the output
(the weight) is small, so the positions are cut into ``split`` contiguous slices, one per grid row
along axis 2; each slice writes its fp32 partial weight gradient and a second kernel sums the
slices in slice order (deterministic) and rounds once to the weight dtype. With split 1 the kernel
writes the weight gradient directly.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import triton
import triton.language as tl

from ...debug import new_output
from ...params import Conv3dParams, memory_format_of
from .autotune import KernelConfig, pick, wgrad_candidates, wgrad_split
from .common import (
    allow_tf32,
    INTERPRETED,
    LaunchPlan,
    cdiv,
    channels_last,
    dense_like,
    dot_flags,
    four_channel_copy,
    four_channel_params,
    gather_ndhwc,
    kernel_strides,
    launch,
    mma,
    ndhwc_strides,
    on_four_channels,
    split_rows,
    split_taps,
)
from .grouped import group_tiling, red_channels, tile_channels


# Problem sizes are runtime values (not specialised) so that one compiled kernel serves every layer
# shape of a network; strides stay specialised (divisibility by 16 enables vector loads).
WGRAD_SHAPE_ARGS = [
    'P', 'positions_per_split', 'D', 'H', 'W', 'Do', 'Ho', 'Wo', 'T', 'R', 'S', 'str_d', 'str_h', 'str_w',
    'pad_d', 'pad_h', 'pad_w', 'dil_d', 'dil_h', 'dil_w', 'groups', 'out_per_group', 'red_per_group', 'GB',
    'NB'
]


# Conv -> GEMM (wgrad): rows (BLOCK_M) over output channels K (group tiling of grouped.py, out =
# K/groups, red = C/groups), columns (BLOCK_N) over the flattened T*R*S*CT (tap, input channel of
# the tile's groups), CT = GB*C/groups, channel fastest; reduction (BLOCK_K) over this program's
# slice of the N*Do*Ho*Wo output positions. A = dy^T read from the NDHWC output gradient, B = the
# implicit im2col of the input (the gather of conv3d_fwd, transposed). Block-diagonal entries that
# pair a channel with another group's filter are computed and dropped. TAP_ALIGNED (CT % BLOCK_N
# == 0): a column block lies inside one tap, so the gather needs per-position coordinates only.
# W_RUNS (C=3 stem, grouped tiles): a column block is one (t, r) filter row, S*CT columns in S runs of
# the input row (one contiguous run when CT = C). DENSE_RUN as in conv3d_fwd: that run is S*C dense
# elements from a multiple of C (the stem on four-channel rows), loaded as vectors. TAP_RUNS (grouped
# tiles, CT a power of two >= 8 dividing BLOCK_N): a column block is BLOCK_N/CT whole taps, each a run of
# CT contiguous channels (CT = RUN_C as a constexpr, so the runs load as vectors); with a block as wide
# as all T*R*S*CT columns, dy is read once instead of once per filter row or tap.
@triton.jit(do_not_specialize=WGRAD_SHAPE_ARGS)
def conv3d_wgrad_kernel(
    dy_ptr, x_ptr, dst_ptr,
    P, positions_per_split, D, H, W, Do, Ho, Wo,
    T, R, S, str_d, str_h, str_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    groups, out_per_group, red_per_group, GB, NB,
    y_sn, y_sd, y_sh, y_sw, y_sc,
    x_sn, x_sd, x_sh, x_sw, x_sc,
    d_split, d_sk, d_sc, d_st, d_sr, d_ss,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    TAP_ALIGNED: tl.constexpr, W_RUNS: tl.constexpr, TAP_RUNS: tl.constexpr, RUN_C: tl.constexpr,
    BLOCK_DIAG: tl.constexpr,
    FULL_GROUPS: tl.constexpr, EVEN_OUT: tl.constexpr, DENSE_RUN: tl.constexpr, IS_FP32: tl.constexpr,
    TF32: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)

    g0, oc, row_group, row_mask = tile_channels(pid_m, groups, out_per_group, GB, NB, BLOCK_M)
    if EVEN_OUT:  # every row is a real output channel, contiguous from a multiple of BLOCK_M
        oc = g0 * out_per_group + (pid_m % NB) * BLOCK_M + tl.arange(0, BLOCK_M)
        oc = tl.max_contiguous(tl.multiple_of(oc, BLOCK_M), BLOCK_M)
    CT = GB * red_per_group
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if W_RUNS:  # column block = one (t, r) filter row: its S*CT (s, c) pairs, S runs of an input row
        t = pid_n // R
        r = pid_n - t * R
        s = tl.arange(0, BLOCK_N) // RUN_C  # RUN_C = CT as a constexpr (see conv3d_fwd's W_RUNS)
        cl = tl.arange(0, BLOCK_N) % RUN_C
    elif TAP_ALIGNED:
        tap = (pid_n * BLOCK_N) // CT
        cl = cols - tap * CT
        t, r, s = split_taps(tap, R, S)
    elif TAP_RUNS:  # whole taps of RUN_C = CT channels: tap and its coordinates constant along each run
        tap = pid_n * (BLOCK_N // RUN_C) + tl.arange(0, BLOCK_N) // RUN_C
        cl = tl.arange(0, BLOCK_N) % RUN_C
        t, r, s = split_taps(tap, R, S)
    else:
        tap = cols // CT
        cl = cols - tap * CT
        t, r, s = split_taps(tap, R, S)
    ch, c_in_group, red_group, col_mask = red_channels(g0, cl, red_per_group, groups, BLOCK_DIAG)
    if TAP_ALIGNED:  # the block's channels start at a multiple of BLOCK_N (CT and g0*Cg are multiples)
        ch = g0 * red_per_group + (pid_n * BLOCK_N - tap * CT) + tl.arange(0, BLOCK_N)
        ch = tl.max_contiguous(tl.multiple_of(ch, BLOCK_N), BLOCK_N)
    if W_RUNS:
        if FULL_GROUPS:  # every channel of the tile's groups is real: a mask constant along each run
            col_mask = s < S
        else:
            col_mask = col_mask & (s < S)
        if RUN_C >= 8 and (RUN_C & (RUN_C - 1)) == 0:  # runs start at multiples of RUN_C: vector loads
            ch = tl.max_contiguous(tl.multiple_of(g0 * red_per_group + cl, RUN_C), RUN_C)
        x_col = s * dil_w * x_sw + ch * x_sc
    elif TAP_RUNS:
        if FULL_GROUPS:  # a mask constant along each run keeps the loads vectorised
            col_mask = tap < T * R * S
        else:
            col_mask = col_mask & (tap < T * R * S)
        ch = tl.max_contiguous(tl.multiple_of(g0 * red_per_group + cl, RUN_C), RUN_C)
    else:
        col_mask = col_mask & (cols < T * R * S * CT)

    p_start = pid_k * positions_per_split
    p_end = tl.minimum(p_start + positions_per_split, P)
    kr = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(p_start, p_end, BLOCK_K):
        pos = k0 + kr
        pos_mask = pos < p_end
        n, od, oh, ow = split_rows(pos, Do, Ho, Wo)
        y_row = n.to(tl.int64) * y_sn + od * y_sd + oh * y_sh + ow * y_sw
        if EVEN_OUT:  # a mask constant along K (contiguous in dy) keeps the loads vectorised
            a_mask = pos_mask[None, :]
        else:
            a_mask = row_mask[:, None] & pos_mask[None, :]
        a = tl.load(dy_ptr + y_row[None, :] + (oc * y_sc)[:, None], mask=a_mask, other=0.0)
        if W_RUNS:
            id_ = od * str_d - pad_d + t * dil_d
            ih = oh * str_h - pad_h + r * dil_h
            bw = ow * str_w - pad_w
            row_ok = pos_mask & (id_ >= 0) & (id_ < D) & (ih >= 0) & (ih < H)
            row_off = n.to(tl.int64) * x_sn + id_ * x_sd + ih * x_sh + bw * x_sw
            iw = bw[:, None] + (s * dil_w)[None, :]
            if DENSE_RUN:  # column j of the block is element j of the row's run (s * C + c)
                b_ptrs = x_ptr + tl.multiple_of(row_off, RUN_C)[:, None] + tl.arange(0, BLOCK_N)[None, :]
            else:
                b_ptrs = x_ptr + row_off[:, None] + x_col[None, :]
            b = tl.load(b_ptrs, mask=row_ok[:, None] & col_mask[None, :] & (iw >= 0) & (iw < W), other=0.0)
        elif TAP_ALIGNED:
            if FULL_GROUPS:  # every column of the block is real: a row-only mask keeps loads vectorised
                b_mask = pos_mask[:, None]
            else:
                b_mask = pos_mask[:, None] & col_mask[None, :]
            b = gather_ndhwc(
                x_ptr, (n.to(tl.int64) * x_sn)[:, None], (od * str_d - pad_d + t * dil_d)[:, None],
                (oh * str_h - pad_h + r * dil_h)[:, None], (ow * str_w - pad_w + s * dil_w)[:, None],
                ch[None, :], b_mask, D, H, W, x_sd, x_sh, x_sw, x_sc,
            )
        else:
            b = gather_ndhwc(
                x_ptr, (n.to(tl.int64) * x_sn)[:, None], (od * str_d - pad_d)[:, None] + (t * dil_d)[None, :],
                (oh * str_h - pad_h)[:, None] + (r * dil_h)[None, :],
                (ow * str_w - pad_w)[:, None] + (s * dil_w)[None, :],
                ch[None, :], pos_mask[:, None] & col_mask[None, :], D, H, W, x_sd, x_sh, x_sw, x_sc,
            )
        acc = mma(a, b, acc, IS_FP32, TF32, UPCAST)

    mask = row_mask[:, None] & col_mask[None, :]
    if BLOCK_DIAG:
        mask = mask & (row_group[:, None] == red_group[None, :])
    dst = (dst_ptr + pid_k.to(tl.int64) * d_split + (oc * d_sk)[:, None]
           + (c_in_group * d_sc + t * d_st + r * d_sr + s * d_ss)[None, :])
    tl.store(dst, acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["numel", "split"])
def sum_splits_kernel(ws_ptr, out_ptr, numel, split, BLOCK: tl.constexpr):
    """out[i] = sum over slices of ws[slice, i] in slice order, rounded once to out's dtype."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < numel
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    ptrs = ws_ptr + i
    for _ in range(0, split):
        total += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += numel  # pointer arithmetic is 64-bit; split * numel may not fit int32
    tl.store(out_ptr + i, total.to(out_ptr.dtype.element_ty), mask=mask)


def conv3d_wgrad(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, p: Conv3dParams,
                 config: Optional[KernelConfig] = None) -> torch.Tensor:
    """dL/dw (K, C/groups, T, R, S) in w's dtype and memory format from dy (N, K, Do, Ho, Wo) and
    x (N, C, D, H, W). The one place wgrad's shapes are checked and its grid and split chosen."""
    if tuple(dy.shape) != p.out_shape or tuple(x.shape) != (p.batch, p.in_channels, *p.in_size):
        raise ValueError(f"grad_output {tuple(dy.shape)} / input {tuple(x.shape)} do not match {p}")
    if not (dy.dtype == x.dtype == w.dtype) or dy.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"triton wgrad needs matching fp16/bf16/fp32 tensors, got {dy.dtype}/{x.dtype}/{w.dtype}")
    fmt = memory_format_of(w)
    if on_four_channels(p):  # the zero channel's gradient is dropped
        w4 = torch.empty((p.out_channels, 4, *p.kernel), dtype=w.dtype, device="meta", memory_format=fmt)
        dw4 = conv3d_wgrad(dy, four_channel_copy(x), w4, four_channel_params(p), config)
        return dw4[:, :3].contiguous(memory_format=fmt)
    # TF32 is the one dot flag that can change at run time (torch's flag); the others follow the dtype
    key = (p, dy.dtype, dy.device, fmt, config, dy.dtype == torch.float32 and allow_tf32())
    plan = _plans.get(key)
    if plan is None:
        cfg = config or pick("wgrad", p, dy.dtype, dy.device, wgrad_candidates(p, dy.dtype, dy.device),
                             lambda c: conv3d_wgrad(dy, x, w, p, config=c))
        plan = _plans[key] = _wgrad_plan(p, cfg, fmt, dot_flags(dy.dtype), dy.device)
    split = plan.grid[2]
    dw = new_output(tuple(w.shape), dtype=w.dtype, device=dy.device, memory_format=fmt)
    dst = dw if split == 1 else new_output((split * p.out_channels, *w.shape[1:]), dtype=torch.float32,
                                           device=dy.device, memory_format=fmt)
    launch(conv3d_wgrad_kernel, plan.grid, (channels_last(dy), channels_last(x), dst), plan.args, plan.constexprs,
           plan_token=plan.token)
    if split > 1:
        sum_splits(dst, dw, split)
    return dw


def sum_splits(ws: torch.Tensor, out: torch.Tensor, split: int) -> None:
    """out = the in-order sum of ``split`` fp32 slabs of ``ws``, each laid out like the dense ``out``
    (split-K partials of wgrad and dgrad), rounded once to out's dtype."""
    block = 256 if INTERPRETED else 1024
    launch(sum_splits_kernel, (cdiv(out.numel(), block),), (ws, out), (out.numel(), split), dict(BLOCK=block))


_plans: Dict[tuple, LaunchPlan] = {}


def _wgrad_plan(p: Conv3dParams, cfg: KernelConfig, fmt, flags: dict, device: torch.device) -> LaunchPlan:
    tiling = group_tiling(p.groups, p.out_channels_per_group, p.in_channels_per_group, cfg.block_m)
    runs = w_runs(p, cfg, tiling)
    tap_runs = not runs and tiling.tap_runs_fit(cfg.block_n)
    cols = p.kernel[0] * p.kernel[1] * p.kernel[2] * tiling.red_per_tile
    col_tiles = p.kernel[0] * p.kernel[1] if runs else cdiv(cols, cfg.block_n)
    positions = p.gemm_m
    split = wgrad_split(tiling.num_tiles, col_tiles, positions, cfg, device)
    per_split = cdiv(cdiv(positions, split), cfg.block_k) * cfg.block_k
    split = cdiv(positions, per_split)
    w_shape = (p.out_channels, p.in_channels_per_group, *p.kernel)
    dst_like = dense_like(w_shape if split == 1 else (split * p.out_channels, *w_shape[1:]), fmt)
    args = (
        positions, per_split, *p.in_size, *p.out_size,
        *p.kernel, *p.stride, *p.padding, *p.dilation,
        *tiling.kernel_args(),
        *ndhwc_strides(dense_like(p.out_shape, torch.channels_last_3d)),
        *ndhwc_strides(dense_like((p.batch, p.in_channels, *p.in_size), torch.channels_last_3d)),
        0 if split == 1 else p.out_channels * dst_like.stride(0), *kernel_strides(dst_like),
    )
    constexprs = dict(
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        TAP_ALIGNED=tiling.red_per_tile % cfg.block_n == 0, W_RUNS=runs, TAP_RUNS=tap_runs,
        RUN_C=tiling.red_per_tile if runs or tap_runs else 1, BLOCK_DIAG=tiling.block_diagonal,
        FULL_GROUPS=tiling.full_groups, EVEN_OUT=tiling.even_out,
        DENSE_RUN=tiling.dense_run(p, runs),
        **flags, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return LaunchPlan(cfg, (tiling.num_tiles, col_tiles, split), args, constexprs)


def w_runs(p: Conv3dParams, cfg: KernelConfig, tiling) -> bool:
    """Column blocks of one (t, r) filter row (W_RUNS): taps narrower than a column block (the C=3 stem,
    grouped tiles with CT = 16-32 channels), and the row's S*CT columns fill more than half of one block.
    dy is re-read once per column block: 9 blocks instead of 27 tap blocks for a grouped 3x3x3 conv.
    Wider blocks take the flattened loop: on the ResNeXt-101 stem (H200, bf16) 128x64x32 flattened ran
    3.24 ms against 5.25 ms for one 21-column row per 32-wide block."""
    return tiling.row_run_fits(p.kernel[2], cfg.block_n) and cfg.block_n < 2 * p.kernel[2] * tiling.red_per_tile
