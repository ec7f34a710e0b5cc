"""Forward 3D convolution as implicit GEMM with a fused epilogue.

Epilogues (constexpr flags, any combination):
* conv bias / inference form: ``act(acc * scale + shift [+ residual])`` rounded once (STORE_OUT);
* the pre-BN conv output ``c`` rounded to the data dtype (STORE_CONV);
* training form: per-(row tile, channel) partial BatchNorm statistics of the rounded ``c``: the tile
  sum and the sum of squared deviations from the tile mean (STATS). bn.py combines them in a fixed
  order (Chan et al.), so the statistics are deterministic and do not suffer from E[x^2] - E[x]^2
  cancellation.

Split-K (SPLIT_K): layers whose output tiles cannot fill the device (the deep 3x3x3 layers: 128-784
output rows against a 7-14k long reduction) cut the reduction into contiguous slices along grid axis 2.
Each slice writes its fp32 partial tile; ``splitk_epilogue_kernel`` sums the slices in slice order
(deterministic) and applies the same epilogue, statistics included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import triton
import triton.language as tl

from ...debug import new_output
from ...params import Conv3dParams, memory_format_of
from .autotune import KernelConfig, fwd_candidates, fwd_split, pick
from .common import (
    KERNEL_DTYPES,
    allow_tf32,
    cdiv,
    channels_last,
    LaunchPlan,
    dense_like,
    dot_flags,
    four_channel_copy,
    four_channel_params,
    gather_ndhwc,
    kernel_strides,
    launch,
    mma,
    ndhwc_strides,
    next_pow2,
    on_four_channels,
    split_rows,
    split_taps,
)
from .grouped import group_tiling, red_channels, tile_channels


# Problem sizes are runtime values (not specialised) so that one compiled kernel serves every layer
# shape of a network; strides stay specialised (divisibility by 16 enables vector loads).
FWD_SHAPE_ARGS = [
    'M', 'D', 'H', 'W', 'Do', 'Ho', 'Wo', 'C', 'K', 'T', 'R', 'S', 'str_d', 'str_h', 'str_w', 'pad_d',
    'pad_h', 'pad_w', 'dil_d', 'dil_h', 'dil_w', 'groups', 'out_per_group', 'red_per_group', 'GB', 'NB',
    'steps_per_split',
]


# Conv -> GEMM: rows (BLOCK_M) over N*Do*Ho*Wo output positions, columns (BLOCK_N) over output
# channels K (a tile holds GB whole groups or part of one, see grouped.py), reduction (BLOCK_K) over
# the flattened T*R*S*CT with CT = GB*C/groups, channel fastest. The A tile is gathered from the
# NDHWC input (implicit im2col, zero padding by masks); B is the KTRSC weight, block-diagonal when a
# tile spans several groups. TAP_ALIGNED (CT % BLOCK_K == 0) keeps each K step inside one tap, so the
# gather needs per-row coordinates only; otherwise (C=3 stem, small groups) a K step spans taps and
# coordinates are per (row, column) -- no per-tap padding either way. W_RUNS (C=3 stem, grouped tiles
# with BLOCK_K > CT): a K step is one (t, r) filter row, whose S*CT (s, c) pairs lie in S runs of the
# NDHWC input row (one contiguous run when CT = C), so the per-element gather work is an add and a
# loop-invariant mask (padding S*CT up to BLOCK_K), and a 3x3x3 conv takes 9 K steps instead of 27.
# DENSE_RUN (W_RUNS with one group, CT = C, dilation 1 in W): that run is S*C contiguous elements in
# both the input row and the weight row, starting at a multiple of C; the launcher pads the C = 3 stem
# to C = 4, so its runs load as 8-byte vectors instead of 2-byte elements. TAP_RUNS (CT = RUN_C a power of
# two >= 8 dividing a wider BLOCK_K): a K step is BLOCK_K/CT whole taps of CT contiguous channels, vector
# loads per tap; a 128-wide step takes 8 taps of a 16-channel tile, so a 3x3x3 conv is 4 K steps (W_RUNS:
# 9), the loop that sets the time of the latency-bound ResNeXt stages 3-4.
@triton.jit(do_not_specialize=FWD_SHAPE_ARGS)
def conv3d_fwd_kernel(
    x_ptr, w_ptr, out_ptr, conv_ptr, res_ptr, scale_ptr, shift_ptr, psum_ptr, pm2_ptr, ws_ptr,
    M, D, H, W, Do, Ho, Wo, C, K,
    T, R, S, str_d, str_h, str_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    groups, out_per_group, red_per_group, GB, NB, steps_per_split,
    x_sn, x_sd, x_sh, x_sw, x_sc,
    w_sk, w_sc, w_st, w_sr, w_ss,
    o_sn, o_sd, o_sh, o_sw, o_sc,
    r_sn, r_sd, r_sh, r_sw, r_sc,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    TAP_ALIGNED: tl.constexpr, W_RUNS: tl.constexpr, TAP_RUNS: tl.constexpr, RUN_C: tl.constexpr,
    BLOCK_DIAG: tl.constexpr, FULL_GROUPS: tl.constexpr, EVEN_OUT: tl.constexpr, DENSE_RUN: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
    STORE_OUT: tl.constexpr, STORE_CONV: tl.constexpr, STATS: tl.constexpr, SPLIT_K: tl.constexpr,
    IS_FP32: tl.constexpr, TF32: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = m < M
    n, od, oh, ow = split_rows(m, Do, Ho, Wo)
    base_d = od * str_d - pad_d
    base_h = oh * str_h - pad_h
    base_w = ow * str_w - pad_w
    n_off = n.to(tl.int64) * x_sn

    g0, out_ch, col_group, col_mask = tile_channels(pid_n, groups, out_per_group, GB, NB, BLOCK_N)
    if EVEN_OUT:  # every column is real and they run contiguously from a multiple of BLOCK_N
        out_ch = g0 * out_per_group + (pid_n % NB) * BLOCK_N + tl.arange(0, BLOCK_N)
        out_ch = tl.max_contiguous(tl.multiple_of(out_ch, BLOCK_N), BLOCK_N)
    CT = GB * red_per_group
    k_total = T * R * S * CT
    kr = tl.arange(0, BLOCK_K)
    if W_RUNS:  # K steps over (t, r); a step's columns are the S*CT (s, c) pairs of one input row segment
        k_total = T * R * BLOCK_K
        # RUN_C = CT as a constexpr: the compiler then sees runs of RUN_C contiguous channels per s,
        # which (RUN_C a power of two >= 8, starting at multiples of RUN_C) become 16-byte vector loads
        s_col = kr // RUN_C
        c_col = kr % RUN_C
        ch_col, in_group, red_group, red_valid = red_channels(g0, c_col, red_per_group, groups, BLOCK_DIAG)
        col_ok = kr < S * RUN_C
        if not FULL_GROUPS:  # else every channel of the tile's groups is real
            col_ok = col_ok & red_valid
        if RUN_C >= 8 and (RUN_C & (RUN_C - 1)) == 0:
            ch_col = tl.max_contiguous(tl.multiple_of(g0 * red_per_group + c_col, RUN_C), RUN_C)
        x_col = s_col * dil_w * x_sw + ch_col * x_sc
        w_col = in_group * w_sc + s_col * w_ss
        iw = base_w[:, None] + (s_col * dil_w)[None, :]
        w_ok = col_ok[None, :] & (iw >= 0) & (iw < W)  # loop-invariant part of the gather mask
        w_b_ok = col_ok[:, None] & col_mask[None, :]
        if BLOCK_DIAG:  # a column's weights are zero outside its own group
            w_b_ok = w_b_ok & (red_group[:, None] == col_group[None, :])

    # Masks are kept as narrow as the path allows (row-only / column-only): a mask that is constant
    # along the contiguous axis lets the loads vectorise and the pipeliner turn them into async copies.
    k_begin = 0
    k_end = k_total
    if SPLIT_K:  # this program's slice of the K steps
        k_begin = tl.program_id(2) * steps_per_split * BLOCK_K
        k_end = tl.minimum(k_total, k_begin + steps_per_split * BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        if W_RUNS:
            tr = k0 // BLOCK_K
            t = tr // R
            r = tr - t * R
            id_ = base_d + t * dil_d
            ih = base_h + r * dil_h
            row_ok = row_mask & (id_ >= 0) & (id_ < D) & (ih >= 0) & (ih < H)
            row_off = n_off + id_ * x_sd + ih * x_sh + base_w * x_sw
            if DENSE_RUN:  # column kr of the step is element kr of the row's run (s * C + c)
                row_off = tl.multiple_of(row_off, RUN_C)
                a = tl.load(x_ptr + row_off[:, None] + kr[None, :], mask=row_ok[:, None] & w_ok, other=0.0)
                w_row = tl.multiple_of(out_ch * w_sk + t * w_st + r * w_sr, RUN_C)
                b = tl.load(w_ptr + w_row[None, :] + kr[:, None], mask=w_b_ok, other=0.0)
            else:
                a = tl.load(x_ptr + row_off[:, None] + x_col[None, :], mask=row_ok[:, None] & w_ok, other=0.0)
                b = tl.load(w_ptr + out_ch[None, :] * w_sk + (w_col + t * w_st + r * w_sr)[:, None],
                            mask=w_b_ok, other=0.0)
        elif TAP_ALIGNED:
            tap = k0 // CT
            c0 = k0 - tap * CT  # a multiple of BLOCK_K, as is g0 * red_per_group
            t, r, s = split_taps(tap, R, S)
            ch, in_group, red_group, red_valid = red_channels(g0, c0 + kr, red_per_group, groups, BLOCK_DIAG)
            ch = tl.max_contiguous(tl.multiple_of(g0 * red_per_group + c0 + kr, BLOCK_K), BLOCK_K)
            if FULL_GROUPS:
                a_mask = row_mask[:, None]
            else:
                a_mask = row_mask[:, None] & red_valid[None, :]
            a = gather_ndhwc(
                x_ptr, n_off[:, None], (base_d + t * dil_d)[:, None], (base_h + r * dil_h)[:, None],
                (base_w + s * dil_w)[:, None], ch[None, :], a_mask, D, H, W, x_sd, x_sh, x_sw, x_sc,
            )
            if BLOCK_DIAG:
                w_red = in_group
                b_mask = red_valid[:, None] & (red_group[:, None] == col_group[None, :]) & col_mask[None, :]
            else:  # one group per tile: the step's weight channels are c0 .. c0 + BLOCK_K, all real
                w_red = tl.max_contiguous(tl.multiple_of(c0 + kr, BLOCK_K), BLOCK_K)
                b_mask = col_mask[None, :]
            w_tap = t * w_st + r * w_sr + s * w_ss
            b = tl.load(w_ptr + out_ch[None, :] * w_sk + (w_red * w_sc + w_tap)[:, None], mask=b_mask, other=0.0)
        else:
            if TAP_RUNS:  # whole taps of RUN_C = CT channels (k0 is a multiple of BLOCK_K, hence of RUN_C)
                tap = k0 // RUN_C + kr // RUN_C
                cl = kr % RUN_C
            else:
                tap = (k0 + kr) // CT
                cl = k0 + kr - tap * CT
            t, r, s = split_taps(tap, R, S)
            ch, in_group, red_group, red_valid = red_channels(g0, cl, red_per_group, groups, BLOCK_DIAG)
            if TAP_RUNS:  # masks and addresses constant / contiguous along each run: vector loads
                ch = tl.max_contiguous(tl.multiple_of(g0 * red_per_group + cl, RUN_C), RUN_C)
                if not BLOCK_DIAG:
                    in_group = tl.max_contiguous(tl.multiple_of(cl, RUN_C), RUN_C)
                if FULL_GROUPS:
                    red_valid = tap < T * R * S
                else:
                    red_valid = red_valid & (tap < T * R * S)
            else:
                red_valid = red_valid & (k0 + kr < k_total)
            a = gather_ndhwc(
                x_ptr, n_off[:, None], base_d[:, None] + (t * dil_d)[None, :],
                base_h[:, None] + (r * dil_h)[None, :], base_w[:, None] + (s * dil_w)[None, :],
                ch[None, :], row_mask[:, None] & red_valid[None, :],
                D, H, W, x_sd, x_sh, x_sw, x_sc,
            )
            b_mask = red_valid[:, None] & col_mask[None, :]
            if BLOCK_DIAG:
                b_mask = b_mask & (red_group[:, None] == col_group[None, :])
            w_tap = t * w_st + r * w_sr + s * w_ss
            b = tl.load(w_ptr + out_ch[None, :] * w_sk + (in_group * w_sc + w_tap)[:, None], mask=b_mask, other=0.0)
        acc = mma(a, b, acc, IS_FP32, TF32, UPCAST)

    # ---- epilogue ----
    if SPLIT_K:
        ws = (ws_ptr + tl.program_id(2).to(tl.int64) * M * K + (m.to(tl.int64) * K)[:, None] + out_ch[None, :])
        tl.store(ws, acc, mask=row_mask[:, None] & col_mask[None, :])
    else:
        if EVEN_OUT:
            mask = row_mask[:, None]
        else:
            mask = row_mask[:, None] & col_mask[None, :]
        epilogue(acc, pid_m, n, od, oh, ow, row_mask, out_ch, col_mask, mask, M, K,
                 out_ptr, conv_ptr, res_ptr, scale_ptr, shift_ptr, psum_ptr, pm2_ptr,
                 o_sn, o_sd, o_sh, o_sw, o_sc, r_sn, r_sd, r_sh, r_sw, r_sc,
                 BLOCK_M, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU, STORE_OUT, STORE_CONV, STATS)


@triton.jit
def epilogue(acc, pid_m, n, od, oh, ow, row_mask, out_ch, col_mask, mask, M, K,
             out_ptr, conv_ptr, res_ptr, scale_ptr, shift_ptr, psum_ptr, pm2_ptr,
             o_sn, o_sd, o_sh, o_sw, o_sc, r_sn, r_sd, r_sh, r_sw, r_sc,
             BLOCK_M: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RES: tl.constexpr,
             RELU: tl.constexpr, STORE_OUT: tl.constexpr, STORE_CONV: tl.constexpr, STATS: tl.constexpr):
    """Stores of a finished fp32 tile (rows m = pid_m * BLOCK_M + ..., channels out_ch): the rounded
    conv output, its per-tile BN partials, and act(acc * scale + shift + residual)."""
    o_row = n.to(tl.int64) * o_sn + od * o_sd + oh * o_sh + ow * o_sw
    o_offs = o_row[:, None] + (out_ch * o_sc)[None, :]
    if STORE_CONV or STATS:
        c = acc.to(conv_ptr.dtype.element_ty)
        if STORE_CONV:
            tl.store(conv_ptr + o_offs, c, mask=mask)
        if STATS:
            valid = row_mask[:, None] & col_mask[None, :]
            cf = tl.where(valid, c.to(tl.float32), 0.0)
            rows = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M).to(tl.float32)
            tile_sum = tl.sum(cf, axis=0)
            dev = tl.where(valid, cf - (tile_sum / rows)[None, :], 0.0)
            tile_m2 = tl.sum(dev * dev, axis=0)
            tl.store(psum_ptr + pid_m * K + out_ch, tile_sum, mask=col_mask)
            tl.store(pm2_ptr + pid_m * K + out_ch, tile_m2, mask=col_mask)
    if STORE_OUT:
        v = acc
        if HAS_SCALE:
            v = v * tl.load(scale_ptr + out_ch, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_SHIFT:
            v = v + tl.load(shift_ptr + out_ch, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            r_row = n.to(tl.int64) * r_sn + od * r_sd + oh * r_sh + ow * r_sw
            res = tl.load(res_ptr + r_row[:, None] + (out_ch * r_sc)[None, :], mask=mask, other=0.0)
            v = v + res.to(tl.float32)
        if RELU:
            v = tl.maximum(v, 0.0)
        tl.store(out_ptr + o_offs, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "K", "Do", "Ho", "Wo", "split"])
def splitk_epilogue_kernel(
    ws_ptr, out_ptr, conv_ptr, res_ptr, scale_ptr, shift_ptr, psum_ptr, pm2_ptr,
    M, K, Do, Ho, Wo, split,
    o_sn, o_sd, o_sh, o_sw, o_sc,
    r_sn, r_sd, r_sh, r_sw, r_sc,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
    STORE_OUT: tl.constexpr, STORE_CONV: tl.constexpr, STATS: tl.constexpr,
):
    """Sum of the split-K partials ws[split, M, K] in slice order, then the conv kernel's epilogue.
    Row tiles are the conv's BLOCK_M, so the BN partials have the same tiling as without split-K."""
    pid_m = tl.program_id(0)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask = m < M
    col_mask = ch < K
    mask = row_mask[:, None] & col_mask[None, :]
    ptrs = ws_ptr + (m.to(tl.int64) * K)[:, None] + ch[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for _ in range(0, split):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += M.to(tl.int64) * K
    n, od, oh, ow = split_rows(m, Do, Ho, Wo)
    epilogue(acc, pid_m, n, od, oh, ow, row_mask, ch, col_mask, mask, M, K,
             out_ptr, conv_ptr, res_ptr, scale_ptr, shift_ptr, psum_ptr, pm2_ptr,
             o_sn, o_sd, o_sh, o_sw, o_sc, r_sn, r_sd, r_sh, r_sw, r_sc,
             BLOCK_M, HAS_SCALE, HAS_SHIFT, HAS_RES, RELU, STORE_OUT, STORE_CONV, STATS)


@dataclass
class FwdResult:
    out: Optional[torch.Tensor]  # epilogue output, input's memory format
    conv: Optional[torch.Tensor]  # rounded conv output c, input's memory format
    tile_sum: Optional[torch.Tensor]  # (row tiles, K) fp32 partial sums of c
    tile_m2: Optional[torch.Tensor]  # (row tiles, K) fp32 partial sums of squared deviations
    block_m: int


def conv3d_fwd(
    x: torch.Tensor,
    w: torch.Tensor,
    p: Conv3dParams,
    *,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    relu: bool = False,
    store_out: bool = True,
    store_conv: bool = False,
    stats: bool = False,
    config: Optional[KernelConfig] = None,
) -> FwdResult:
    """Launch the forward kernel; the one place its shapes are checked and its grid chosen.

    x: (N, C, D, H, W) fp16/bf16/fp32, any layout (gathered from an NDHWC copy when not already).
    w: (K, C/groups, T, R, S), same dtype. scale/shift: (K,) fp32 or x.dtype, contiguous.
    residual: output shape, any layout. Outputs are in x's memory format (params.memory_format_of).
    """
    dtype = x.dtype
    if dtype not in KERNEL_DTYPES or w.dtype != dtype:
        raise TypeError(f"triton conv3d forward needs fp16/bf16/fp32 input and weight, got {dtype}/{w.dtype}")
    if x.shape != (p.batch, p.in_channels, *p.in_size) or w.shape[:2] != (p.out_channels, p.in_channels_per_group):
        raise ValueError(f"input {tuple(x.shape)} / weight {tuple(w.shape)} do not match {p}")
    if residual is not None and residual.shape != p.out_shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != output shape {p.out_shape}")
    if not (store_out or store_conv or stats):
        raise ValueError("conv3d_fwd called with nothing to produce")
    fmt = memory_format_of(x)
    if on_four_channels(p):
        x, w, p = four_channel_copy(x), four_channel_copy(w), four_channel_params(p)
    # the plan key holds every flag the kernel is specialised on, TF32 included (torch's flag may change)
    key = (p, dtype, x.device, fmt, None if residual is None else residual.stride(), config, scale is None,
           shift is None, relu, store_out, store_conv, stats, dtype == torch.float32 and allow_tf32())
    plan = _plans.get(key)
    if plan is None:
        flags = dict(HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, HAS_RES=residual is not None,
                     RELU=relu, STORE_OUT=store_out, STORE_CONV=store_conv, STATS=stats, **dot_flags(dtype))
        cfg = config or pick(
            "fwd", p, dtype, x.device, fwd_candidates(p, dtype, x.device),
            lambda c: conv3d_fwd(x, w, p, scale=scale, shift=shift, residual=residual, relu=relu,
                                 store_out=store_out, store_conv=store_conv, stats=stats, config=c),
        )
        plan = _plans[key] = _fwd_plan(p, cfg, fmt, residual, flags, x.device)
    xc, wc = channels_last(x), channels_last(w)
    out = new_output(p.out_shape, dtype=dtype, device=x.device, memory_format=fmt) if store_out else None
    conv = new_output(p.out_shape, dtype=dtype, device=x.device, memory_format=fmt) if store_conv else None
    tile_sum = tile_m2 = None
    if stats:
        tile_sum = new_output((plan.row_tiles, p.out_channels), dtype=torch.float32, device=x.device)
        tile_m2 = new_output((plan.row_tiles, p.out_channels), dtype=torch.float32, device=x.device)
    ws = None
    if plan.epilogue is not None:
        ws = new_output((plan.conv.grid[2], p.gemm_m, p.out_channels), dtype=torch.float32, device=x.device)
    # Pointers behind switched-off flags are never dereferenced; any tensor of the right dtype will do.
    written = out if out is not None else conv
    epilogue_ptrs = (
        xc if out is None else out, written if conv is None else conv, written if residual is None else residual,
        xc if scale is None else scale, xc if shift is None else shift,
        xc if tile_sum is None else tile_sum, xc if tile_m2 is None else tile_m2,
    )
    launch(conv3d_fwd_kernel, plan.conv.grid, (xc, wc, *epilogue_ptrs, xc if ws is None else ws),
           plan.conv.args, plan.conv.constexprs, plan_token=plan.conv.token)
    if ws is not None:
        launch(splitk_epilogue_kernel, plan.epilogue.grid, (ws, *epilogue_ptrs), plan.epilogue.args,
               plan.epilogue.constexprs, plan_token=plan.epilogue.token)
    return FwdResult(out, conv, tile_sum, tile_m2, plan.conv.cfg.block_m)


@dataclass(frozen=True)
class FwdPlan:
    conv: LaunchPlan
    epilogue: Optional[LaunchPlan]  # the split-K reduction + epilogue launch (None without split-K)
    row_tiles: int  # BLOCK_M row tiles: the rows of the BN partials


_plans: Dict[tuple, FwdPlan] = {}


def w_runs(p: Conv3dParams, cfg: KernelConfig, tiling) -> bool:
    """The row-segment K loop (W_RUNS): the tile's channels per tap (CT) are narrower than a K step and
    a whole (s, c) run of S*CT channels fits one: the C=3 stem (S*C = 21 of 32), and grouped tiles
    (ResNeXt: CT = 16 -> 48 of 64), which then walk the T*R = 9 filter rows instead of 27 taps."""
    return tiling.row_runs_preferred(p.kernel[2], cfg.block_k)


def _fwd_plan(p: Conv3dParams, cfg: KernelConfig, fmt, residual: Optional[torch.Tensor], flags: dict,
              device: torch.device) -> FwdPlan:
    """Everything about a launch that depends only on the problem: computed once per problem."""
    tiling = group_tiling(p.groups, p.out_channels_per_group, p.in_channels_per_group, cfg.block_n)
    tap_aligned = tiling.red_per_tile % cfg.block_k == 0
    runs = w_runs(p, cfg, tiling)
    tap_runs = not runs and tiling.tap_runs_fit(cfg.block_k)
    k_steps = p.kernel[0] * p.kernel[1] if runs else cdiv(
        p.kernel[0] * p.kernel[1] * p.kernel[2] * tiling.red_per_tile, cfg.block_k)
    row_tiles = cdiv(p.gemm_m, cfg.block_m)
    split = fwd_split(row_tiles * tiling.num_tiles, k_steps, cfg, device)
    steps_per_split = cdiv(k_steps, split)
    split = cdiv(k_steps, steps_per_split)  # no empty slice
    x_like = dense_like((p.batch, p.in_channels, *p.in_size), torch.channels_last_3d)
    w_like = dense_like((p.out_channels, p.in_channels_per_group, *p.kernel), torch.channels_last_3d)
    out_like = dense_like(p.out_shape, fmt)
    res_like = out_like if residual is None else residual
    out_strides = (*ndhwc_strides(out_like), *ndhwc_strides(res_like))
    args = (
        p.gemm_m, *p.in_size, *p.out_size, p.in_channels, p.out_channels,
        *p.kernel, *p.stride, *p.padding, *p.dilation,
        *tiling.kernel_args(), steps_per_split,
        *ndhwc_strides(x_like), *kernel_strides(w_like), *out_strides,
    )
    constexprs = dict(
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        TAP_ALIGNED=tap_aligned, W_RUNS=runs, TAP_RUNS=tap_runs,
        RUN_C=tiling.red_per_tile if runs or tap_runs else 1,
        BLOCK_DIAG=tiling.block_diagonal,
        FULL_GROUPS=tiling.full_groups, EVEN_OUT=tiling.even_out,
        DENSE_RUN=tiling.dense_run(p, runs),
        **flags, SPLIT_K=split > 1,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    conv = LaunchPlan(cfg, (row_tiles, tiling.num_tiles, split), args, constexprs)
    epilogue = None
    if split > 1:
        block_c = max(16, min(64, next_pow2(p.out_channels)))
        epi_flags = {k: v for k, v in flags.items() if k not in ("IS_FP32", "TF32", "UPCAST")}
        epilogue = LaunchPlan(
            cfg, (row_tiles, cdiv(p.out_channels, block_c)),
            (p.gemm_m, p.out_channels, *p.out_size, split, *out_strides),
            dict(BLOCK_M=cfg.block_m, BLOCK_C=block_c, **epi_flags, num_warps=4),
        )
    return FwdPlan(conv, epilogue, row_tiles)
