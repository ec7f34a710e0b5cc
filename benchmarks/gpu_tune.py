"""Autotune the triton backend's conv kernels on this GPU for the conv layers of 3D ResNeXt-101, ResNet-50
and ResNet-18 (16x112x112 clips), and write the choices as a shipped table.

    python benchmarks/gpu_tune.py --out DIR [--batch 8,32] [--dtype bf16] [--budget 400] [--models rx101,r50,r18]
    python benchmarks/gpu_tune.py --smoke      # CPU + TRITON_INTERPRET=1 plumbing check, timing stand-in

Per distinct layer shape (ResNeXt-101 first: its training form is the open target), the forward, dgrad
and wgrad launchers run once with ``VIDEO3D_FAST_TRITON_AUTOTUNE=1`` and a fresh autotune cache: every
candidate of ``autotune`` (the heuristic's tiles, then split-K factors) is compiled and its GPU time
measured (CUDA-graph replay, ``autotune._gpu_ms``), and the fastest is kept. Shapes left when the budget
is spent are listed as skipped. Writes

* ``DIR/triton_tuned.json``: the table (device name, versions, problem class -> configuration); a session
  copies it to ``video3d_fast/ops/backends/triton/tuned/<gpu>.json``, after which that GPU uses it
  without autotuning (an entry that stops being a candidate is ignored);
* ``DIR/gpu_tune.json`` / ``.md``: per problem and op, the heuristic's configuration and time, the best
  one and its time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

SMOKE = "--smoke" in sys.argv
if SMOKE:  # must precede the first import of the Triton kernels
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import environment, results_dir, write_results  # noqa: E402
from benchmarks.gpu_bench_triton import MODELS, _shape_label, _shapes  # noqa: E402
from video3d_fast.ops.backends.triton import autotune  # noqa: E402
from video3d_fast.ops.params import make_params  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _cfg(c: autotune.KernelConfig) -> str:
    split = f" split {c.split_k}" if c.split_k else ""
    return f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps}/{c.num_stages}{split}"


class Layer:
    """One conv layer's tensors and its launchers' calls: ``run(op, config)`` launches ``op`` ("fwd":
    the training form's conv with BN partials, "dgrad", "wgrad") with ``config``, or with None the
    configuration ``autotune.pick`` chooses (which, autotuning on, times the candidates first)."""

    def __init__(self, s: Dict, batch: int, dtype: torch.dtype, device: str):
        from video3d_fast.ops.backends.triton import _stem_wgrad_on_cudnn

        cl = torch.channels_last_3d
        c, k, g = s["in_channels"], s["out_channels"], s["groups"]
        kw = dict(stride=tuple(s["stride"]), padding=tuple(s["padding"]), dilation=tuple(s["dilation"]), groups=g)
        self.x = torch.randn(batch, c, *s["in_size"], device=device, dtype=dtype).contiguous(memory_format=cl)
        self.w = (torch.randn(k, c // g, *s["kernel"], device=device, dtype=dtype) * 0.05).contiguous(
            memory_format=cl)
        self.p = make_params(self.x, self.w, **kw)
        self.dy = torch.randn(self.p.out_shape, device=device, dtype=dtype).contiguous(memory_format=cl)
        self.dtype, self.device = dtype, torch.device(device)
        self.ops = ["fwd"]
        if c != 3:  # the stem's input is data: no input gradient
            self.ops.append("dgrad")
        if not _stem_wgrad_on_cudnn(self.x, self.p):  # the backend's choice: the stem's wgrad runs on cuDNN
            self.ops.append("wgrad")

    def candidates(self, op: str) -> List[autotune.KernelConfig]:
        return autotune.launcher_candidates(op, self.p, self.dtype, self.device)

    def run(self, op: str, config=None) -> None:
        from video3d_fast.ops.backends.triton import conv3d_dgrad, conv3d_fwd, conv3d_wgrad

        if op == "fwd":
            conv3d_fwd.conv3d_fwd(self.x, self.w, self.p, store_out=False, store_conv=True, stats=True,
                                  config=config)
        elif op == "dgrad":
            conv3d_dgrad.conv3d_dgrad(self.dy, self.w, self.p, torch.channels_last_3d, config=config)
        else:
            conv3d_wgrad.conv3d_wgrad(self.dy, self.x, self.w, self.p, config=config)


def _batches(args) -> List[int]:
    return [1] if args.smoke else [int(b) for b in str(args.batch).split(",")]


def _layers(args) -> List[tuple]:
    """(label, shape, batch) of every distinct layer of the models, batch by batch, in the order given
    (the problem classes of different batch sizes differ: one table holds them all)."""
    return [(f"{model} b{batch} {_shape_label(s)}", s, batch) for batch in _batches(args)
            for model in args.models.split(",") for s in _shapes(model, batch, args.smoke)]


def precompile_shard(args, shard: int, shards: int) -> int:
    """Phase 1, one of ``shards`` processes: launch every candidate of every ``shards``-th layer once, so
    that Triton compiles it into its on-disk cache (phase 2 then loads instead of compiling: ~300
    kernels of ~1-2 s each would not fit a device call otherwise). Nothing is timed here."""
    device = "cpu" if args.smoke else "cuda"
    failed = 0
    for label, s, batch in _layers(args)[shard::shards]:
        layer = Layer(s, batch, DTYPES[args.dtype], device)
        for op in layer.ops:
            for cfg in layer.candidates(op):
                try:
                    layer.run(op, cfg)
                except Exception as exc:  # phase 2 times it as a loss; say so here
                    failed += 1
                    print(f"precompile {label} {op} {_cfg(cfg)}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    return 0 if failed == 0 else 1


def _precompile(args, jobs: int, timeout: float) -> str:
    """Phase 1 in ``jobs`` processes; a line for the notes."""
    t0 = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--batch", str(args.batch), "--dtype", args.dtype,
           "--models", args.models] + (["--smoke"] if args.smoke else [])
    procs = [subprocess.Popen(cmd + ["--precompile", f"{i}/{jobs}"]) for i in range(jobs)]
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, timeout - (time.time() - t0))))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append("timeout")
    return f"precompiled every candidate in {jobs} processes in {time.time() - t0:.0f} s (exit codes {codes})"


def run(args) -> int:
    device = "cpu" if args.smoke else "cuda"
    out_dir = results_dir(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.gettempdir()) / "video3d_fast_gpu_tune_cache.json"  # the table is the result
    cache.unlink(missing_ok=True)
    os.environ["VIDEO3D_FAST_TRITON_AUTOTUNE"] = "1"
    os.environ["VIDEO3D_FAST_TRITON_AUTOTUNE_CACHE"] = str(cache)
    if args.smoke:  # the interpreter never autotunes, and there are no CUDA events to time with
        import triton.testing

        def cpu_bench(fn, warmup, rep):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3

        autotune.autotune_enabled = lambda: True
        triton.testing.do_bench = cpu_bench
    dtype = DTYPES[args.dtype]
    batches = _batches(args)
    env = environment()
    env.update(batch=",".join(map(str, batches)), dtype=args.dtype)
    print("gpu_tune:", env, flush=True)
    start = time.time()
    notes_pre = [_precompile(args, args.jobs, args.budget / 2)] if args.jobs > 1 else []
    for line in notes_pre:
        print(line, flush=True)
    skipped: List[str] = []
    done = 0
    for label, s, batch in _layers(args):
        if time.time() - start > args.budget:
            skipped.append(label)
            continue
        t0 = time.time()
        layer = Layer(s, batch, dtype, device)
        for op in layer.ops:
            layer.run(op)
        done += 1
        print(f"tuned {label} in {time.time() - t0:.1f}s", flush=True)

    rows = []
    for op, p, dt, timings in autotune.timing_log:
        heuristic_ms, heuristic = timings[0]
        best_ms, best = min(timings, key=lambda tc: tc[0])
        rows.append(dict(op=op, problem=str(p), dtype=str(dt).replace("torch.", ""), heuristic=_cfg(heuristic),
                         heuristic_ms=heuristic_ms, best=_cfg(best), best_ms=best_ms,
                         speedup=heuristic_ms / best_ms if best_ms > 0 else float("nan"),
                         candidates=len(timings)))
    name = autotune.device_name(torch.device(device))
    table = dict(device=name, triton=env.get("triton"), torch=torch.__version__, batch=batches, dtype=args.dtype,
                 created=time.strftime("%Y-%m-%d"), source="benchmarks/gpu_tune.py",
                 configs=autotune.table_from_autotuning(name))
    (out_dir / "triton_tuned.json").write_text(json.dumps(table, indent=1, sort_keys=True))
    changed = [r for r in rows if r["best"] != r["heuristic"]]
    notes = notes_pre + [f"{done} layer shapes tuned in {time.time() - start:.0f} s, {len(rows)} problems timed; "
             f"the tuned choice differs from the heuristic on {len(changed)}",
             f"table: {len(table['configs'])} problem classes -> {out_dir / 'triton_tuned.json'}"]
    if changed:
        gain = sum(r["heuristic_ms"] - r["best_ms"] for r in changed if r["best_ms"] < float("inf"))
        notes.append(f"summed over the problems timed once each: {gain:.3f} ms less with the tuned choices")
    if skipped:
        notes.append(f"skipped for the time budget ({args.budget:.0f} s): {len(skipped)} shapes, e.g. {skipped[0]}")
    write_results(out_dir, "gpu_tune", env, rows,
                  ["op", "problem", "dtype", "heuristic", "heuristic_ms", "best", "best_ms", "speedup", "candidates"],
                  "Autotuned triton conv configurations vs the heuristic", notes)
    for line in notes:
        print(line)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    ap.add_argument("--batch", default="8,32", help="comma-separated batch sizes, tuned in this order")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--budget", type=float, default=400.0, help="seconds; later shapes are skipped")
    ap.add_argument("--models", default="rx101,r50,r18", help=f"comma-separated, of {sorted(MODELS)}")
    ap.add_argument("--jobs", type=int, default=min(12, os.cpu_count() or 1),
                    help="processes that compile the candidates first (1: compile while timing)")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter plumbing check on tiny shapes")
    ap.add_argument("--precompile", metavar="I/N", help=argparse.SUPPRESS)  # phase 1 worker (see _precompile)
    args = ap.parse_args(argv)
    if args.precompile:
        shard, shards = map(int, args.precompile.split("/"))
        return precompile_shard(args, shard, shards)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
