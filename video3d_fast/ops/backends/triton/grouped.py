"""Grouped convolution as block-diagonal implicit GEMM: how output-channel tiles map onto groups.

Every conv kernel of this backend is grouped (a dense conv is one group). A tile of BLOCK_N output
channels covers either
* several whole groups (``groups_per_tile`` > 1, ResNeXt's Cg = 4..32, depthwise): its GEMM-K runs
  over the flattened T*R*S*(groups_per_tile*Cg) slice of input channels that those groups read, and
  the weight tile is block-diagonal (entries whose input group differs from the column's group are
  zero). The extra MMAs are free in this memory-bound regime, and no per-tap K padding happens; or
* part of one group (``tiles_per_group`` >= 1, dense convs and wide groups): plain implicit GEMM
  over that group's T*R*S*Cg.

"out" and "red" are the GEMM's column and reduction channels: (K, C) in fprop and wgrad, (C, K)
in dgrad, which is why the tiling is parametrised by them rather than by conv names.
"""
from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from .common import cdiv


@dataclass(frozen=True)
class GroupTiling:
    groups: int
    out_per_group: int
    red_per_group: int
    block_n: int
    groups_per_tile: int  # GB: whole groups one tile covers (1 when a group spans several tiles)
    tiles_per_group: int  # NB: tiles one group spans (1 when a tile holds several groups)

    @property
    def red_per_tile(self) -> int:
        """Reduction channels one tile reads per filter tap (the CT of the kernels)."""
        return self.groups_per_tile * self.red_per_group

    @property
    def num_tiles(self) -> int:
        return cdiv(self.groups, self.groups_per_tile) * self.tiles_per_group

    @property
    def full_groups(self) -> bool:
        """No tile has a partial group block (so no reduction channel needs masking)."""
        return self.groups % self.groups_per_tile == 0

    @property
    def even_out(self) -> bool:
        """Every tile's block_n columns are real output channels, contiguous from a multiple of block_n."""
        if self.groups_per_tile == 1:
            return self.out_per_group % self.block_n == 0
        return self.groups_per_tile * self.out_per_group == self.block_n and self.full_groups

    @property
    def block_diagonal(self) -> bool:
        return self.groups_per_tile > 1

    def row_run_fits(self, width: int, block: int) -> bool:
        """Whether one filter row's ``width`` * CT (s, c) pairs fit a ``block``-wide K step (or wgrad
        column block) that one tap's CT channels would leave partly empty: the kernels' W_RUNS loops."""
        return self.red_per_tile % block != 0 and width * self.red_per_tile <= block

    def tap_runs_fit(self, block: int) -> bool:
        """Whether a ``block``-wide K step (or wgrad column block) holds whole taps of CT channels, each a
        run that loads as vectors (CT a power of two >= 8, 16 bytes in 16-bit): the kernels' TAP_RUNS.
        Narrower or odd CT (the C=3 stem) keeps the flattened per-element gather."""
        ct = self.red_per_tile
        return ct >= 8 and ct & (ct - 1) == 0 and ct < block and block % ct == 0

    def row_runs_preferred(self, width: int, block: int) -> bool:
        """The W_RUNS loop over the TAP_RUNS one: one (t, r) filter row of ``width`` * CT channels fits the
        block, and fills more than half of it where whole taps would also fit (a 128-wide step holds 8
        taps of 16 channels: 4 steps for a 3x3x3 filter instead of 9 rows of 48 columns)."""
        return self.row_run_fits(width, block) and not (self.tap_runs_fit(block)
                                                         and block >= 2 * width * self.red_per_tile)

    def dense_run(self, p, runs: bool) -> bool:
        """Whether a W_RUNS (s, c) run is S*C dense elements of the NDHWC input row and of the KTRSC weight
        row, from a multiple of C (the kernels' DENSE_RUN): one group, CT = C, no dilation in W, and
        W > 1 (a size-1 W gets stride 0 from kernel_strides, and the run is then not s*C + c)."""
        return (runs and self.groups == 1 and self.red_per_tile == p.in_channels and p.dilation[2] == 1
                and p.in_size[2] > 1)

    def kernel_args(self) -> tuple:
        """(groups, out_per_group, red_per_group, GB, NB), the kernels' positional group arguments."""
        return self.groups, self.out_per_group, self.red_per_group, self.groups_per_tile, self.tiles_per_group


def group_tiling(groups: int, out_per_group: int, red_per_group: int, block_n: int) -> GroupTiling:
    if out_per_group >= block_n:
        return GroupTiling(groups, out_per_group, red_per_group, block_n, 1, cdiv(out_per_group, block_n))
    gb = min(block_n // out_per_group, groups)
    return GroupTiling(groups, out_per_group, red_per_group, block_n, gb, 1)


@triton.jit
def tile_channels(pid_n, groups, out_per_group, GB, NB, BLOCK_N: tl.constexpr):
    """Columns of output-channel tile ``pid_n``.

    Returns (g0, out_ch, col_group, col_mask): the tile's first group, the global output channel and
    group of each of its BLOCK_N columns, and which columns are real.
    """
    g0 = (pid_n // NB) * GB
    jj = (pid_n % NB) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_group = g0 + jj // out_per_group
    col_mask = (jj < GB * out_per_group) & (col_group < groups)
    out_ch = g0 * out_per_group + jj
    return g0, out_ch, col_group, col_mask


@triton.jit
def red_channels(g0, cl, red_per_group, groups, BLOCK_DIAG: tl.constexpr):
    """Tile-local reduction channels ``cl`` -> (global channel, index inside its group, group, valid)."""
    if BLOCK_DIAG:
        red_group = g0 + cl // red_per_group
        in_group = cl - (red_group - g0) * red_per_group
    else:
        red_group = g0 + cl * 0
        in_group = cl
    valid = (red_group < groups) & (in_group < red_per_group)
    return g0 * red_per_group + cl, in_group, red_group, valid
