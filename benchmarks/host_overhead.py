"""Host (Python) time of the triton backend's op layer per call, with the kernels themselves left out.

    python benchmarks/host_overhead.py                  (CPU, no GPU needed: launches are stubbed)
    python benchmarks/host_overhead.py --profile        (plus a cProfile of each phase)

At batch 8 most 3D-ResNet layers need 10-60 us of GPU time, so the host time around the kernels decides
the wall time of a launch-bound layer (notes_triton.md: ~0.94 ms per training step on an H200 host
against 0.3-0.5 ms for eager cuDNN). This script measures that host time on any machine: it runs the
triton backend on CPU tensors under TRITON_INTERPRET=1 through the direct-launch path of a GPU (cache key,
compiled-kernel lookup), with the compiled kernel's call replaced by a stand-in that only counts, and times
the inference form, the training form's forward, and its backward, per call. What it cannot see is the
launch itself (Triton's compiled-kernel call, ~5-10 us on a GPU host) and the CUDA caching allocator
(torch.empty on a GPU), so it also reports how many of each a call makes.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # the kernels are defined in interpreter mode; nothing is launched

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from video3d_fast import ops  # noqa: E402

CL = torch.channels_last_3d


class Counter:
    """Counts the launches per kernel. Installed by :meth:`install` behind the real ``common.launch``:
    every launch builds its cache key and looks up its compiled kernel as on a GPU, and only the JIT call
    (the first launch of a specialisation) and the compiled kernel's ``run`` are stand-ins."""

    def __init__(self):
        self.launches: dict = {}

    def count(self, kernel) -> None:
        name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "kernel")
        self.launches[name] = self.launches.get(name, 0) + 1

    def take(self) -> dict:
        launches, self.launches = self.launches, {}
        return launches

    def install(self) -> None:
        from video3d_fast.ops.backends.triton import common

        counter = self

        class CompiledStandIn:
            function = packed_metadata = None

            def __init__(self, kernel):
                self.kernel = kernel

            def run(self, *args):
                counter.count(self.kernel)

        def first_launch(kernel, grid, tensors, args, floats, constexprs):
            counter.count(kernel)
            return CompiledStandIn(kernel), ()

        common.DIRECT_LAUNCH = True
        common._launch_hooks_set = lambda: False
        common._first_launch = first_launch
        torch.cuda.current_device = lambda: 0
        torch._C._cuda_getCurrentRawStream = lambda device: 0


def count_empty(fn) -> int:
    """torch.empty calls made by ``fn()`` (each one is a caching-allocator call on a GPU)."""
    calls = 0
    real = torch.empty

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    torch.empty = counting
    try:
        fn()
    finally:
        torch.empty = real
    return calls


def deterministic_counts(fn, prepare=None, calls: int = 20):
    """(Python function calls, torch C-API calls) per call of ``fn``, from cProfile: noise-free proxies
    for host time. Torch calls are the builtins of ``torch._C`` (Tensor methods, torch.* functions): each
    is a dispatcher trip on the host, whatever the kernel does."""
    if prepare:
        prepare(calls)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    stats = pstats.Stats(prof)
    torch_calls = sum(
        ncalls for (filename, _, name), (_, ncalls, *_rest) in stats.stats.items()
        if filename == "~" and ("torch._C" in name or "built-in method torch." in name))
    return stats.total_calls / calls, torch_calls / calls


def per_call_us(fn, calls: int, repeats: int = 5, prepare=None) -> float:
    """Best of ``repeats`` batches of ``calls`` calls (the minimum: a shared 2-core VM adds noise, never
    speed)."""
    best = float("inf")
    for _ in range(repeats):
        if prepare:
            prepare(calls + 1)
        fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of each phase")
    ap.add_argument("--channels", type=int, nargs=2, default=(1024, 2048), metavar=("C", "K"))
    args = ap.parse_args()
    torch.manual_seed(0)
    c, k = args.channels
    # ResNeXt-101's last 1x1x1 downsample shape at batch 8: launch-bound on every GPU measured
    x = torch.randn(8, c, 2, 7, 7).contiguous(memory_format=CL)
    w = (torch.randn(k, c, 1, 1, 1) * c ** -0.5).contiguous(memory_format=CL)
    scale, shift = torch.rand(k) + 0.5, torch.randn(k) * 0.1
    xl, wl = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    gamma, beta = (torch.rand(k) + 0.5).requires_grad_(True), (torch.randn(k) * 0.1).requires_grad_(True)
    rm, rv = torch.zeros(k), torch.ones(k)
    dy = torch.randn(8, k, 2, 7, 7).contiguous(memory_format=CL)

    counter = Counter()
    counter.install()

    def infer():
        with torch.no_grad():
            return ops.conv3d_affine_act(x, w, scale, shift, None, activation="relu", backend="triton")

    def train_forward():
        return ops.conv3d_batchnorm_act(xl, wl, gamma, beta, rm, rv, None, None, activation="relu",
                                        backend="triton")

    pending: list = []

    def train_backward():
        torch.autograd.grad(pending.pop(), [xl, wl, gamma, beta], dy)

    phases = [("inference", infer, None), ("training forward", train_forward, None),
              ("training backward", train_backward, lambda n: pending.extend(train_forward() for _ in range(n)))]
    print(f"host time per call, 1x1x1 {c}->{k} @2x7x7, batch 8, launches stubbed "
          f"(torch {torch.__version__}, {os.cpu_count()} CPUs)")
    report = io.StringIO()
    for name, fn, prepare in phases:
        us = per_call_us(fn, args.calls, prepare=prepare)
        counter.take()
        if prepare:
            prepare(1)
            counter.take()
        empties = count_empty(fn)
        launches = counter.take()
        py_calls, torch_calls = deterministic_counts(fn, prepare)
        counter.take()
        print(f"  {name:18s} {us:7.1f} us  {py_calls:5.0f} Python calls  {torch_calls:4.0f} torch calls  "
              f"{empties} torch.empty  {sum(launches.values())} launches "
              f"({', '.join(f'{n} x{c}' if c > 1 else n for n, c in launches.items())})")
        if args.profile:
            if prepare:
                prepare(args.calls)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.calls):
                fn()
            prof.disable()
            report.write(f"\n== {name} ==\n")
            pstats.Stats(prof, stream=report).sort_stats("tottime").print_stats(20)
    pending.clear()
    if args.profile:
        print(report.getvalue())


if __name__ == "__main__":
    main()
