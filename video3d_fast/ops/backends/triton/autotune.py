"""Tile configurations of the conv kernels: per op and problem, a list of candidates and one choice, made
once per problem and process (``pick``). The candidates are the heuristic's tiles, best guess first
(other loop kinds and pipeline depths among them: W_RUNS and TAP_RUNS tiles of grouped convs), then
unpipelined variants whose loads are cached in L1 (``_l1_variants``), then the first tile with explicit
split-K factors. The choice is made in this order:

1. ``VIDEO3D_FAST_TRITON_AUTOTUNE=1``: every candidate is timed once per problem on the device (GPU time,
   CUDA-graph replay) and the fastest kept, in memory and in a JSON file keyed by GPU name, Triton
   version, op, problem and dtype (``VIDEO3D_FAST_TRITON_AUTOTUNE_CACHE``, default
   ``~/.cache/video3d_fast/triton_autotune.json``), so a later process starts tuned;
2. a shipped table (``tuned/*.json``, written by ``benchmarks/gpu_tune.py`` on a named GPU): its choice
   for the problem's class, when that is still one of the candidates;
3. the heuristic: the first candidate.

Heuristic defaults are conservative on purpose: num_warps=4 everywhere (the flattened-tap implicit-GEMM
loop is known to miscompile with 8 warps in Inductor's conv template, pytorch #173068), 2-3 pipeline
stages, tiles no larger than 128x128. Under the interpreter small tiles are used so that tests cover
several tiles per problem quickly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ...params import Conv3dParams
from .common import INTERPRETED, cdiv, four_channel_params, next_pow2, on_four_channels
from .grouped import group_tiling


@dataclass(frozen=True)
class KernelConfig:
    """BLOCK_M/N/K of the kernel's GEMM view (see the comment atop each kernel), warps and stages.

    ``split_k``: slices of the reduction (wgrad: output positions; fprop: K steps); 0 = choose from the
    problem size, 1 = no split."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2
    split_k: int = 0


_cache: Dict[Tuple, KernelConfig] = {}


def autotune_enabled() -> bool:
    return not INTERPRETED and os.environ.get("VIDEO3D_FAST_TRITON_AUTOTUNE", "0") == "1"


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def _block_k_for(red_per_tile: int, cap: int, general: int) -> int:
    """Largest power-of-two BLOCK_K <= cap dividing the per-tap channel count (tap-aligned loop), else
    ``general`` (the flattened loop whose K steps span taps)."""
    for bk in (64, 32, 16):
        if bk <= cap and red_per_tile % bk == 0:
            return bk
    return general


def _out_block(out_per_group: int, groups: int, total_out: int, cap: int) -> int:
    """BLOCK_N over output channels: whole small groups per tile (block-diagonal), or up to ``cap``."""
    if groups > 1 and out_per_group < cap:
        return max(16, next_pow2(out_per_group))
    return max(16, min(cap, next_pow2(total_out if groups == 1 else out_per_group)))


