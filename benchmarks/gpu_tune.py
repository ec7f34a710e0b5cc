"""Autotune the triton backend's conv kernels on this GPU for the conv layers of 3D ResNeXt-101, ResNet-50
and ResNet-18 (16x112x112 clips), and write the choices as a shipped table.

    python benchmarks/gpu_tune.py --out DIR [--batch 8] [--dtype bf16] [--budget 400] [--models rx101,r50,r18]
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


def _tune_layer(s: Dict, batch: int, dtype: torch.dtype, device: str) -> None:
    """The layer's training-form forward (conv output + BN partials), dgrad and wgrad, each launcher
    called directly: its first call of a problem runs ``autotune.pick``, which times the candidates.
    Direct calls rather than ops.conv3d_batchnorm_act + autograd keep the timing (CUDA-graph capture)
    out of the autograd engine's backward thread. The inference form shares the forward's choice."""
    from video3d_fast.ops.backends.triton import _stem_wgrad_on_cudnn, conv3d_dgrad, conv3d_fwd, conv3d_wgrad

    cl = torch.channels_last_3d
    c, k, g = s["in_channels"], s["out_channels"], s["groups"]
    kw = dict(stride=tuple(s["stride"]), padding=tuple(s["padding"]), dilation=tuple(s["dilation"]), groups=g)
    x = torch.randn(batch, c, *s["in_size"], device=device, dtype=dtype).contiguous(memory_format=cl)
    w = (torch.randn(k, c // g, *s["kernel"], device=device, dtype=dtype) * 0.05).contiguous(memory_format=cl)
    p = make_params(x, w, **kw)
    dy = torch.randn(p.out_shape, device=device, dtype=dtype).contiguous(memory_format=cl)
    conv3d_fwd.conv3d_fwd(x, w, p, store_out=False, store_conv=True, stats=True)
    if c != 3:  # the stem's input is data: no input gradient
        conv3d_dgrad.conv3d_dgrad(dy, w, p, cl)
    if not _stem_wgrad_on_cudnn(x, p):  # the backend's choice (the stem's wgrad runs on cuDNN on a GPU)
        conv3d_wgrad.conv3d_wgrad(dy, x, w, p)


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
    batch = 1 if args.smoke else args.batch
    env = environment()
    env.update(batch=batch, dtype=args.dtype)
    print("gpu_tune:", env, flush=True)
    start = time.time()
    skipped: List[str] = []
    done = 0
    for model in args.models.split(","):
        for s in _shapes(model, batch, args.smoke):
            label = f"{model} {_shape_label(s)}"
            if time.time() - start > args.budget:
                skipped.append(label)
                continue
            t0 = time.time()
            _tune_layer(s, batch, dtype, device)
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
    table = dict(device=name, triton=env.get("triton"), torch=torch.__version__, batch=batch, dtype=args.dtype,
                 created=time.strftime("%Y-%m-%d"), source="benchmarks/gpu_tune.py",
                 configs=autotune.table_from_autotuning(name))
    (out_dir / "triton_tuned.json").write_text(json.dumps(table, indent=1, sort_keys=True))
    changed = [r for r in rows if r["best"] != r["heuristic"]]
    notes = [f"{done} layer shapes tuned in {time.time() - start:.0f} s, {len(rows)} problems timed; "
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
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--budget", type=float, default=400.0, help="seconds; later shapes are skipped")
    ap.add_argument("--models", default="rx101,r50,r18", help=f"comma-separated, of {sorted(MODELS)}")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter plumbing check on tiny shapes")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
