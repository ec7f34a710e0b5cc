"""Per-channel kernels around the convolutions: BatchNorm statistics finalize, BN-apply + residual +
ReLU, the backward reductions (dReLU fused) and the gradient prologue that turns the output gradient
into the conv-output gradient (BN backward / affine scale, dReLU fused).

All of them view a 5-D (N, K, D, H, W) tensor of any layout as a [rows = N*D*H*W, K] matrix through
its (N, D, H, W, C) strides. Reductions are two-level and deterministic: each row tile writes its
partial per channel, then one program per channel block combines the tiles in index order.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ...debug import new_output
from .common import INTERPRETED, cdiv, launch, ndhwc_strides, next_pow2, split_rows

# Combine loops (finalize, sum_tiles): tile partials read per step, and channels per program. They run
# serially over all row tiles (3136 for the ResNeXt-101 stem at batch 8), so on a GPU narrow channel
# blocks give more programs and deep steps fewer iterations (64x64 took 0.21 ms there).
FINALIZE_TILES = 64 if INTERPRETED else 128
FINALIZE_CHANNELS = 64 if INTERPRETED else 16
# The same step inside BN-apply, whose programs hold a 64-channel block: 16 tiles x 64 channels keeps the
# loads at 8 registers per thread (128 tiles spilled there: 255 registers + 40 bytes of stack on sm_90).
APPLY_FINALIZE_TILES = 64 if INTERPRETED else 16
# sizes are runtime values so one compiled kernel serves every layer (strides stay specialised)
ROWS_ARGS = ["M", "K", "Dd", "Hh", "Ww"]


def _elementwise_blocks(channels: int) -> Tuple[int, int]:
    """(BLOCK_M rows, BLOCK_C channels) of the per-channel elementwise/reduction kernels."""
    return (128 if INTERPRETED else 64), min(64, max(16, next_pow2(channels)))


@triton.jit
def _tile(m, ch, Dd, Hh, Ww, s_n, s_d, s_h, s_w, s_c):
    """Element offsets of the [rows m, channels ch] tile of a tensor with (N, D, H, W, C) strides."""
    n, d, h, w = split_rows(m, Dd, Hh, Ww)
    return (n.to(tl.int64) * s_n + d * s_d + h * s_h + w * s_w)[:, None] + (ch * s_c)[None, :]


@triton.jit
def _bn_input_grad(gz, c, mean, scale, mean_g, proj):
    """dL/dc of training-mode BatchNorm, per element: scale * (gz - mean(gz) - (c - mean) * proj), with
    scale = gamma / sqrt(var + eps), mean_g = sum(gz) / M, proj = sum(gz * xhat) / M / sqrt(var + eps)."""
    return scale[None, :] * (gz - mean_g[None, :] - (c - mean[None, :]) * proj[None, :])


# ------------------------------------------------------------------------------------------------
# forward: finalize statistics (and the running statistics), apply
#
# The per-channel statistics live in one (4, K) fp32 buffer: mean, biased var, a = gamma / sqrt(var + eps),
# b = beta - mean * a (one allocation instead of four: on a GPU host each costs several microseconds, and
# at batch 8 most layers are launch-bound).
# ------------------------------------------------------------------------------------------------
@triton.jit
def _combine_tiles(tile_sum_ptr, tile_m2_ptr, ch, cmask, num_tiles, rows_per_tile, M, K,
                   BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Chan's combination of per-tile (sum, M2) into the batch mean and biased variance of channels ch."""
    total = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for t0 in range(0, num_tiles, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mask = (t < num_tiles)[:, None] & cmask[None, :]
        total += tl.sum(tl.load(tile_sum_ptr + t[:, None] * K + ch[None, :], mask=mask, other=0.0), axis=0)
    mean = total / M
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for t0 in range(0, num_tiles, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tmask = t < num_tiles
        mask = tmask[:, None] & cmask[None, :]
        rows = tl.minimum(M - t * rows_per_tile, rows_per_tile).to(tl.float32)
        rows = tl.where(tmask, rows, 1.0)
        s = tl.load(tile_sum_ptr + t[:, None] * K + ch[None, :], mask=mask, other=0.0)
        q = tl.load(tile_m2_ptr + t[:, None] * K + ch[None, :], mask=mask, other=0.0)
        delta = s / rows[:, None] - mean[None, :]
        m2 += tl.sum(tl.where(mask, q + rows[:, None] * delta * delta, 0.0), axis=0)
    return mean, m2 / M


@triton.jit
def _lerp(start, end, weight):
    """torch.lerp's formula (the running-statistics update of nn.BatchNorm), in fp32."""
    if weight < 0.5:
        result = start + weight * (end - start)
    else:
        result = end - (end - start) * (1.0 - weight)
    return result


@triton.jit
def _finalize_channels(tile_sum_ptr, tile_m2_ptr, gamma_ptr, beta_ptr, stats_ptr, rm_ptr, rv_ptr,
                       ch, cmask, wmask, num_tiles, rows_per_tile, M, K, eps, factor, unbias,
                       RUNNING: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """(a, b) of channels ch (valid where cmask); stores mean/var/a/b to stats where wmask and, with
    RUNNING, updates the fp32 running statistics there in place: rm = lerp(rm, mean, factor),
    rv = lerp(rv, var * M/(M-1), factor)."""
    mean, var = _combine_tiles(tile_sum_ptr, tile_m2_ptr, ch, cmask, num_tiles, rows_per_tile, M, K,
                               BLOCK_T, BLOCK_C)
    a = tl.load(gamma_ptr + ch, mask=cmask, other=1.0).to(tl.float32) / tl.sqrt(var + eps)
    b = tl.load(beta_ptr + ch, mask=cmask, other=0.0).to(tl.float32) - mean * a
    tl.store(stats_ptr + ch, mean, mask=wmask)
    tl.store(stats_ptr + K + ch, var, mask=wmask)
    tl.store(stats_ptr + 2 * K + ch, a, mask=wmask)
    tl.store(stats_ptr + 3 * K + ch, b, mask=wmask)
    if RUNNING:
        rm = tl.load(rm_ptr + ch, mask=wmask, other=0.0)
        rv = tl.load(rv_ptr + ch, mask=wmask, other=0.0)
        tl.store(rm_ptr + ch, _lerp(rm, mean, factor), mask=wmask)
        tl.store(rv_ptr + ch, _lerp(rv, var * unbias, factor), mask=wmask)
    return a, b


@triton.jit(do_not_specialize=["num_tiles", "rows_per_tile", "M", "K"])
def bn_finalize_kernel(
    tile_sum_ptr, tile_m2_ptr, gamma_ptr, beta_ptr, stats_ptr, rm_ptr, rv_ptr,
    num_tiles, rows_per_tile, M, K, eps, factor, unbias,
    RUNNING: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Batch statistics and the BN-apply affine (a, b) per channel from the conv epilogue's partials."""
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = ch < K
    _finalize_channels(tile_sum_ptr, tile_m2_ptr, gamma_ptr, beta_ptr, stats_ptr, rm_ptr, rv_ptr,
                       ch, cmask, cmask, num_tiles, rows_per_tile, M, K, eps, factor, unbias,
                       RUNNING, BLOCK_T, BLOCK_C)


def _running_args(running, stats: torch.Tensor, count: int) -> Tuple[tuple, tuple, bool]:
    """(running-statistics tensors, (factor, unbias) floats, RUNNING) kernel arguments."""
    if running is None:
        return (stats, stats), (0.0, 1.0), False
    return (running.mean, running.var), (float(running.factor), count / (count - 1)), True


def bn_finalize(tile_sum: torch.Tensor, tile_m2: torch.Tensor, rows_per_tile: int, count: int,
                gamma: torch.Tensor, beta: torch.Tensor, eps: float, running=None) -> torch.Tensor:
    """(4, K) fp32 stats (mean, biased var, a, b) from the conv epilogue's per-tile partials; updates
    ``running`` (base.RunningStats with fp32 buffers, or None) in place."""
    num_tiles, K = tile_sum.shape
    stats = new_output((4, K), dtype=torch.float32, device=tile_sum.device)
    block_c = min(FINALIZE_CHANNELS, max(16, next_pow2(K)))
    run_t, run_f, has_running = _running_args(running, stats, count)
    launch(bn_finalize_kernel, (cdiv(K, block_c),), (tile_sum, tile_m2, gamma, beta, stats, *run_t),
           (num_tiles, rows_per_tile, count, K), dict(RUNNING=has_running, BLOCK_T=FINALIZE_TILES, BLOCK_C=block_c),
           floats=(float(eps), *run_f))
    return stats


@triton.jit(do_not_specialize=ROWS_ARGS + ["num_tiles", "rows_per_tile"])
def channel_affine_act_kernel(
    c_ptr, res_ptr, out_ptr, stats_ptr,
    tile_sum_ptr, tile_m2_ptr, gamma_ptr, beta_ptr, rm_ptr, rv_ptr,
    M, K, Dd, Hh, Ww,
    c_sn, c_sd, c_sh, c_sw, c_sc,
    r_sn, r_sd, r_sh, r_sw, r_sc,
    o_sn, o_sd, o_sh, o_sw, o_sc,
    num_tiles, rows_per_tile, eps, factor, unbias,
    HAS_RES: tl.constexpr, RELU: tl.constexpr, FINALIZE: tl.constexpr, RUNNING: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out = act(c * a + b [+ residual]) in fp32, rounded once (BN-apply of the training form).

    (a, b) come from stats[2:4], or with FINALIZE each program combines the tile partials of its channels
    itself (few tiles: a separate finalize launch would cost more host time than the redundant reads) and
    the first row block's programs write stats and the running statistics."""
    pid_m = tl.program_id(0)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = ch < K
    mask = (m < M)[:, None] & cmask[None, :]
    if FINALIZE:
        a, b = _finalize_channels(tile_sum_ptr, tile_m2_ptr, gamma_ptr, beta_ptr, stats_ptr, rm_ptr, rv_ptr,
                                  ch, cmask, cmask & (pid_m == 0), num_tiles, rows_per_tile, M, K, eps,
                                  factor, unbias, RUNNING, BLOCK_T, BLOCK_C)
    else:
        a = tl.load(stats_ptr + 2 * K + ch, mask=cmask, other=0.0)
        b = tl.load(stats_ptr + 3 * K + ch, mask=cmask, other=0.0)
    c = tl.load(c_ptr + _tile(m, ch, Dd, Hh, Ww, c_sn, c_sd, c_sh, c_sw, c_sc),
                mask=mask, other=0.0).to(tl.float32)
    v = c * a[None, :] + b[None, :]
    if HAS_RES:
        v += tl.load(res_ptr + _tile(m, ch, Dd, Hh, Ww, r_sn, r_sd, r_sh, r_sw, r_sc),
                     mask=mask, other=0.0).to(tl.float32)
    if RELU:
        v = tl.maximum(v, 0.0)
    tl.store(out_ptr + _tile(m, ch, Dd, Hh, Ww, o_sn, o_sd, o_sh, o_sw, o_sc),
             v.to(out_ptr.dtype.element_ty), mask=mask)


def channel_affine_act(c: torch.Tensor, stats: torch.Tensor, residual: Optional[torch.Tensor], relu: bool,
                       memory_format: torch.memory_format, finalize=None) -> torch.Tensor:
    """act(c * a + b [+ residual]) for c (N, K, D, H, W) with (a, b) = stats[2:4]; output in
    ``memory_format``. ``finalize`` = (tile_sum, tile_m2, rows_per_tile, gamma, beta, eps, running): the
    kernel first computes stats itself (see channel_affine_act_kernel)."""
    N, K, Dd, Hh, Ww = c.shape
    M = N * Dd * Hh * Ww
    out = new_output(c.shape, dtype=c.dtype, device=c.device, memory_format=memory_format)
    bm, bc = _elementwise_blocks(K)
    res = residual if residual is not None else c
    if finalize is not None:
        tile_sum, tile_m2, rows_per_tile, gamma, beta, eps, running = finalize
        run_t, run_f, has_running = _running_args(running, stats, M)
        fin_t, fin_a = (tile_sum, tile_m2, gamma, beta, *run_t), (tile_sum.shape[0], rows_per_tile)
        fin_f = (float(eps), *run_f)
    else:
        fin_t, fin_a, fin_f, has_running = (stats,) * 6, (0, 1), (0.0, 0.0, 1.0), False
    launch(channel_affine_act_kernel, (cdiv(M, bm), cdiv(K, bc)), (c, res, out, stats, *fin_t),
           (M, K, Dd, Hh, Ww, *ndhwc_strides(c), *ndhwc_strides(res), *ndhwc_strides(out), *fin_a),
           dict(HAS_RES=residual is not None, RELU=relu, FINALIZE=finalize is not None, RUNNING=has_running,
                BLOCK_T=APPLY_FINALIZE_TILES, BLOCK_M=bm, BLOCK_C=bc), floats=fin_f)
    return out


# Up to this many conv row tiles, BN-apply combines the partials itself (one launch less per layer).
# Every apply program re-reads tiles x 64 channels x 2 fp32 partials (L2-resident): at 32 tiles 16 KB,
# no more than the 16-24 KB of activations it moves itself. ResNet/ResNeXt stages 3-4 at batch 8 have
# 1-13 row tiles; stage 2 (~50-100) keeps the separate finalize launch.
FUSED_FINALIZE_MAX_TILES = 32


def bn_forward(r, count: int, gamma: torch.Tensor, beta: torch.Tensor, residual: Optional[torch.Tensor],
               relu: bool, eps: float, memory_format: torch.memory_format, running=None):
    """Training-form BN after the conv epilogue's partials (conv3d_fwd's FwdResult ``r``):
    (out, stats (4, K) fp32 = mean, biased var, a, b); updates ``running`` in place when given."""
    if r.tile_sum.shape[0] <= FUSED_FINALIZE_MAX_TILES:
        stats = new_output((4, r.conv.shape[1]), dtype=torch.float32, device=r.conv.device)
        out = channel_affine_act(r.conv, stats, residual, relu, memory_format,
                                 finalize=(r.tile_sum, r.tile_m2, r.block_m, gamma, beta, eps, running))
        return out, stats
    stats = bn_finalize(r.tile_sum, r.tile_m2, r.block_m, count, gamma, beta, eps, running)
    return channel_affine_act(r.conv, stats, residual, relu, memory_format), stats


# ------------------------------------------------------------------------------------------------
# backward: reductions and the gradient prologue
# ------------------------------------------------------------------------------------------------
@triton.jit
def _masked_grad(g_ptr, out_ptr, m, ch, mask, Dd, Hh, Ww, g_sn, g_sd, g_sh, g_sw, g_sc,
                 o_sn, o_sd, o_sh, o_sw, o_sc, RELU: tl.constexpr):
    """gz = grad * (out > 0 if RELU), fp32."""
    gz = tl.load(g_ptr + _tile(m, ch, Dd, Hh, Ww, g_sn, g_sd, g_sh, g_sw, g_sc),
                 mask=mask, other=0.0).to(tl.float32)
    if RELU:
        o = tl.load(out_ptr + _tile(m, ch, Dd, Hh, Ww, o_sn, o_sd, o_sh, o_sw, o_sc),
                    mask=mask, other=0.0)
        gz = tl.where(o > 0, gz, 0.0)
    return gz


@triton.jit(do_not_specialize=ROWS_ARGS)
def grad_sums_kernel(
    g_ptr, out_ptr, c_ptr, center_ptr, part_ptr,
    M, K, Dd, Hh, Ww,
    g_sn, g_sd, g_sh, g_sw, g_sc,
    o_sn, o_sd, o_sh, o_sw, o_sc,
    c_sn, c_sd, c_sh, c_sw, c_sc,
    RELU: tl.constexpr, WITH_C: tl.constexpr, CENTER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per row tile: sum of gz (columns [0, K) of the partials) and of gz * (c - center) (columns
    [K, 2K)), gz = grad * (out > 0 if RELU)."""
    pid_m = tl.program_id(0)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = ch < K
    mask = (m < M)[:, None] & cmask[None, :]
    width = 2 * K if WITH_C else K
    gz = _masked_grad(g_ptr, out_ptr, m, ch, mask, Dd, Hh, Ww, g_sn, g_sd, g_sh, g_sw, g_sc,
                      o_sn, o_sd, o_sh, o_sw, o_sc, RELU)
    tl.store(part_ptr + pid_m * width + ch, tl.sum(gz, axis=0), mask=cmask)
    if WITH_C:
        c = tl.load(c_ptr + _tile(m, ch, Dd, Hh, Ww, c_sn, c_sd, c_sh, c_sw, c_sc),
                    mask=mask, other=0.0).to(tl.float32)
        if CENTER:
            c = tl.where(mask, c - tl.load(center_ptr + ch, mask=cmask, other=0.0)[None, :], 0.0)
        tl.store(part_ptr + pid_m * width + K + ch, tl.sum(gz * c, axis=0), mask=cmask)


@triton.jit(do_not_specialize=["num_tiles", "width", "K"])
def sum_tiles_kernel(p_ptr, first_ptr, second_ptr, var_ptr, num_tiles, width, K, eps,
                     INVSTD_SECOND: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Column sums over tiles of p[tile, col], in tile order (deterministic): columns [0, K) go to
    ``first``, [K, 2K) to ``second`` (separate tensors: they become separate gradients), the latter
    multiplied by 1 / sqrt(var + eps) with INVSTD_SECOND (sum gz * xhat, BatchNorm's dgamma)."""
    col = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = col < width
    total = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for t0 in range(0, num_tiles, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        total += tl.sum(tl.load(p_ptr + t[:, None] * width + col[None, :],
                                mask=(t < num_tiles)[:, None] & cmask[None, :], other=0.0), axis=0)
    second = cmask & (col >= K)
    if INVSTD_SECOND:
        var = tl.load(var_ptr + (col - K), mask=second, other=1.0)
        total = tl.where(second, total / tl.sqrt(var + eps), total)
    tl.store(first_ptr + col, total, mask=cmask & (col < K))
    tl.store(second_ptr + (col - K), total, mask=second)


def grad_sums(grad: torch.Tensor, out: Optional[torch.Tensor], relu: bool, c: Optional[torch.Tensor] = None,
              mean: Optional[torch.Tensor] = None, var: Optional[torch.Tensor] = None, eps: float = 0.0,
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-channel fp32 sums with gz = grad * (out > 0 if relu): ``sum gz`` and, when ``c`` is given,
    ``sum gz * c`` (affine form: d/d scale), or with ``mean``/``var`` the BatchNorm
    ``sum gz * (c - mean) / sqrt(var + eps)`` (d/d gamma). Two launches: row-tile partials, then
    their in-order sum."""
    N, K, Dd, Hh, Ww = grad.shape
    M = N * Dd * Hh * Ww
    bm, bc = _elementwise_blocks(K)
    tiles = cdiv(M, bm)
    width = 2 * K if c is not None else K
    partials = new_output((tiles, width), dtype=torch.float32, device=grad.device)
    o = out if out is not None else grad
    cc = c if c is not None else grad
    launch(grad_sums_kernel, (tiles, cdiv(K, bc)), (grad, o, cc, mean if mean is not None else partials, partials),
           (M, K, Dd, Hh, Ww, *ndhwc_strides(grad), *ndhwc_strides(o), *ndhwc_strides(cc)),
           dict(RELU=relu, WITH_C=c is not None, CENTER=mean is not None, BLOCK_M=bm, BLOCK_C=bc))
    first = new_output((K,), dtype=torch.float32, device=grad.device)
    second = new_output((K,), dtype=torch.float32, device=grad.device) if c is not None else None
    block_c = min(FINALIZE_CHANNELS, max(16, next_pow2(width)))
    launch(sum_tiles_kernel, (cdiv(width, block_c),),
           (partials, first, first if second is None else second, var if var is not None else first),
           (tiles, width, K), dict(INVSTD_SECOND=var is not None, BLOCK_T=FINALIZE_TILES, BLOCK_C=block_c),
           floats=(float(eps),))
    return first, second


@triton.jit(do_not_specialize=ROWS_ARGS)
def grad_prologue_kernel(
    g_ptr, out_ptr, c_ptr, gc_ptr, gz_ptr,
    coef_ptr, mean_ptr, var_ptr, sum_g_ptr, sum_gx_ptr,
    M, K, Dd, Hh, Ww,
    g_sn, g_sd, g_sh, g_sw, g_sc,
    o_sn, o_sd, o_sh, o_sw, o_sc,
    c_sn, c_sd, c_sh, c_sw, c_sc,
    gc_sn, gc_sd, gc_sh, gc_sw, gc_sc,
    z_sn, z_sd, z_sh, z_sw, z_sc,
    count, eps,
    RELU: tl.constexpr, BN: tl.constexpr, STORE_GC: tl.constexpr, STORE_GZ: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """gz = grad * (out > 0 if RELU); gc = dL/dc of the conv output:
    BN:      gc = gamma*invstd * (gz - sum_g/count - (c - mean) * invstd * sum_gx/count)
             (coef = gamma, sum_gx = sum gz * (c - mean) * invstd, see grad_sums);
    affine:  gc = scale * gz (coef = scale).
    Writes gc (conv backward operand) and/or gz (the residual's gradient)."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = ch < K
    mask = (m < M)[:, None] & cmask[None, :]
    gz = _masked_grad(g_ptr, out_ptr, m, ch, mask, Dd, Hh, Ww, g_sn, g_sd, g_sh, g_sw, g_sc,
                      o_sn, o_sd, o_sh, o_sw, o_sc, RELU)
    if STORE_GZ:
        tl.store(gz_ptr + _tile(m, ch, Dd, Hh, Ww, z_sn, z_sd, z_sh, z_sw, z_sc),
                 gz.to(gz_ptr.dtype.element_ty), mask=mask)
    if STORE_GC:
        coef = tl.load(coef_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
        if BN:
            invstd = 1.0 / tl.sqrt(tl.load(var_ptr + ch, mask=cmask, other=1.0) + eps)
            mean = tl.load(mean_ptr + ch, mask=cmask, other=0.0)
            mean_g = tl.load(sum_g_ptr + ch, mask=cmask, other=0.0) / count
            proj = tl.load(sum_gx_ptr + ch, mask=cmask, other=0.0) / count * invstd
            c = tl.load(c_ptr + _tile(m, ch, Dd, Hh, Ww, c_sn, c_sd, c_sh, c_sw, c_sc),
                        mask=mask, other=0.0).to(tl.float32)
            gc = _bn_input_grad(gz, c, mean, coef * invstd, mean_g, proj)
        else:
            gc = gz * coef[None, :]
        tl.store(gc_ptr + _tile(m, ch, Dd, Hh, Ww, gc_sn, gc_sd, gc_sh, gc_sw, gc_sc),
                 gc.to(gc_ptr.dtype.element_ty), mask=mask)


def grad_prologue(grad: torch.Tensor, out: torch.Tensor, relu: bool, coef: torch.Tensor, *,
                  store_gc: bool, gz_format: Optional[torch.memory_format],
                  bn: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]] = None,
                  ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(gc, gz): gc in channels_last_3d (the conv backward kernels' operand) when ``store_gc``;
    gz in ``gz_format`` when given. ``bn`` = (conv_out, mean, var, sum_g, sum_gx, eps) for the
    training form, None for the affine form (gc = coef * gz)."""
    N, K, Dd, Hh, Ww = grad.shape
    M = N * Dd * Hh * Ww
    bm, bc = _elementwise_blocks(K)
    gc = new_output(grad.shape, dtype=grad.dtype, device=grad.device,
                    memory_format=torch.channels_last_3d) if store_gc else None
    gz = new_output(grad.shape, dtype=grad.dtype, device=grad.device,
                    memory_format=gz_format) if gz_format is not None else None
    if bn is not None:
        c, mean, var, sum_g, sum_gx, eps = bn
    else:
        c, mean, var, sum_g, sum_gx, eps = grad, coef, coef, coef, coef, 0.0
    gc_t = gc if gc is not None else grad
    gz_t = gz if gz is not None else grad
    launch(grad_prologue_kernel, (cdiv(M, bm), cdiv(K, bc)),
           (grad, out, c, gc_t, gz_t, coef, mean, var, sum_g, sum_gx),
           (M, K, Dd, Hh, Ww, *ndhwc_strides(grad), *ndhwc_strides(out), *ndhwc_strides(c),
            *ndhwc_strides(gc_t), *ndhwc_strides(gz_t)),
           dict(RELU=relu, BN=bn is not None, STORE_GC=store_gc, STORE_GZ=gz is not None, BLOCK_M=bm, BLOCK_C=bc),
           floats=(float(M), float(eps)))
    return gc, gz


# ------------------------------------------------------------------------------------------------
# backward of the training form in one launch, for short reductions
# ------------------------------------------------------------------------------------------------
# Up to this many output rows (N*D*H*W) per channel, the BN backward (sums, then gc/gz) is one program per
# 16-channel block looping over all rows twice, instead of grad_sums' two launches plus grad_prologue:
# ResNet/ResNeXt stages 3-4 at batch 8 (784 and 128 rows) are launch-bound. One program then moves
# ~200 KB at 2048 rows; at stage 2's 6272 rows it would move ~1.5 MB from one SM while K/16 = 16-32
# programs leave most of the GPU idle, so longer reductions keep the three wide launches.
FUSED_BACKWARD_MAX_ROWS = 2048


@triton.jit(do_not_specialize=ROWS_ARGS)
def bn_backward_kernel(
    g_ptr, out_ptr, c_ptr, gc_ptr, gz_ptr, gamma_ptr, mean_ptr, var_ptr, sums_ptr,
    M, K, Dd, Hh, Ww,
    g_sn, g_sd, g_sh, g_sw, g_sc,
    o_sn, o_sd, o_sh, o_sw, o_sc,
    c_sn, c_sd, c_sh, c_sw, c_sc,
    gc_sn, gc_sd, gc_sh, gc_sw, gc_sc,
    z_sn, z_sd, z_sh, z_sw, z_sc,
    eps,
    RELU: tl.constexpr, STORE_GC: tl.constexpr, STORE_GZ: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One channel block, all rows: sums[0] = sum gz (d beta), sums[1] = sum gz * xhat (d gamma), then
    gc = gamma*invstd * (gz - sum_g/M - xhat * sum_gx/M) and/or gz; the same formulas as grad_sums +
    grad_prologue, with the row sum accumulated per element and reduced once (deterministic)."""
    ch = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = ch < K
    mean = tl.load(mean_ptr + ch, mask=cmask, other=0.0)
    invstd = 1.0 / tl.sqrt(tl.load(var_ptr + ch, mask=cmask, other=1.0) + eps)
    acc_g = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    acc_gx = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        mask = (m < M)[:, None] & cmask[None, :]
        gz = _masked_grad(g_ptr, out_ptr, m, ch, mask, Dd, Hh, Ww, g_sn, g_sd, g_sh, g_sw, g_sc,
                          o_sn, o_sd, o_sh, o_sw, o_sc, RELU)
        c = tl.load(c_ptr + _tile(m, ch, Dd, Hh, Ww, c_sn, c_sd, c_sh, c_sw, c_sc),
                    mask=mask, other=0.0).to(tl.float32)
        acc_g += gz
        acc_gx += gz * tl.where(mask, c - mean[None, :], 0.0)
    sum_g = tl.sum(acc_g, axis=0)
    sum_gx = tl.sum(acc_gx, axis=0) * invstd
    tl.store(sums_ptr + ch, sum_g, mask=cmask)
    tl.store(sums_ptr + K + ch, sum_gx, mask=cmask)
    if STORE_GC or STORE_GZ:
        coef = tl.load(gamma_ptr + ch, mask=cmask, other=0.0).to(tl.float32) * invstd
        mean_g = sum_g / M
        proj = sum_gx / M * invstd
        for m0 in range(0, M, BLOCK_M):
            m = m0 + tl.arange(0, BLOCK_M)
            mask = (m < M)[:, None] & cmask[None, :]
            gz = _masked_grad(g_ptr, out_ptr, m, ch, mask, Dd, Hh, Ww, g_sn, g_sd, g_sh, g_sw, g_sc,
                              o_sn, o_sd, o_sh, o_sw, o_sc, RELU)
            if STORE_GZ:
                tl.store(gz_ptr + _tile(m, ch, Dd, Hh, Ww, z_sn, z_sd, z_sh, z_sw, z_sc),
                         gz.to(gz_ptr.dtype.element_ty), mask=mask)
            if STORE_GC:
                c = tl.load(c_ptr + _tile(m, ch, Dd, Hh, Ww, c_sn, c_sd, c_sh, c_sw, c_sc),
                            mask=mask, other=0.0).to(tl.float32)
                gc = _bn_input_grad(gz, c, mean, coef, mean_g, proj)
                tl.store(gc_ptr + _tile(m, ch, Dd, Hh, Ww, gc_sn, gc_sd, gc_sh, gc_sw, gc_sc),
                         gc.to(gc_ptr.dtype.element_ty), mask=mask)


def bn_backward(grad: torch.Tensor, out: torch.Tensor, relu: bool, c: torch.Tensor, mean: torch.Tensor,
                var: torch.Tensor, gamma: torch.Tensor, eps: float, *, store_gc: bool,
                gz_format: Optional[torch.memory_format], need_sums: bool,
                ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Training-form backward up to the conv: (sums, gc, gz) with sums (2, K) fp32 = (sum gz, sum gz*xhat)
    (None unless ``need_sums`` or ``store_gc``), gc in channels_last_3d when ``store_gc``, gz (the
    residual's gradient) in ``gz_format`` when given. mean/var: (K,) fp32 batch statistics."""
    N, K, Dd, Hh, Ww = grad.shape
    M = N * Dd * Hh * Ww
    if M > FUSED_BACKWARD_MAX_ROWS:
        sums = gc = gz = None
        if store_gc or need_sums:
            sum_g, sum_gx = grad_sums(grad, out, relu, c=c, mean=mean, var=var, eps=eps)
            sums = torch.stack((sum_g, sum_gx))
        if store_gc or gz_format is not None:  # nothing to write when only dgamma/dbeta are wanted
            gc, gz = grad_prologue(grad, out, relu, gamma, store_gc=store_gc, gz_format=gz_format,
                                   bn=(c, mean, var, sums[0], sums[1], eps) if store_gc else None)
        return sums, gc, gz
    gc = new_output(grad.shape, dtype=grad.dtype, device=grad.device,
                    memory_format=torch.channels_last_3d) if store_gc else None
    gz = new_output(grad.shape, dtype=grad.dtype, device=grad.device,
                    memory_format=gz_format) if gz_format is not None else None
    sums = new_output((2, K), dtype=torch.float32, device=grad.device)
    gc_t = gc if gc is not None else grad
    gz_t = gz if gz is not None else grad
    # Each program walks all M rows twice, one row block per iteration, and each iteration waits for its
    # own loads (nothing else runs on its SM: K/16 = 32-128 programs): 256-row blocks over 8 warps take
    # stage 3's 784 rows in 4 iterations per pass instead of 13 (64 rows, 4 warps). No tl.dot here, so
    # the 8-warp caution of the conv loops does not apply.
    bm, warps = (128, 4) if INTERPRETED else (256, 8)
    bc = min(64 if INTERPRETED else 16, max(16, next_pow2(K)))
    launch(bn_backward_kernel, (cdiv(K, bc),), (grad, out, c, gc_t, gz_t, gamma, mean, var, sums),
           (M, K, Dd, Hh, Ww, *ndhwc_strides(grad), *ndhwc_strides(out), *ndhwc_strides(c),
            *ndhwc_strides(gc_t), *ndhwc_strides(gz_t)),
           dict(RELU=relu, STORE_GC=store_gc, STORE_GZ=gz is not None, BLOCK_M=bm, BLOCK_C=bc,
                num_warps=warps),
           floats=(float(eps),))
    return sums, gc, gz