def _groups_per_tile(out_per_group: int, block: int) -> int:
    return max(1, block // out_per_group) if out_per_group < block else 1


def _half_k_for_fp32(bk: int, dtype: torch.dtype) -> int:
    """fp32 tiles take twice the shared memory and registers per element: halve BLOCK_K."""
    return max(16, bk // 2) if dtype == torch.float32 else bk


def _gemm_tile_candidates(rows: int, out_per_group: int, red_per_group: int, groups: int, total_out: int,
                          dtype: torch.dtype, device: torch.device, row_run: int = 0) -> List[KernelConfig]:
    """Candidates of fprop/dgrad (rows = output positions, columns = output channels), best guess first.

    Tile sizes follow what compiles without register spills on sm_90 (tests/triton/compile_check.py):
    128x128 with 32-wide K steps, 64x128 / 64x64 with 64-wide ones, 64x64x16 for the flattened loop
    (C=3 stem), whose per-element gather cannot be pipelined. The largest tile whose grid still fills
    the device (2 CTAs per SM) wins. The interpreter's cost is per executed op, not per element, so
    it gets big tiles and 64-wide flattened K steps."""
    if INTERPRETED:
        return [KernelConfig(128, _out_block(out_per_group, groups, total_out, 64), 64)]
    bn = _out_block(out_per_group, groups, total_out, 128)
    red_per_tile = group_tiling(groups, out_per_group, red_per_group, bn).red_per_tile
    if red_per_tile % 16:  # taps narrower than a K step (the C=3 stem, odd group widths)
        general = [KernelConfig(64, min(bn, 64), 16, 4, 3), KernelConfig(128, min(bn, 64), 16, 4, 2)]
        if row_run and row_run <= 64 and group_tiling(groups, out_per_group, red_per_group, bn).groups_per_tile == 1:
            # fprop's W_RUNS loop: one (t, r) filter row of S*C channels per K step (conv3d_fwd.w_runs)
            bm = 64 if dtype == torch.float32 else 128  # fp32 operands spill at 128 rows
            return [KernelConfig(bm, min(bn, 64), max(16, next_pow2(row_run)), 4, 2)] + general
        return general
    shapes = [(128, bn), (64, bn)]
    if groups == 1 and bn >= 64:
        shapes.append((64, bn // 2))
    target = 2 * _sm_count(device)
    for bm, bn_ in shapes:
        tiles = cdiv(rows, bm) * group_tiling(groups, out_per_group, red_per_group, bn_).num_tiles
        if tiles >= target:
            break
    red_per_tile = group_tiling(groups, out_per_group, red_per_group, bn_).red_per_tile
    cap = 32 if bm * bn_ >= 128 * 128 else 64
    first = KernelConfig(bm, bn_, _half_k_for_fp32(_block_k_for(red_per_tile, cap, 32), dtype), 4, 3)
    others = [KernelConfig(64, bn, _half_k_for_fp32(_block_k_for(red_per_tile, 64, 32), dtype), 4, 3),
              KernelConfig(128, bn, _half_k_for_fp32(_block_k_for(red_per_tile, 32, 32), dtype), 4, 3)]
    return [first] + [c for c in others if c != first]


def _row_run_block(ct: int, width: int) -> Optional[int]:
    """The K-step (or wgrad column-block) width holding one filter row of ``width`` * CT channels as
    ``width`` runs that load as vectors (CT a power of two >= 8: the kernels' RUN_C hint), or None."""
    if width < 2 or ct < 8 or ct & (ct - 1) or width * ct > 128:
        return None
    return next_pow2(width * ct)


def _grouped_row_run_tile(rows: int, out_per_group: int, red_per_group: int, groups: int, total_out: int,
                          width: int, dtype: torch.dtype, device: torch.device) -> Optional[KernelConfig]:
    """The W_RUNS tile of a grouped conv's fprop or dgrad (conv3d_fwd.w_runs, conv3d_dgrad.w_runs), or
    None where it does not apply; ``width`` is the filter's S.

    The tap-aligned loop of a grouped tile takes one K step per filter tap (27 for 3x3x3) with only
    CT = 16-32 channels each; W_RUNS takes one per (t, r) filter row, S*CT channels wide (48 of 64 for
    ResNeXt's 16-channel tiles, 96 of 128 for 32), i.e. 9 steps, still 16-byte vector loads feeding the
    pipeline when CT is a power of two >= 8 (the run width is a constexpr there): sm_90 compiles show
    cp.async 16-byte copies and 48-136 registers. Deep grouped layers (ResNeXt stages 3-4: 64-416 tiles
    at batch 8) are latency-bound on those serial K steps."""
    if groups == 1:
        return None
    bn = _out_block(out_per_group, groups, total_out, 128)
    tiling = group_tiling(groups, out_per_group, red_per_group, bn)
    bk = _row_run_block(tiling.red_per_tile, width)
    if bk is None:
        return None
    # 64 rows while that still gives 2 programs per SM; fp32 operands at 128-wide K steps need 32 rows
    # (64x32x128 fp32 compiles to 254 registers on sm_90)
    big = cdiv(rows, 64) * tiling.num_tiles >= 2 * _sm_count(device)
    bm = 64 if big and not (dtype == torch.float32 and bk > 64) else 32
    return KernelConfig(bm, bn, bk, 4, 3)


def _grouped_tap_run_tile(rows: int, out_per_group: int, red_per_group: int, groups: int, total_out: int,
                          width: int, dtype: torch.dtype, device: torch.device) -> Optional[KernelConfig]:
    """The TAP_RUNS tile of a grouped conv's fprop or dgrad (several whole taps per K step, see
    conv3d_fwd), or None where the tile's CT channels per tap are not a power of two >= 8 or the step
    would go to the W_RUNS loop (``width``: the filter's S where that loop applies, else 0). 8 taps per
    step, at most 128 columns in fp32: a 3x3x3 conv of 16-channel tiles takes 4 K steps (W_RUNS: 9 filter
    rows, tap-aligned: 27 taps). sm_90 builds (bf16): 64x16x128 103 registers fprop / 135 dgrad,
    32x32x256 154 / 168, 64x16x128 block-diagonal 189-193; fp32 32x16x128 116-128. A candidate only."""
    if groups == 1:
        return None
    bn = _out_block(out_per_group, groups, total_out, 128)
    tiling = group_tiling(groups, out_per_group, red_per_group, bn)
    fp32 = dtype == torch.float32
    bk = min(128 if fp32 else 256, 8 * tiling.red_per_tile)
    if not tiling.tap_runs_fit(bk) or (width and tiling.row_runs_preferred(width, bk)):
        return None
    big = cdiv(rows, 64) * tiling.num_tiles >= 2 * _sm_count(device)
    bm = 64 if big and not fp32 and bk * bn <= 128 * 16 else 32
    return KernelConfig(bm, bn, bk, 4, 3)


def _with_tap_runs(tiles: List[KernelConfig], tap_tile: Optional[KernelConfig]) -> List[KernelConfig]:
    """``tiles`` with the TAP_RUNS tile last (a candidate only until a GPU run says where it wins)."""
    return tiles if tap_tile is None or tap_tile in tiles else tiles + [tap_tile]


def _latency_bound(rows: int, out_per_group: int, red_per_group: int, groups: int, cfg: KernelConfig,
                   device: torch.device) -> bool:
    """Fewer than ~4 programs of 64 rows per SM: each program's serial K loop, not the device's
    throughput, sets the time (ResNeXt-101 stages 3-4 at batch 8; stage 1's 6272 tiles are
    throughput-bound, and its tap-aligned loop is 9x cuDNN there)."""
    tiling = group_tiling(groups, out_per_group, red_per_group, cfg.block_n)
    return cdiv(rows, 64) * tiling.num_tiles < 4 * _sm_count(device)


def _with_row_runs(tiles: List[KernelConfig], rows: int, out_per_group: int, red_per_group: int, groups: int,
                   total_out: int, width: int, dtype: torch.dtype, device: torch.device) -> List[KernelConfig]:
    """``tiles`` with the W_RUNS tile first where the K loop's length sets the time, else last (a
    candidate for autotuning only)."""
    runs = None if INTERPRETED else _grouped_row_run_tile(rows, out_per_group, red_per_group, groups,
                                                          total_out, width, dtype, device)
    if runs is None or runs in tiles:
        return tiles
    if _latency_bound(rows, out_per_group, red_per_group, groups, runs, device):
        # one wave of programs, each a serial loop of 9 filter rows that waits on its gathers: a 5-stage
        # pipeline keeps 4 of them in flight instead of 2 (sm_90: 51-80 registers bf16, 72-150 fp32)
        return [runs] + tiles + [dataclasses.replace(runs, num_stages=5)]
    return tiles + [runs]


def fwd_candidates(p: Conv3dParams, dtype: torch.dtype, device: torch.device) -> List[KernelConfig]:
    tiles = _gemm_tile_candidates(p.gemm_m, p.out_channels_per_group, p.in_channels_per_group, p.groups,
                                  p.out_channels, dtype, device, row_run=p.kernel[2] * p.in_channels_per_group)
    tiles = _with_row_runs(tiles, p.gemm_m, p.out_channels_per_group, p.in_channels_per_group, p.groups,
                           p.out_channels, p.kernel[2], dtype, device)
    if not INTERPRETED:
        tiles = _with_tap_runs(tiles, _grouped_tap_run_tile(p.gemm_m, p.out_channels_per_group,
                                                            p.in_channels_per_group, p.groups, p.out_channels,
                                                            p.kernel[2], dtype, device))
    # the heuristic tile with explicit split-K factors, for autotuning and shipped tables (fwd_split decides
    # from the tile count alone; between one and two waves of CTAs it cannot tell)
    return tiles + _l1_variants(tiles, p) + _split_variants(tiles, (1, 2, 4)) + _big_tile_splits(tiles)


def dgrad_candidates(p: Conv3dParams, dtype: torch.dtype, device: torch.device) -> List[KernelConfig]:
    rows = p.batch * p.in_size[0] * p.in_size[1] * p.in_size[2]
    tiles = _gemm_tile_candidates(rows, p.in_channels_per_group, p.out_channels_per_group, p.groups,
                                  p.in_channels, dtype, device)
    if p.stride == (1, 1, 1):  # W_RUNS dgrad walks every tap: stride 1 only (one phase)
        tiles = _with_row_runs(tiles, rows, p.in_channels_per_group, p.out_channels_per_group, p.groups,
                               p.in_channels, p.kernel[2], dtype, device)
    if not INTERPRETED:  # any stride (whole taps of each stride phase)
        width = p.kernel[2] if p.stride == (1, 1, 1) else 0  # W_RUNS dgrad: stride 1 only
        tiles = _with_tap_runs(tiles, _grouped_tap_run_tile(rows, p.in_channels_per_group, p.out_channels_per_group,
                                                            p.groups, p.in_channels, width, dtype, device))
    return tiles + _l1_variants(tiles, p) + _split_variants(tiles, (1, 4, 16))


def wgrad_candidates(p: Conv3dParams, dtype: torch.dtype, device: torch.device) -> List[KernelConfig]:
    """wgrad GEMM: rows = output channels, columns = T*R*S*CT (tap, channel), reduction = positions
    (split-K, see wgrad_split). A column block stays inside one tap when CT allows it."""
    kg, cg = p.out_channels_per_group, p.in_channels_per_group
    if INTERPRETED:
        return [KernelConfig(_out_block(kg, p.groups, p.out_channels, 64), 64, 128)]
    bm = _out_block(kg, p.groups, p.out_channels, 128)
    ct = group_tiling(p.groups, kg, cg, bm).red_per_tile
    bn = 128 if ct % 128 == 0 and bm <= 64 else _block_k_for(ct, 64, 32)
    if ct % 16:  # narrow taps (the C=3 stem): flattened 64-wide column blocks (see conv3d_wgrad.w_runs)
        bn = 64
    bk = 64 if bm * bn <= 64 * 64 else 32
    tiles = [KernelConfig(bm, bn, _half_k_for_fp32(bk, dtype), 4, 3),
             KernelConfig(bm, bn, _half_k_for_fp32(64 if bk == 32 else 32, dtype), 4, 3)]
    if ct % 16 and p.groups == 1 and p.kernel[2] * ct <= 32:
        # the stem on four-channel rows (conv3d_wgrad pads C = 3): a 32-wide column block is one (t, r)
        # filter row of 7 * 4 dense channels, gathered as 8-byte vectors (DENSE_RUN): 96 registers on
        # sm_90 at 128 rows, no spills, where the flattened 128x64x32 block spills 136 bytes
        tiles.insert(0, KernelConfig(bm, 32, _half_k_for_fp32(64, dtype), 4, 3))
    runs_bn = _row_run_block(ct, p.kernel[2]) if p.groups > 1 else None
    if runs_bn is not None:
        # grouped: column blocks of one (t, r) filter row (conv3d_wgrad.w_runs): dy, re-read once per
        # column block, is read 9 times instead of 27
        # (32x128x64 bf16 / 32x128x32 fp32 spill 8 bytes on sm_90: 32 / 16 position steps there)
        tiles.insert(0, KernelConfig(bm, runs_bn, _half_k_for_fp32(64 if bm * runs_bn < 64 * 64 else 32, dtype),
                                     4, 3))
    whole_taps = _whole_tap_tile(bm, ct, math.prod(p.kernel), dtype) if p.groups > 1 else None
    if whole_taps is not None:
        tiles.append(whole_taps)
    return tiles + _l1_variants(tiles, p) + _split_variants(tiles, (1, 8, 32))


def launcher_candidates(op: str, p: Conv3dParams, dtype: torch.dtype, device: torch.device) -> List[KernelConfig]:
    """The candidates the ``op`` launcher ("fwd", "dgrad" or "wgrad") chooses among for the conv ``p`` as
    its caller states it: the fprop and wgrad launchers run the C = 3 stem on four-channel params
    (``common.on_four_channels``), so its candidates are theirs. For tools that time or compile a
    launcher's candidates (benchmarks/gpu_tune.py, tests/triton/compile_check.py)."""
    if op != "dgrad" and on_four_channels(p):
        p = four_channel_params(p)
    return {"fwd": fwd_candidates, "dgrad": dgrad_candidates, "wgrad": wgrad_candidates}[op](p, dtype, device)


def _whole_tap_tile(bm: int, ct: int, taps: int, dtype: torch.dtype) -> Optional[KernelConfig]:
    """A grouped wgrad tile whose column blocks are whole taps of CT channels (conv3d_wgrad's TAP_RUNS), as
    wide as the registers allow: 512 columns hold all 27 taps of a 16-channel tile (ResNeXt stages 1-3),
    so dy is read once instead of once per filter row (9x) as in the W_RUNS tile. The input is still
    gathered per tap. A candidate only (not measured yet). sm_90 builds: 16x512x16 167 registers (bf16),
    32x256x32 138-168, fp32 16x256x16 114-128 and 32x256x16 162-165, none spilling; 16x512x32 took 208."""
    if ct < 8 or ct & (ct - 1):
        return None
    cap = 512 if bm == 16 and dtype != torch.float32 else 256
    bn = min(cap, next_pow2(taps * ct))
    if bn <= ct:
        return None
    return KernelConfig(bm, bn, 16 if bn == 512 or dtype == torch.float32 else 32, 4, 3)


def _l1_variants(tiles: List[KernelConfig], p: Conv3dParams) -> List[KernelConfig]:
    """Tiles without the cp.async pipeline (num_stages=1), candidates only: every tile of a grouped conv
    (but the deep-pipeline ones), the first tile of a dense one; none for a one-tap (1x1x1) filter.
    Pipelined loads become 16-byte ``cp.async.cg`` copies, which bypass L1, so each of a tile's 27 taps
    (9 filter rows) re-reads its input neighbourhood from L2: ResNeXt's stage 1 moves ~27x its input
    through L2 (~350 MB at batch 8, 143 us against ~8 us of HBM traffic). With num_stages=1 the same
    gathers are plain ``ld.global`` loads (sm_90 build: 16-byte ``ld.global.v4``), cached in L1, and
    small tiles (40-115 registers) leave room for 4-8 CTAs per SM to hide their latency. Stages 3-4
    (one wave, latency-bound) are not expected to gain; stages 1-2 may. Dense tiles are larger (fewer
    CTAs to hide latency with), hence one candidate."""
    if INTERPRETED or math.prod(p.kernel) == 1:
        return []
    variants = []
    for tile in tiles if p.groups > 1 else tiles[:1]:
        l1 = dataclasses.replace(tile, num_stages=1)
        if 1 < tile.num_stages < 5 and l1 not in tiles and l1 not in variants:
            variants.append(l1)
    return variants


def _big_tile_splits(tiles: List[KernelConfig]) -> List[KernelConfig]:
    """fprop: where the heuristic took a smaller tile to fill the device (ResNet-50's dense 3x3x3 convs at
    stages 2-3: 64x64 tiles, 0.6-0.84x cuDNN on the H200), the 128x128 tile split 2 and 4 ways over K
    instead, so that its wider MMAs still get enough programs. Candidates only."""
    big = next((t for t in tiles if t.block_m * t.block_n >= 128 * 128 and t.split_k == 0), None)
    if big is None or big == tiles[0]:
        return []
    return [dataclasses.replace(big, split_k=k) for k in (2, 4)]


def _split_variants(tiles: List[KernelConfig], splits: Tuple[int, ...]) -> List[KernelConfig]:
    """The heuristic tile with explicit split-K factors: candidates only (the heuristic's own split is
    tiles[0], split_k=0), timed by autotuning and eligible in shipped tables."""
    return [dataclasses.replace(tiles[0], split_k=k) for k in splits if tiles[0].split_k != k]


def pick(op: str, p: Conv3dParams, dtype: torch.dtype, device: torch.device,
         candidates: List[KernelConfig], launch: Callable[[KernelConfig], object]) -> KernelConfig:
    """The configuration of one problem, chosen once per process (the launchers keep it in their plans).

    With autotuning on: the fastest candidate (from the in-memory or on-disk cache when this problem was
    timed before on this GPU and Triton version). Otherwise the shipped table's choice for this GPU and
    problem class (``tuned/``, see shipped_config) when it is still one of the candidates, else the
    heuristic (the first candidate)."""
    if not autotune_enabled():
        return untuned_choice(op, p, dtype, device, candidates)
    if len(candidates) == 1:
        return candidates[0]
    key = _key(op, p, dtype, device)
    best = _cache.get(key)
    if best is None and device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return candidates[0]  # timing would break the capture
    if best is None:
        stored = _disk_cache().get(_disk_key(key))
        best = KernelConfig(**stored) if stored else None
        if best not in candidates:  # tuned by other code: time again
            best = _time_candidates(candidates, launch, (op, p, dtype), device)
            _store(key, best)
        _cache[key] = best
    return best


def untuned_choice(op: str, p: Conv3dParams, dtype: torch.dtype, device: torch.device,
                   candidates: List[KernelConfig]) -> KernelConfig:
    """What ``pick`` chooses without autotuning: the shipped table's configuration, else the heuristic."""
    shipped = shipped_config(op, p, dtype, device)
    return shipped if shipped is not None and shipped in candidates else candidates[0]


def _key(op: str, p: Conv3dParams, dtype: torch.dtype, device: torch.device) -> Tuple:
    import triton

    return (device_name(device), triton.__version__, op, p, dtype)


# Every timing autotuning made in this process: (op, problem, dtype, [(ms or inf, config), ...] in candidate
# order, the first being the heuristic's). benchmarks/gpu_tune.py reports them.
timing_log: List[Tuple[str, Conv3dParams, torch.dtype, List[Tuple[float, KernelConfig]]]] = []


# A candidate whose output differs from the heuristic's by more than this (relative norm) is not used:
# tile shapes and split-K change only the fp32 summation order (~1e-3 after bf16 rounding); a
# miscompiled configuration (the 8-warp hazard of the module docstring) is off by O(1).
AGREEMENT = 2e-2


def _time_candidates(candidates: List[KernelConfig], launch: Callable[[KernelConfig], object],
                     problem: Tuple[str, Conv3dParams, torch.dtype], device: torch.device) -> KernelConfig:
    """Each candidate's GPU time (inf when it fails to compile or disagrees with the first candidate's
    output: the fastest of the rest wins, never a wrong one)."""
    timings = []
    reference = None
    for cfg in candidates:
        try:
            out = _output_of(launch(cfg))
            if reference is None:
                reference = out
            elif not _agrees(out, reference):
                warnings.warn(f"autotune: {problem[0]} {cfg} disagrees with {candidates[0]} on {problem[1]}; "
                              "not used")
                timings.append((float("inf"), cfg))
                continue
            timings.append((_gpu_ms(lambda: launch(cfg), device), cfg))
        except Exception:  # a candidate that fails to compile (e.g. out of shared memory) loses
            timings.append((float("inf"), cfg))
    timing_log.append((*problem, timings))
    best_ms, best = min(timings, key=lambda tc: tc[0])
    return best if best_ms < float("inf") else candidates[0]


def _output_of(result) -> Optional[torch.Tensor]:
    """The tensor a launcher call produced (fprop's FwdResult: its output, else its conv output), a float
    copy, or None for anything else (timing stand-ins)."""
    if not isinstance(result, torch.Tensor):
        out = getattr(result, "out", None)
        result = out if out is not None else getattr(result, "conv", None)
    return result.detach().float().clone() if isinstance(result, torch.Tensor) else None


def _agrees(out: Optional[torch.Tensor], reference: Optional[torch.Tensor]) -> bool:
    if out is None or reference is None:
        return out is None and reference is None
    if out.shape != reference.shape or not bool(torch.isfinite(out).all()):
        return False
    return float((out - reference).norm()) <= AGREEMENT * float(reference.norm()) + 1e-6


def capture_graph(fn: Callable[[], object], calls: int = 1, error_mode: str = "global") -> "torch.cuda.CUDAGraph":
    """``calls`` calls of ``fn`` captured as one CUDA graph on the current device, after two warm-up calls
    (compiles, plans, library workspaces, cuDNN's algorithm search) on the same side stream the capture
    then uses: per-stream lazy state is created before the capture, not inside it, as in
    make_graphed_callables. The benchmarks capture through this too."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side, capture_error_mode=error_mode):
        for _ in range(calls):
            fn()
    return graph


def _gpu_ms(fn: Callable[[], object], device: torch.device, calls: int = 10, replays: int = 10) -> float:
    """Milliseconds of GPU time per ``fn()``: ``calls`` calls captured as one CUDA graph and replayed.

    Eager timing (triton.testing.do_bench) of a layer that runs 10-20 us on the GPU measures the host's
    launch path instead (allocations, Python), which would rank a split-K candidate, one launch more,
    below a slower one-launch tile. Without CUDA (or where capture fails): do_bench."""
    import triton.testing

    if device.type != "cuda":
        return triton.testing.do_bench(fn, warmup=5, rep=20)
    try:
        # thread_local: a pick inside backward captures on the autograd engine's thread, and a data
        # loader's pin-memory thread may call CUDA meanwhile; neither may invalidate this capture
        graph = capture_graph(fn, calls, error_mode="thread_local")
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / (replays * calls)
    except RuntimeError:
        torch.cuda.synchronize(device)
        return triton.testing.do_bench(fn, warmup=5, rep=20)


# ---- the on-disk cache: {json key: KernelConfig fields}, rewritten atomically on every new entry ----
_disk: Optional[Dict[str, dict]] = None


def cache_path() -> Path:
    default = Path.home() / ".cache" / "video3d_fast" / "triton_autotune.json"
    return Path(os.environ.get("VIDEO3D_FAST_TRITON_AUTOTUNE_CACHE", default))


def _disk_key(key: Tuple) -> str:
    device_name, triton_version, op, p, dtype = key
    return json.dumps([device_name, triton_version, op, list(dataclasses.astuple(p)), str(dtype)])


def _disk_cache() -> Dict[str, dict]:
    global _disk
    if _disk is None:
        path = cache_path()
        try:
            _disk = json.loads(path.read_text()) if path.exists() else {}
            if not isinstance(_disk, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            warnings.warn(f"ignoring the Triton autotune cache {path} ({exc}); it will be rewritten")
            _disk = {}
    return _disk


def _store(key: Tuple, cfg: KernelConfig) -> None:
    cache = _disk_cache()
    cache[_disk_key(key)] = dataclasses.asdict(cfg)
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(cache, f, indent=0)
            os.replace(tmp, path)  # readers see the old or the new file, never half of one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:  # a read-only home: keep tuning in memory
        warnings.warn(f"could not write the Triton autotune cache {path}: {exc}")


def cached_configs() -> Dict[Tuple, KernelConfig]:
    """What autotuning chose so far (for benchmark reports)."""
    return dict(_cache)


# ---- shipped tables: configurations autotuned on a named GPU (benchmarks/gpu_tune.py writes them; a
# session commits them into tuned/), used there without autotuning. A table keys problem *classes*: the
# layer with its batch and clip size replaced by the power of two nearest to its number of input
# positions, so an entry also serves other batch sizes and clip sizes within that factor-of-two bucket
# (16x112x112 at batch 8 shares it with batch 8-14). An entry that is no longer a candidate (the kernels
# or the heuristics changed since) is ignored.
TUNED_DIR = Path(__file__).with_name("tuned")
_tables: Optional[Dict[str, Dict[str, dict]]] = None


def problem_class(op: str, p: Conv3dParams, dtype: torch.dtype) -> str:
    positions = p.batch * p.in_size[0] * p.in_size[1] * p.in_size[2]
    return json.dumps([op, str(dtype), p.in_channels, p.out_channels, p.groups, list(p.kernel), list(p.stride),
                       list(p.padding), list(p.dilation), round(math.log2(max(1, positions)))])


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def shipped_tables() -> Dict[str, Dict[str, dict]]:
    """{device name: {problem class: KernelConfig fields}} from every tuned/*.json (read once)."""
    global _tables
    if _tables is None:
        _tables = {}
        for path in sorted(TUNED_DIR.glob("*.json")):
            try:
                table = json.loads(path.read_text())
                _tables.setdefault(table["device"], {}).update(table["configs"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                warnings.warn(f"ignoring the tuned-configuration table {path} ({exc!r})")
    return _tables


def shipped_config(op: str, p: Conv3dParams, dtype: torch.dtype, device: torch.device) -> Optional[KernelConfig]:
    entries = shipped_tables().get(device_name(device))
    if not entries:
        return None
    fields = entries.get(problem_class(op, p, dtype))
    try:
        return KernelConfig(**fields) if fields else None
    except TypeError:  # written by another version of KernelConfig
        return None


def table_from_autotuning(device: str) -> Dict[str, dict]:
    """The autotune cache's choices on ``device`` (this Triton version) as shipped-table entries; where
    several problems of one class chose differently, the most frequent choice (the first on ties)."""
    import triton

    votes: Dict[str, Dict[str, int]] = {}
    for key, fields in _disk_cache().items():
        name, version, op, p_fields, dtype_name = json.loads(key)
        if name != device or version != triton.__version__:
            continue
        p = Conv3dParams(*[tuple(v) if isinstance(v, list) else v for v in p_fields])
        dtype = getattr(torch, dtype_name.replace("torch.", ""))
        cls = votes.setdefault(problem_class(op, p, dtype), {})
        choice = json.dumps(fields, sort_keys=True)
        cls[choice] = cls.get(choice, 0) + 1
    return {cls: json.loads(max(counts, key=counts.get)) for cls, counts in votes.items()}


def wgrad_split(rows: int, cols: int, positions: int, cfg: KernelConfig, device: torch.device) -> int:
    """Split-K factor over the N*Do*Ho*Wo reduction of wgrad: enough programs to fill the device, at
    least 8 K steps per split. 2 programs per SM for tiles of 64x64 and up, proportionally more for
    smaller ones: a grouped 16x64 tile's program is a long chain of dependent position steps with few
    registers (61-64 on sm_90), so 8 of them per SM hide each other's load latency (ResNeXt stage 1
    at batch 8: 72 tiles, split 4 -> 15, 196 -> 53 steps per program)."""
    if cfg.split_k:
        return cfg.split_k
    tiles = rows * cols
    target = 2 * max(1, (64 * 64) // (cfg.block_m * cfg.block_n)) * _sm_count(device)
    split = max(1, min(cdiv(target, tiles), cdiv(positions, 8 * cfg.block_k)))
    return min(split, 256)


def fwd_split(tiles: int, k_steps: int, cfg: KernelConfig, device: torch.device) -> int:
    """Split-K factor of fprop: 1 unless the output tiles leave most of the device idle and each of
    them has a long reduction (the deep 3x3x3 layers); then enough slices for ~2 programs per SM, at
    least 8 K steps each."""
    if cfg.split_k:
        return max(1, min(cfg.split_k, k_steps))
    sms = _sm_count(device)
    if tiles >= sms or k_steps < 16:
        return 1
    return max(1, min(cdiv(2 * sms, tiles), k_steps // 8, 16))


def dgrad_split(tiles: int, k_steps: int, cfg: KernelConfig, device: torch.device) -> int:
    """Split-K factor of dgrad: fprop's rule from 32 K steps up. A split costs dgrad a second launch (the
    in-order sum of its slabs), which a chain of 16 steps (~8 us) does not repay: ResNeXt-101's 1x1x1
    stage-3 layers stay whole, ResNet-50's stage-4 3x3x3 (16 tiles of 432 steps) splits 16 ways."""
    if not cfg.split_k and k_steps < 32:
        return 1
    return fwd_split(tiles, k_steps, cfg, device)
