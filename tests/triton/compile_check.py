"""Compile every Triton kernel variant the backend launches for a GPU architecture, without a GPU.

    TRITON_INTERPRET=0 python -m tests.triton.compile_check [--arch 90] [--dtypes bf16,fp16,fp32] [--all-candidates]

Runs the backend's methods on CPU tensors (real layer shapes, tiny spatial sizes) with a stand-in
Triton driver that reports a CUDA target, and turns every kernel launch into a compile-only
``warmup``: each specialisation the launchers produce is compiled to a cubin by the installed Triton
(front end, LLVM and ptxas), so API misuse, type errors and resource overflows show up here instead of
on the GPU. Prints one line per compiled kernel with its registers, spills and shared memory (from the
bundled cuobjdump) and exits non-zero when a compile fails. Values are never computed.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List


class _CompileOnlyDriver:
    """The subset of Triton's driver interface the JIT needs before a launch."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


def _resource_usage(cubin: bytes) -> str:
    """'REG:.. STACK:.. SHARED:..' from cuobjdump, or '' when the tool is missing."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        tool = shutil.which("cuobjdump") or ""
    if not tool:
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out)
    return f"regs={m.group(1)} stack={m.group(2)} smem={m.group(3)}" if m else ""


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (80 = A100, 90 = H100)")
    ap.add_argument("--dtypes", default="bf16,fp16,fp32,fp32ieee", help="fp32ieee: fp32 with TF32 disallowed")
    ap.add_argument("--quick", action="store_true", help="one dtype-independent pass over fewer shapes")
    ap.add_argument("--all-candidates", action="store_true",
                    help="also compile every autotuning candidate of fprop/dgrad/wgrad, not only the heuristic's")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_check needs compiled kernels: unset TRITON_INTERPRET", file=sys.stderr)
        return 2

    import torch
    import triton
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    driver.set_active(_CompileOnlyDriver(args.arch))
    compiled = []
    original_run = JITFunction.run

    def compile_only(self, *a, grid, warmup, **kw):
        t0 = time.time()
        n_before = sum(len(c[0]) for c in self.device_caches.values())
        kernel = original_run(self, *a, grid=grid, warmup=True, **kw)
        if sum(len(c[0]) for c in self.device_caches.values()) > n_before:
            flags = ",".join(f"{k}={v}" for k, v in kw.items() if k.isupper() or k in ("num_warps", "num_stages"))
            usage = _resource_usage(kernel.asm["cubin"]) if kernel is not None and "cubin" in kernel.asm else ""
            compiled.append(f"{self.fn.__name__:28s} {time.time() - t0:5.1f}s {usage:32s} {flags}")
            print(compiled[-1], flush=True)
        return kernel

    JITFunction.run = compile_only
    from video3d_fast.ops.backends.base import RunningStats
    from video3d_fast.ops.backends.triton import TritonBackend, autotune, bn
    from video3d_fast.ops.backends.triton import common as triton_common

    triton_common.DIRECT_LAUNCH = False  # every launch must reach the compile-only JIT entry above
    from video3d_fast.ops.params import make_params

    autotune._sm_count = lambda device: 132  # configs as on an H100
    backend = TritonBackend()
    fused_tiles, fused_rows = bn.FUSED_FINALIZE_MAX_TILES, bn.FUSED_BACKWARD_MAX_ROWS
    # (C, K, kernel, stride, groups, spatial in) -- one per shape class of ResNet-50 / ResNeXt-101
    shapes = [
        (3, 64, 7, (1, 2, 2), 1, (4, 14, 14)),
        (64, 64, 3, 1, 1, (2, 8, 8)),
        (64, 256, 1, 1, 1, (2, 8, 8)),
        (256, 512, 1, 2, 1, (2, 8, 8)),
        (128, 128, 3, 2, 1, (2, 8, 8)),
        (128, 128, 3, 1, 32, (2, 8, 8)),
        (256, 256, 3, 2, 32, (2, 8, 8)),
        (1024, 1024, 3, 1, 32, (1, 4, 4)),
        (64, 64, 3, 1, 64, (2, 8, 8)),
    ]
    if args.quick:
        shapes = [shapes[i] for i in (0, 1, 2, 5)]
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp32ieee": torch.float32}
    failures = 0
    t_start = time.time()
    for dname in args.dtypes.split(","):
        dtype = dtypes[dname]
        torch.backends.cudnn.allow_tf32 = dname != "fp32ieee"
        for c, k, ks, stride, groups, size in shapes:
            x = torch.randn(1, c, *size).to(dtype).contiguous(memory_format=torch.channels_last_3d)
            w = torch.randn(k, c // groups, ks, ks, ks).to(dtype).contiguous(memory_format=torch.channels_last_3d)
            p = make_params(x, w, stride, ks // 2, 1, groups)
            vec = torch.rand(k)
            res = torch.randn(p.out_shape).to(dtype).contiguous(memory_format=torch.channels_last_3d)
            label = f"{dname} C={c} K={k} k={ks} s={stride} g={groups}"
            try:
                out, conv = backend.affine_act_forward(x, w, vec, vec, res, p, True, True)
                backend.affine_act_backward(res, out, conv, x, w, vec, p, True, [True, True, True, True, True])
                # both BN paths: fused finalize / one-kernel backward (few rows), and the long-reduction ones
                for fused in (True, False):
                    bn.FUSED_FINALIZE_MAX_TILES = fused_tiles if fused else 0
                    bn.FUSED_BACKWARD_MAX_ROWS = fused_rows if fused else 0
                    running = RunningStats(torch.zeros(k), torch.ones(k), 0.1)
                    out, conv, mean, var = backend.batchnorm_act_forward(x, w, vec, vec, res if fused else None,
                                                                         p, 1e-5, True, running=running)
                    backend.batchnorm_act_backward(res, out, conv, mean, var, x, w, vec, p, 1e-5, True,
                                                   [True, True, True, True, fused])
                backend.conv3d_forward(x, w, vec.to(dtype), p)
                backend.conv3d_backward(res, x, w, p, [True, True, True])
                if args.all_candidates:
                    _compile_candidates(x, w, res, p, dtype)
            except Exception as exc:  # report every failing shape class, not just the first
                failures += 1
                print(f"FAILED {label}: {type(exc).__name__}: {exc}", flush=True)
    print(f"{len(compiled)} kernels compiled for sm_{args.arch} with triton {triton.__version__} in "
          f"{time.time() - t_start:.0f}s; {failures} failing shape classes")
    return 1 if failures else 0


def _compile_candidates(x, w, dy, p, dtype) -> None:
    """Every candidate the launchers' autotuning would time on an H100 (132 SMs) for this problem: the
    loop kinds and pipeline depths beyond the heuristic's (TAP_RUNS, unpipelined, split-K variants)."""
    import torch
    from video3d_fast.ops.backends.triton import autotune, conv3d_dgrad, conv3d_fwd, conv3d_wgrad

    fmt = torch.channels_last_3d
    cpu = torch.device("cpu")
    for cfg in autotune.launcher_candidates("fwd", p, dtype, cpu):
        conv3d_fwd.conv3d_fwd(x, w, p, store_out=False, store_conv=True, stats=True, config=cfg)
    if p.in_channels != 3:
        for cfg in autotune.launcher_candidates("dgrad", p, dtype, cpu):
            conv3d_dgrad.conv3d_dgrad(dy, w, p, fmt, config=cfg)
    for cfg in autotune.launcher_candidates("wgrad", p, dtype, cpu):
        conv3d_wgrad.conv3d_wgrad(dy, x, w, p, config=cfg)


if __name__ == "__main__":
    sys.exit(main())
