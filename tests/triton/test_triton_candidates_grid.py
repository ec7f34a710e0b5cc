"""Every autotuning candidate of the GPU heuristic (fprop, dgrad, wgrad) on hypothesis-drawn small problems,
in the interpreter, against float64 ATen.

Autotuning and the shipped tables may pick any candidate, and most loop kinds (W_RUNS, TAP_RUNS, L1 and
split-K variants) are only reachable through them; the path tables of test_triton_kernels.py reach each
kind on chosen problems, this grid on drawn ones: dense, ResNeXt-like power-of-two groups, depthwise and
odd group widths, any kernel 1-3, stride, padding and dilation, both layouts, fp32/fp16/bf16, with the
candidate lists of a 4-, 16- or 132-SM GPU. Examples are derandomized (CI sees the same ones);
VIDEO3D_FAST_HYPOTHESIS_EXPLORE=1 draws new ones and VIDEO3D_FAST_GRID_EXAMPLES sets how many (80 drawn
problems, 2339 configurations, passed when this file was written).
"""
from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.ops.helpers import ConvProblem, assert_close
from video3d_fast.ops.debug import poison_outputs

from .cases import launcher_runs

GRID = settings(max_examples=int(os.environ.get("VIDEO3D_FAST_GRID_EXAMPLES", "4")), deadline=None,
                derandomize=os.environ.get("VIDEO3D_FAST_HYPOTHESIS_EXPLORE") != "1",
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    kind = draw(st.sampled_from(["dense", "pow2_groups", "depthwise", "odd_groups"]))
    if kind == "dense":
        groups, cpg, kpg = 1, draw(st.sampled_from([3, 4, 5, 8, 16, 24])), draw(st.sampled_from([4, 8, 12, 16]))
    elif kind == "pow2_groups":  # ResNeXt-like: the W_RUNS and TAP_RUNS loops
        groups, cpg = draw(st.sampled_from([2, 4, 8])), draw(st.sampled_from([4, 8, 16, 32]))
        kpg = cpg * draw(st.sampled_from([1, 2]))
    elif kind == "depthwise":
        groups, cpg, kpg = draw(st.sampled_from([8, 16, 24])), 1, draw(st.sampled_from([1, 2]))
    else:
        groups, cpg, kpg = draw(st.sampled_from([2, 3, 5])), draw(st.sampled_from([3, 6, 12])), draw(
            st.sampled_from([3, 6, 12]))
    p = ConvProblem(
        n=draw(st.integers(1, 2)), c=groups * cpg, k=groups * kpg,
        size=tuple(draw(st.integers(1, 7)) for _ in range(3)),
        kernel=tuple(draw(st.sampled_from([1, 2, 3])) for _ in range(3)),
        stride=tuple(draw(st.integers(1, 2)) for _ in range(3)),
        padding=tuple(draw(st.integers(0, 2)) for _ in range(3)),
        dilation=tuple(draw(st.integers(1, 2)) for _ in range(3)),
        groups=groups, dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
        layout=draw(st.sampled_from(["ncdhw", "ndhwc"])))
    assume(all(o >= 1 for o in p.out_size()))
    return p


@GRID
@given(p=problems(), sm_count=st.sampled_from([4, 16, 132]), seed=st.integers(0, 2**16))
def test_every_candidate_of_every_launcher_matches_float64(p, sm_count, seed):
    for op, r in launcher_runs(p, seed, sm_count=sm_count).by_op.items():
        assert len(r.candidates) >= 2, r.candidates  # the GPU lists, not the interpreter's single tile
        for cfg in r.candidates:
            with poison_outputs():
                out = r.run(cfg)
            assert_close(out, r.expected, p.dtype, f"{op} {cfg} (sm {sm_count})", r.factor)
