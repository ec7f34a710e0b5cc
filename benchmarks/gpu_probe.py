"""Targeted GPU probe of the Triton backend's open questions, sized for one short device call.

    python benchmarks/gpu_probe.py --out DIR          (GPU; ~1-2 minutes, most of it Triton compiles)
    python benchmarks/gpu_probe.py --smoke            (CPU + TRITON_INTERPRET=1: plumbing only, tiny shapes)

Sections, in the order they run (the most open question first, in case the suite's time limit cuts the rest):
1. ``grouped``: ResNeXt-101's grouped 3x3x3 convs (stage 1's backward and every later stage lose to
               cuDNN), fprop under the W_RUNS (9 K steps), tap-aligned (27) and flattened loops and
               split-K, dgrad and wgrad under several tilings, against cuDNN (shapes are runtime kernel
               arguments, so each tiling compiles once for all shapes). Row names say which loop ran.
2. ``stem``:   the ResNeXt-101 stem (3->128, 7x7x7, stride 1x2x2, 16x112x112, batch 8, bf16) training step
               split into its launches (forward with BN partials, finalize, apply, backward sums, gradient
               prologue, wgrad), the wgrad under several tilings, cuDNN's wgrad and whole step, and a
               CUDA-graph capture of our step with the full error if it fails. Since session 6 the stem
               runs on four-channel rows (DENSE_RUN): forward and wgrad rows show whether that paid.
3. ``kernels``: GPU time per kernel of a training step (ours and eager cuDNN, torch.profiler) for three
               launch-bound stage 3-4 layers and stage 1's grouped conv: which launch to shorten.
4. ``splitk``: fprop of the deep 3x3x3 layers of ResNet-50 with the split-K heuristic vs split 1 vs cuDNN,
               and (session 6) their dgrad: split-K heuristic vs one slice vs cuDNN.
5. ``launch``: host time per call of a launch-bound layer (inference and training form) with the
               direct compiled-kernel launch on and off, and whether both give identical bits.
6. ``bnfuse``: the one-launch BN paths (finalize inside BN-apply, one-kernel BN backward) against the
               separate launches, at stage 1-3 sizes (their thresholds).
Every timed variant is checked against a float64 / cuDNN reference first. Writes DIR/gpu_probe.json and
prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import cuda_graph, environment, rel_err, time_cpu, time_cuda  # noqa: E402
from video3d_fast import ops  # noqa: E402
from video3d_fast.ops.backends.triton import autotune, bn, common, conv3d_fwd, conv3d_wgrad  # noqa: E402
from video3d_fast.ops.params import make_params  # noqa: E402

DEV = "cpu" if SMOKE else "cuda"
DT = torch.float32 if SMOKE else torch.bfloat16
CL = torch.channels_last_3d
rows = []


def ms(fn) -> float:
    if SMOKE:
        return time_cpu(fn, warmup=0, min_runs=1, min_seconds=0.0)["median_ms"]
    return time_cuda(fn, warmup_ms=5, rep_ms=25)["median_ms"]


def row(section, name, t_ms, err=float("nan"), **extra):
    rows.append(dict(section=section, name=name, ms=round(t_ms, 4), rel_err=err, **extra))
    print(f"{section:7s} {name:44s} {t_ms:9.4f} ms  err {err:.2e} {extra if extra else ''}", flush=True)


def variant(section, name, fn, ref, output=lambda result: result):
    """Time ``fn`` and compare ``output(fn())`` with ``ref``; a variant that fails (e.g. does not compile)
    is a finding, recorded as a FAILED row, not the end of the probe."""
    try:
        row(section, name, ms(fn), rel_err(output(fn()), ref))
    except Exception as exc:
        row(section, name + " FAILED", float("nan"), error=f"{type(exc).__name__}: {exc}"[:300])


def randn(*shape, scale=1.0):
    return (torch.randn(*shape, device=DEV, dtype=torch.float32) * scale).to(DT)


def probe_stem():
    n, size = (1, (4, 16, 16)) if SMOKE else (8, (16, 112, 112))
    k = 16 if SMOKE else 128
    x = randn(n, 3, *size).contiguous(memory_format=CL)
    w = randn(k, 3, 7, 7, 7, scale=(3 * 343) ** -0.5).contiguous(memory_format=CL)
    kw = dict(stride=(1, 2, 2), padding=(3, 3, 3))
    p = make_params(x, w, **kw)
    gamma, beta = torch.rand(k, device=DEV) + 0.5, torch.randn(k, device=DEV) * 0.1
    dy = randn(*p.out_shape).contiguous(memory_format=CL)

    r = conv3d_fwd.conv3d_fwd(x, w, p, store_out=False, store_conv=True, stats=True)
    row("stem", "fwd conv + BN partials", ms(lambda: conv3d_fwd.conv3d_fwd(
        x, w, p, store_out=False, store_conv=True, stats=True)), rel_err(r.conv, F.conv3d(x, w, **kw)))
    fin = lambda: bn.bn_finalize(r.tile_sum, r.tile_m2, r.block_m, p.gemm_m, gamma, beta, 1e-5)  # noqa: E731
    stats = fin()
    mean, var = stats[0], stats[1]
    row("stem", "bn_finalize", ms(fin))
    out = bn.channel_affine_act(r.conv, stats, None, True, CL)
    row("stem", "channel_affine_act", ms(lambda: bn.channel_affine_act(r.conv, stats, None, True, CL)))
    sums = lambda: bn.grad_sums(dy, out, True, c=r.conv, mean=mean, var=var, eps=1e-5)  # noqa: E731
    sum_g, sum_gx = sums()
    row("stem", "grad_sums", ms(sums))
    pro = lambda: bn.grad_prologue(dy, out, True, gamma, store_gc=True, gz_format=None,  # noqa: E731
                                   bn=(r.conv, mean, var, sum_g, sum_gx, 1e-5))
    gc = pro()[0]
    row("stem", "grad_prologue", ms(pro))

    ref = torch.ops.aten.convolution_backward(gc, x, w, None, [1, 2, 2], [3, 3, 3], [1, 1, 1], False, [0, 0, 0],
                                              1, [False, True, False])[1]
    row("stem", "cuDNN wgrad", ms(lambda: torch.ops.aten.convolution_backward(
        gc, x, w, None, [1, 2, 2], [3, 3, 3], [1, 1, 1], False, [0, 0, 0], 1, [False, True, False])))
    # the launcher runs the stem's wgrad on four-channel rows (session 6): its heuristic tile is chosen for
    # those params, and every row below runs on them (flattened tiles: 343 x 4 columns instead of 343 x 3)
    heuristic = autotune.launcher_candidates("wgrad", p, DT, x.device)[0]
    variants = [("heuristic " + str(heuristic), heuristic, True)]
    if not SMOKE:
        variants += [
            ("W_RUNS 128x32x64 split 12", autotune.KernelConfig(128, 32, 64, 4, 3, split_k=12), True),
            ("W_RUNS 128x32x64 split 24", autotune.KernelConfig(128, 32, 64, 4, 3, split_k=24), True),
            ("flat 128x128x32", autotune.KernelConfig(128, 128, 32, 4, 3), False),
            ("flat 128x64x32", autotune.KernelConfig(128, 64, 32, 4, 3), False),
            ("flat 128x64x64", autotune.KernelConfig(128, 64, 64, 4, 3), False),
            ("flat 64x128x32", autotune.KernelConfig(64, 128, 32, 4, 3), False),
            ("flat 128x128x32 split 64", autotune.KernelConfig(128, 128, 32, 4, 3, split_k=64), False),
        ]
    original = conv3d_wgrad.w_runs
    for name, cfg, runs in variants:
        conv3d_wgrad.w_runs = original if runs else (lambda *args: False)
        try:
            variant("stem", "wgrad " + name, lambda: conv3d_wgrad.conv3d_wgrad(gc, x, w, p, config=cfg), ref)
        finally:
            conv3d_wgrad.w_runs = original

    rm, rv = torch.zeros(k, device=DEV), torch.ones(k, device=DEV)
    w_leaf, g_leaf, b_leaf = (t.detach().requires_grad_(True) for t in (w, gamma, beta))

    def ours_step():
        y = ops.conv3d_batchnorm_act(x, w_leaf, g_leaf, b_leaf, rm, rv, None, None, activation="relu",
                                     backend="triton", **kw)
        return torch.autograd.grad(y, [w_leaf, g_leaf, b_leaf], dy)

    def eager_step():
        y = torch.relu(F.batch_norm(F.conv3d(x, w_leaf, None, **kw), rm, rv, g_leaf, b_leaf, True, 0.1, 1e-5))
        return torch.autograd.grad(y, [w_leaf, g_leaf, b_leaf], dy)

    row("stem", "whole step ours (eager)", ms(ours_step), max(rel_err(a, e) for a, e in zip(ours_step(), eager_step())))
    row("stem", "whole step cuDNN eager", ms(eager_step))
    if not SMOKE:
        failures = []
        graph = cuda_graph(ours_step, failures)
        if graph is not None:
            row("stem", "whole step ours (CUDA graph)", ms(graph.replay), attempts=len(failures) + 1)
        else:
            row("stem", "whole step ours (CUDA graph) FAILED", float("nan"), error=" | ".join(failures))


def probe_splitk():
    shapes = [(64, 64, (8, 28, 28), 1)] if SMOKE else [
        (256, 256, (2, 7, 7), 1), (512, 512, (1, 4, 4), 1), (256, 256, (4, 14, 14), 2),
        (512, 512, (2, 7, 7), 2), (128, 128, (4, 14, 14), 1), (128, 128, (8, 28, 28), 2), (64, 64, (8, 28, 28), 1)]
    n = 1 if SMOKE else 8
    if SMOKE:
        shapes = [(16, 16, (2, 3, 3), 1)]
    for c, k, size, s in shapes:
        x = randn(n, c, *size).contiguous(memory_format=CL)
        w = randn(k, c, 3, 3, 3, scale=(27 * c) ** -0.5).contiguous(memory_format=CL)
        kw = dict(stride=(s, s, s), padding=(1, 1, 1))
        p = make_params(x, w, **kw)
        scale, shift = torch.rand(k, device=DEV) + 0.5, torch.randn(k, device=DEV)
        ref = torch.relu(F.conv3d(x.double(), w.double(), None, **kw) * scale.double().view(1, -1, 1, 1, 1)
                         + shift.double().view(1, -1, 1, 1, 1))
        label = f"{c}->{k} s{s} @{'x'.join(map(str, size))}"
        cudnn = lambda: torch.relu(F.conv3d(x, w, None, **kw) * scale.view(1, -1, 1, 1, 1).to(DT)  # noqa: E731
                                   + shift.view(1, -1, 1, 1, 1).to(DT))
        row("splitk", label + " cuDNN conv+affine+relu", ms(cudnn), rel_err(cudnn(), ref))
        base = autotune.fwd_candidates(p, DT, x.device)[0]
        def split(k):
            return autotune.KernelConfig(base.block_m, base.block_n, base.block_k, base.num_warps, base.num_stages,
                                         split_k=k)

        # the heuristic splits only below one CTA per SM; 2-4 slices show whether 1-2 waves want it too
        for name, cfg in [("heuristic", base)] + [(f"split {k}", split(k)) for k in ((1,) if SMOKE else (1, 2, 4))]:
            plan = conv3d_fwd._fwd_plan(p, cfg, CL, None, {"STATS": False}, x.device)
            f = lambda: conv3d_fwd.conv3d_fwd(x, w, p, scale=scale, shift=shift, relu=True, config=cfg)  # noqa: E731
            row("splitk", f"{label} ours {name}", ms(f), rel_err(f().out, ref), split=plan.conv.grid[2])
        if (c, size) not in ((128, (4, 14, 14)), (128, (8, 28, 28)), (64, (8, 28, 28))):
            _probe_dgrad_split(label, x, w, p, kw)


def _probe_dgrad_split(label, x, w, p, kw):
    """dgrad of a deep layer (16-128 output tiles, 64-400 K steps each): split-K (session 6) against one
    slice and cuDNN's dgrad."""
    from video3d_fast.ops.backends.triton import conv3d_dgrad

    dy = randn(*p.out_shape).contiguous(memory_format=CL)
    cudnn = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
        dy, x, w, None, list(kw["stride"]), list(kw["padding"]), [1, 1, 1], False, [0, 0, 0], 1,
        [True, False, False])[0]
    ref = torch.ops.aten.convolution_backward(
        dy.double(), x.double(), w.double(), None, list(kw["stride"]), list(kw["padding"]), [1, 1, 1], False,
        [0, 0, 0], 1, [True, False, False])[0]
    row("splitk", label + " cuDNN dgrad", ms(cudnn), rel_err(cudnn(), ref))
    base = autotune.dgrad_candidates(p, DT, x.device)[0]
    for name, cfg in (("heuristic", base), ("split 1", dataclasses.replace(base, split_k=1))):
        plan = conv3d_dgrad._dgrad_plan(p, cfg, CL, {}, x.device)
        f = lambda: conv3d_dgrad.conv3d_dgrad(dy, w, p, CL, config=cfg)  # noqa: E731
        row("splitk", f"{label} ours dgrad {name}", ms(f), rel_err(f(), ref),
            split=plan.grid[2] // (p.stride[0] * p.stride[1] * p.stride[2]))


def probe_launch():
    n, c, k, size = (1, 16, 32, (2, 4, 4)) if SMOKE else (8, 1024, 2048, (2, 7, 7))
    x = randn(n, c, *size).contiguous(memory_format=CL)
    w = randn(k, c, 1, 1, 1, scale=c ** -0.5).contiguous(memory_format=CL)
    scale, shift = torch.rand(k, device=DEV) + 0.5, torch.randn(k, device=DEV)
    gamma, beta = torch.rand(k, device=DEV) + 0.5, torch.randn(k, device=DEV) * 0.1
    rm, rv = torch.zeros(k, device=DEV), torch.ones(k, device=DEV)
    xl, wl, gl, bl = (t.detach().requires_grad_(True) for t in (x, w, gamma, beta))
    y_shape = (n, k, *size)
    dy = randn(*y_shape).contiguous(memory_format=CL)

    def infer():
        return ops.conv3d_affine_act(x, w, scale, shift, None, activation="relu", backend="triton")

    def train():
        y = ops.conv3d_batchnorm_act(xl, wl, gl, bl, rm, rv, None, None, activation="relu", backend="triton")
        return (y,) + torch.autograd.grad(y, [xl, wl, gl, bl], dy)

    def host_us(fn, calls=200 if not SMOKE else 2):
        fn()
        if not SMOKE:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if not SMOKE:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / calls * 1e6

    results = {}
    for direct in (False, True):
        common.DIRECT_LAUNCH = direct and not SMOKE
        with torch.no_grad():
            inferred = infer()
            t_inf = host_us(infer)
        results[direct] = (inferred, train())
        t_train = host_us(train)
        row("launch", f"direct={direct} inference 1x1x1 {c}->{k}", t_inf / 1e3)
        row("launch", f"direct={direct} training 1x1x1 {c}->{k}", t_train / 1e3)
    same = all(torch.equal(a, b) for a, b in zip((results[False][0], *results[False][1]),
                                                 (results[True][0], *results[True][1])))
    row("launch", "direct and JIT launches give identical bits", 0.0, 0.0 if same else float("inf"), identical=same)

    # where the training step's host time goes: forward alone, backward alone, ours and eager's
    def fwd_ours():
        return ops.conv3d_batchnorm_act(xl, wl, gl, bl, rm, rv, None, None, activation="relu", backend="triton")

    def fwd_eager():
        return torch.relu(F.batch_norm(F.conv3d(xl, wl), rm, rv, gl, bl, True, 0.1, 1e-5))

    for name, fwd in (("ours", fwd_ours), ("eager", fwd_eager)):
        t_fwd = host_us(fwd)
        ys = [fwd() for _ in range(201 if not SMOKE else 3)]
        it = iter(ys)
        t_bwd = host_us(lambda: torch.autograd.grad(next(it), [xl, wl, gl, bl], dy))
        row("launch", f"host per call, {name}: forward (graph recorded)", t_fwd / 1e3)
        row("launch", f"host per call, {name}: backward (autograd.grad)", t_bwd / 1e3)
        ys = it = None  # free the recorded graphs before the next variant (not del: the lambda names it)


def probe_kernels():
    """Where a training step spends GPU time: each kernel's time per step (CUPTI, via torch.profiler), ours
    and eager cuDNN's, for the launch-bound stage 3-4 shapes that are most of ResNeXt-101's convs and for
    stage 1's grouped conv, whose backward loses 3x. The suite's table only has the sum (CUDA-graph
    replay), which does not say which launch to fix."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    n = 1 if SMOKE else 8
    shapes = [("1x1x1 16->32 @2x4x4", 16, 32, 1, 1, (2, 4, 4))] if SMOKE else [
        ("1x1x1 512->1024 @2x7x7", 512, 1024, 1, 1, (2, 7, 7)),
        ("3x3x3 512 g32 @2x7x7", 512, 512, 3, 32, (2, 7, 7)),
        ("1x1x1 1024->2048 @1x4x4", 1024, 2048, 1, 1, (1, 4, 4)),
        # stage 1's grouped conv: backward 0.485 ms against cuDNN's 0.148 (H200 run 3); which launch?
        ("3x3x3 128 g32 @8x28x28", 128, 128, 3, 32, (8, 28, 28)),
    ]
    steps = 2 if SMOKE else 20
    for label, c, k, ks, groups, size in shapes:
        x = randn(n, c, *size).contiguous(memory_format=CL)
        w = randn(k, c // groups, ks, ks, ks, scale=(ks ** 3 * c // groups) ** -0.5).contiguous(memory_format=CL)
        gamma, beta = torch.rand(k, device=DEV) + 0.5, torch.randn(k, device=DEV) * 0.1
        rm, rv = torch.zeros(k, device=DEV), torch.ones(k, device=DEV)
        xl, wl, gl, bl = (t.detach().requires_grad_(True) for t in (x, w, gamma, beta))
        dy = randn(n, k, *size).contiguous(memory_format=CL)
        kw = dict(padding=ks // 2, groups=groups)

        def ours():
            y = ops.conv3d_batchnorm_act(xl, wl, gl, bl, rm, rv, None, None, activation="relu", backend="triton",
                                         **kw)
            return torch.autograd.grad(y, [xl, wl, gl, bl], dy)

        def eager():
            y = torch.relu(F.batch_norm(F.conv3d(xl, wl, **kw), rm, rv, gl, bl, True, 0.1, 1e-5))
            return torch.autograd.grad(y, [xl, wl, gl, bl], dy)

        # the smoke run (CPU) records CPU ops instead of kernels: the same plumbing
        activity, device = ((ProfilerActivity.CPU, DeviceType.CPU) if SMOKE else
                            (ProfilerActivity.CUDA, DeviceType.CUDA))
        for name, step in (("ours", ours), ("eager", eager)):
            step()
            if not SMOKE:
                torch.cuda.synchronize()
            with profile(activities=[activity]) as prof:
                for _ in range(steps):
                    step()
                if not SMOKE:
                    torch.cuda.synchronize()
            per_kernel: dict = {}
            for e in prof.events():
                if e.device_type == device:
                    t, calls = per_kernel.get(e.name, (0.0, 0))
                    per_kernel[e.name] = (t + e.time_range.elapsed_us(), calls + 1)
            total = sum(t for t, _ in per_kernel.values())
            row("kernels", f"{label} {name}: all kernels", total / steps / 1e3,
                kernels_per_step=round(sum(cnt for _, cnt in per_kernel.values()) / steps, 1))
            for kname, (t, calls) in sorted(per_kernel.items(), key=lambda item: -item[1][0])[:8]:
                row("kernels", f"{label} {name}:  {kname[:40]}", t / steps / 1e3, per_step=round(calls / steps, 1))


def _loop_kind(plan) -> str:
    """The K loop a launch plan's constexprs select, as the grouped rows name it."""
    c = plan.constexprs
    return ("runs" if c["W_RUNS"] else "aligned" if c["TAP_ALIGNED"] else "taps" if c["TAP_RUNS"] else "flat")


def probe_grouped():
    # (C = K, spatial size, stride) at batch 8; 32 groups
    # stage 1 (128 channels) is 9x cuDNN forward but 0.3x backward; the later stages lose both ways
    shapes = [(32, (2, 4, 4), 1)] if SMOKE else [
        (128, (8, 28, 28), 1), (256, (4, 14, 14), 1), (512, (2, 7, 7), 1), (1024, (1, 4, 4), 1),
        (512, (4, 14, 14), 2)]
    n, groups = (1, 8) if SMOKE else (8, 32)
    # Each tiling is one Triton compile (~1-2 s on the GPU host; shapes are runtime arguments, but the loop
    # kind a tiling takes on a shape is a constexpr): ~30 compiles in all, so the lists stay short (a
    # TUNE=1 suite run times every candidate of every layer; these rows say which loop kind wins where).
    configs = [autotune.KernelConfig(16, 16, 64, 4, 3)] if SMOKE else [
        # W_RUNS (one (t, r) filter row of S*CT channels per K step: 9 steps instead of 27), the
        # heuristic since session 5 where fewer than 4 programs per SM run (stages 3-4), and deeper
        autotune.KernelConfig(64, 16, 64, 4, 3), autotune.KernelConfig(32, 16, 64, 4, 3),
        autotune.KernelConfig(64, 16, 64, 4, 5),
        # the tap-aligned loop (the heuristic of stages 1-2)
        autotune.KernelConfig(64, 16, 16, 4, 3),
        # no cp.async pipeline (/1): plain loads, cached in L1, so the taps' re-reads of a tile's input
        # neighbourhood stop going to L2 (session 8; autotune._l1_variants): expected to help stages 1-2
        autotune.KernelConfig(128, 16, 16, 4, 1), autotune.KernelConfig(64, 16, 64, 4, 1),
        # whole taps per K step (TAP_RUNS, session 8): 8 taps of 16 (32) channels, 4 steps instead of 9
        autotune.KernelConfig(64, 16, 128, 4, 3), autotune.KernelConfig(32, 32, 256, 4, 3),
    ]
    from video3d_fast.ops.backends.triton import conv3d_dgrad

    for c, size, s in shapes:
        x = randn(n, c, *size).contiguous(memory_format=CL)
        w = randn(c, c // groups, 3, 3, 3, scale=(27 * c // groups) ** -0.5).contiguous(memory_format=CL)
        kw = dict(stride=(s, s, s), padding=(1, 1, 1), groups=groups)
        p = make_params(x, w, **kw)
        label = f"{c} g{groups} s{s} @{'x'.join(map(str, size))}"
        ref = F.conv3d(x, w, None, **kw)
        row("grouped", label + " cuDNN fprop", ms(lambda: F.conv3d(x, w, None, **kw)))
        for cfg in [None] + configs:
            plan_cfg = cfg or autotune.fwd_candidates(p, DT, x.device)[0]
            plan = conv3d_fwd._fwd_plan(p, plan_cfg, CL, None, {}, x.device).conv
            loop = _loop_kind(plan) + (f" split {plan.grid[2]}" if plan.grid[2] > 1 else "")
            name = f"{plan_cfg.block_m}x{plan_cfg.block_n}x{plan_cfg.block_k}/{plan_cfg.num_stages} {loop}"
            variant("grouped", f"{label} fprop {'heuristic ' if cfg is None else ''}{name}",
                    lambda: conv3d_fwd.conv3d_fwd(x, w, p, config=plan_cfg), ref, output=lambda r: r.out)
        dy = randn(*p.out_shape).contiguous(memory_format=CL)
        cudnn_bwd = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
            dy, x, w, None, list(p.stride), list(p.padding), list(p.dilation), False, [0, 0, 0], groups,
            [True, True, False])
        gx_ref, gw_ref = cudnn_bwd()[:2]
        row("grouped", label + " cuDNN dgrad+wgrad", ms(cudnn_bwd))
        dgrad_configs = [None] + ([autotune.KernelConfig(16, 16, 64, 4, 3)] if SMOKE else [
            # W_RUNS (stride 1 only; the heuristic for stages 3-4 since session 5), a tap-aligned tile, then
            # as fprop: L1 (/1) and whole taps per K step
            autotune.KernelConfig(64, 16, 64, 4, 3), autotune.KernelConfig(64, 16, 16, 4, 3),
            autotune.KernelConfig(128, 16, 16, 4, 1),
            autotune.KernelConfig(64, 16, 128, 4, 3), autotune.KernelConfig(32, 32, 256, 4, 3)])
        for cfg in dgrad_configs:
            plan_cfg = cfg or autotune.dgrad_candidates(p, DT, x.device)[0]
            plan = conv3d_dgrad._dgrad_plan(p, plan_cfg, CL, {}, x.device)
            loop = _loop_kind(plan)
            if plan.constexprs["SPLIT_K"]:
                loop += f" split {plan.grid[2] // s ** 3}"
            name = f"{plan_cfg.block_m}x{plan_cfg.block_n}x{plan_cfg.block_k}/{plan_cfg.num_stages} {loop}"
            variant("grouped", f"{label} dgrad {'heuristic ' if cfg is None else ''}{name}",
                    lambda: conv3d_dgrad.conv3d_dgrad(dy, w, p, CL, config=plan_cfg), gx_ref)
        # wgrad: dy is re-read once per column block. W_RUNS blocks (one (t, r) filter row of S*CT columns,
        # the heuristic since session 5) take 9 blocks; tap blocks (the heuristic before) 27
        bwd_configs = [None] + ([] if SMOKE else [
            autotune.KernelConfig(16, 16, 64, 4, 3),  # tap blocks: the heuristic before
            # W_RUNS blocks with a larger split than the heuristic's, and without the pipeline (L1, as fprop)
            autotune.KernelConfig(16, 64, 64, 4, 3, split_k=32), autotune.KernelConfig(16, 64, 64, 4, 1),
            # whole-tap column blocks (TAP_RUNS, session 8): all 27 taps of 16 channels, dy read once
            autotune.KernelConfig(16, 512, 16, 4, 3), autotune.KernelConfig(16, 512, 16, 4, 1)])
        for cfg in bwd_configs:
            plan_cfg = cfg or autotune.wgrad_candidates(p, DT, x.device)[0]
            plan = conv3d_wgrad._wgrad_plan(p, plan_cfg, CL, {}, x.device)
            loop = _loop_kind(plan) + f" split {plan.grid[2]}"
            name = f"{plan_cfg.block_m}x{plan_cfg.block_n}x{plan_cfg.block_k}/{plan_cfg.num_stages} {loop}"
            variant("grouped", f"{label} wgrad {'heuristic ' if cfg is None else ''}{name}",
                    lambda: conv3d_wgrad.conv3d_wgrad(dy, x, w, p, config=plan_cfg), gw_ref)


_GROUPED_ROW = re.compile(r"^(?P<label>.+?) (?P<op>fprop|dgrad|wgrad) (?P<heuristic>heuristic )?(?P<cfg>.+)$")
_GROUPED_CUDNN = re.compile(r"^(?P<label>.+?) cuDNN (?P<op>fprop|dgrad\+wgrad)$")


def grouped_digest(all_rows) -> list:
    """Per grouped shape and op: the heuristic's time, the fastest correct tiling's and cuDNN's, so the
    reader of a suite summary sees at once which loop kind wins where (the rule in notes_triton.md,
    session 8). The backward compares dgrad + wgrad sums: cuDNN times them together."""
    table: dict = {}
    for r in all_rows:
        if r.get("section") != "grouped" or "FAILED" in r["name"] or not math.isfinite(r.get("ms", math.nan)):
            continue
        cudnn = _GROUPED_CUDNN.match(r["name"])
        if cudnn:
            table.setdefault(cudnn["label"], {})["cuDNN " + cudnn["op"]] = r["ms"]
            continue
        m = _GROUPED_ROW.match(r["name"])
        if not m or not r.get("rel_err", math.inf) < 0.05:
            continue
        ops_ = table.setdefault(m["label"], {}).setdefault(m["op"], {"best": None})
        if m["heuristic"]:
            ops_["heuristic"] = (r["ms"], m["cfg"])
        if ops_["best"] is None or r["ms"] < ops_["best"][0]:
            ops_["best"] = (r["ms"], m["cfg"])
    digest = []
    for label, entry in table.items():
        for op in ("fprop", "dgrad", "wgrad"):
            if op not in entry or "heuristic" not in entry[op]:
                continue
            (h_ms, h_cfg), (b_ms, b_cfg) = entry[op]["heuristic"], entry[op]["best"]
            digest.append(dict(shape=label, op=op, heuristic_ms=h_ms, heuristic=h_cfg, best_ms=b_ms, best=b_cfg))
        fwd, bwd = entry.get("fprop"), (entry.get("dgrad"), entry.get("wgrad"))
        if fwd and "cuDNN fprop" in entry:
            digest.append(dict(shape=label, op="fprop vs cuDNN", cudnn_ms=entry["cuDNN fprop"],
                               heuristic_x=entry["cuDNN fprop"] / fwd["heuristic"][0],
                               best_x=entry["cuDNN fprop"] / fwd["best"][0]))
        if all(bwd) and "cuDNN dgrad+wgrad" in entry and all("heuristic" in b for b in bwd):
            c_ms = entry["cuDNN dgrad+wgrad"]
            digest.append(dict(shape=label, op="dgrad+wgrad vs cuDNN", cudnn_ms=c_ms,
                               heuristic_x=c_ms / (bwd[0]["heuristic"][0] + bwd[1]["heuristic"][0]),
                               best_x=c_ms / (bwd[0]["best"][0] + bwd[1]["best"][0])))
    return digest


def _digest_line(d: dict) -> str:
    if "cudnn_ms" in d:
        return (f"best    {d['shape']} {d['op']}: cuDNN {d['cudnn_ms']:.4f} ms, heuristic {d['heuristic_x']:.2f}x, "
                f"best tilings {d['best_x']:.2f}x")
    return (f"best    {d['shape']} {d['op']}: heuristic {d['heuristic_ms']:.4f} ms ({d['heuristic']}), "
            f"best {d['best_ms']:.4f} ms ({d['best']})")


def probe_bnfuse():
    """The launch-saving BN paths against the separate ones, GPU time of the kernels alone, at the sizes
    that decide their thresholds (bn.FUSED_FINALIZE_MAX_TILES, bn.FUSED_BACKWARD_MAX_ROWS): ResNeXt-101
    stage 3 (784 rows per channel) and stage 2 (6272), batch 8."""
    shapes = [(16, (1, 2, 4, 4))] if SMOKE else [(1024, (8, 2, 7, 7)), (512, (8, 4, 14, 14)), (256, (8, 8, 28, 28))]
    for k, (n, *size) in shapes:
        dy = randn(n, k, *size).contiguous(memory_format=CL)
        gamma, beta = torch.rand(k, device=DEV) + 0.5, torch.randn(k, device=DEV) * 0.1
        x = randn(n, k, *size).contiguous(memory_format=CL)
        w = randn(k, k, 1, 1, 1, scale=k ** -0.5).contiguous(memory_format=CL)
        p = make_params(x, w)
        r = conv3d_fwd.conv3d_fwd(x, w, p, store_out=False, store_conv=True, stats=True)
        label = f"K={k} rows={p.gemm_m} tiles={r.tile_sum.shape[0]}"
        stats = bn.bn_finalize(r.tile_sum, r.tile_m2, r.block_m, p.gemm_m, gamma, beta, 1e-5)
        ref_out = bn.channel_affine_act(r.conv, stats, None, True, CL)
        fused_apply = (r.tile_sum, r.tile_m2, r.block_m, gamma, beta, 1e-5, None)
        variant("bnfuse", f"{label} finalize + apply", lambda: bn.channel_affine_act(
            r.conv, bn.bn_finalize(r.tile_sum, r.tile_m2, r.block_m, p.gemm_m, gamma, beta, 1e-5), None, True, CL),
            ref_out)
        variant("bnfuse", f"{label} apply with finalize inside", lambda: bn.channel_affine_act(
            r.conv, torch.empty_like(stats), None, True, CL, finalize=fused_apply), ref_out)
        mean, var = stats[0].contiguous(), stats[1].contiguous()
        args = (dy, ref_out, True, r.conv, mean, var, gamma, 1e-5)
        ref_gc = bn.bn_backward(*args, store_gc=True, gz_format=None, need_sums=True)[1] if SMOKE else None
        for name, rows_limit in (("3 launches", 0), ("one kernel", 1 << 30)):
            old, bn.FUSED_BACKWARD_MAX_ROWS = bn.FUSED_BACKWARD_MAX_ROWS, rows_limit
            try:
                gc = bn.bn_backward(*args, store_gc=True, gz_format=None, need_sums=True)[1]
                ref_gc = gc if ref_gc is None else ref_gc
                variant("bnfuse", f"{label} BN backward {name}", lambda: bn.bn_backward(
                    *args, store_gc=True, gz_format=None, need_sums=True)[1], ref_gc)
            finally:
                bn.FUSED_BACKWARD_MAX_ROWS = old


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    env = environment()
    print("gpu_probe:", env, flush=True)
    # grouped first: the furthest target and never measured yet (the suite's time limit cut it in run 3);
    # then what session 6 changed without a GPU (stem, small-layer kernels, dgrad split-K); launch and
    # bnfuse last: measured in runs 2-3
    for probe in (probe_grouped, probe_stem, probe_kernels, probe_splitk, probe_launch, probe_bnfuse):
        t0 = time.time()
        try:
            probe()
        except Exception:
            print(traceback.format_exc(), flush=True)
            rows.append(dict(section=probe.__name__, name="probe FAILED", error=traceback.format_exc()[-1500:]))
        print(f"[{probe.__name__} {time.time() - t0:.0f}s]", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digest = grouped_digest(rows)
    (out / "gpu_probe.json").write_text(json.dumps({"environment": env, "rows": rows, "grouped_digest": digest},
                                                   indent=1, default=str))
    print("\n".join(f"{r['section']:7s} {r['name']:52s} {r.get('ms', float('nan')):9.4f} ms err {r.get('rel_err', '')}"
                    for r in rows))
    print("\n".join(_digest_line(d) for d in digest))
    # a variant that failed, or an output with NaN/inf (rel_err() gives inf), makes the probe fail
    bad = [r["name"] for r in rows if "FAILED" in r["name"] or r.get("rel_err") == float("inf")]
    if bad:
        print("gpu_probe: failed rows:", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
