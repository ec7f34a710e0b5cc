"""GPU benchmark of the "triton" backend on every conv layer shape of 3D ResNet-18, ResNet-50 and
ResNeXt-101 (16x112x112 clips, batch 8, bf16) against cuDNN and torch.compile.

    python benchmarks/gpu_bench_triton.py --out DIR [--quick] [--batch 8] [--budget 190] [--compile-mode default]
    python benchmarks/gpu_bench_triton.py --smoke      # CPU + TRITON_INTERPRET=1 plumbing check, tiny shapes

Sections, in this order (each shape is skipped, and listed as skipped, once the time budget is spent):
1. ``grouped``:   ResNeXt-101's grouped 3x3x3 convs, conv only, forward and backward (dgrad + wgrad):
                  ours vs cuDNN (``F.conv3d`` / ``aten.convolution_backward``), GB/s and share of the HBM
                  bandwidth measured by a device copy at start.
2. ``inference``: ResNet-50 (then ResNet-18, ResNeXt-101) inference form: our fused conv + folded BN
                  (+ residual) + ReLU vs cuDNN conv + F.batch_norm (+ add) + ReLU, and vs the same eager
                  function under ``torch.compile`` (ResNet-50 only; default mode unless --compile-mode says
                  otherwise: max-autotune's Triton conv search costs tens of seconds per shape).
3. ``training``:  ResNeXt-101 training form, forward + backward: ``ops.conv3d_batchnorm_act`` vs eager
                  conv -> BatchNorm3d(train) (-> add) -> ReLU, with the activation memory each keeps for
                  backward and the peak of one step.
Baselines: F.conv3d on channels_last_3d tensors with torch.backends.cudnn.benchmark=True (cuDNN version
logged). Each time is measured twice: eager wall time (``ours_ms``/``base_ms``: what an eager training or
inference loop sees, host launch overhead included) and CUDA-graph replay (``*_gpu_ms``: kernel time
only); throughput columns use the latter. Every row carries the relative error of our output (and gradients) against the baseline's; a
row above the tolerance is marked and left out of the summary sums, so a wrong kernel cannot post a
fast number. Shapes come from ``video3d_fast.models.conv_layer_shapes`` / ``unique_conv_shapes``;
sums over a network weight each distinct shape by how often it occurs.
Writes <out>/triton_conv.json and triton_conv.md and prints a short table last.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

SMOKE = "--smoke" in sys.argv
if SMOKE:  # must precede the first import of the Triton kernels
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    cuda_graph, environment, markdown_table, rel_err, results_dir, time_cpu, time_cuda, write_results,
)
from video3d_fast import ops  # noqa: E402
from video3d_fast.models import conv_layer_shapes, unique_conv_shapes  # noqa: E402  (fails loudly if missing)
from video3d_fast.ops.params import make_params  # noqa: E402

MODELS = {"r18": ("resnet", 18), "r50": ("resnet", 50), "rx101": ("resnext", 101)}
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-3}
EPS = 1e-5


class Bench:
    """Timing, device and budget state shared by the sections."""

    def __init__(self, args):
        self.args = args
        self.device = "cpu" if args.smoke else "cuda"
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        self.start = time.time()
        self.rows: List[Dict] = []
        self.skipped: List[str] = []
        self.hbm_gbps = float("nan")
        self.graph_failures: List[str] = []
        self.warmup_ms, self.rep_ms = (5, 20) if args.quick else (10, 40)

    def elapsed(self) -> float:
        return time.time() - self.start

    def has_time(self, reserve: float = 0.0) -> bool:
        return self.elapsed() + reserve < self.args.budget

    def time_ms(self, fn: Callable[[], object]) -> float:
        if self.device == "cpu":
            return time_cpu(fn, warmup=0, min_runs=1, min_seconds=0.0)["median_ms"]
        return time_cuda(fn, warmup_ms=self.warmup_ms, rep_ms=self.rep_ms)["median_ms"]

    def graph_ms(self, fn: Callable[[], object]) -> float:
        """Time of ``fn`` replayed as a CUDA graph: GPU time without the host's launch overhead."""
        if self.device != "cuda":
            return float("nan")
        graph = cuda_graph(fn, self.graph_failures)
        return float("nan") if graph is None else self.time_ms(graph.replay)

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def memory(self) -> int:
        return torch.cuda.memory_allocated() if self.device == "cuda" else 0

    def measure_hbm(self):
        """Device-to-device copy bandwidth (read + write), the practical HBM ceiling."""
        if self.device != "cuda":
            return
        src = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        ms = self.time_ms(lambda: dst.copy_(src))
        self.hbm_gbps = 2 * src.numel() / ms / 1e6
        src = dst = None  # free 512 MiB before the benchmarks (not del: the lambda above names them)


def _shape_label(s: Dict) -> str:
    k = "x".join(map(str, s["kernel"]))
    st = "".join(map(str, s["stride"])) if len(set(s["stride"])) > 1 else str(s["stride"][0])
    g = f" g{s['groups']}" if s["groups"] > 1 else ""
    return f"{s['in_channels']}->{s['out_channels']} k{k} s{st}{g} @{'x'.join(map(str, s['in_size']))}"


class Problem:
    """Tensors of one conv layer (channels_last_3d), its BN parameters and epilogue."""

    def __init__(self, bench: Bench, s: Dict, batch: int):
        dev, dtype = bench.device, bench.dtype
        self.s = s
        cl = torch.channels_last_3d
        c, k, g = s["in_channels"], s["out_channels"], s["groups"]
        self.conv_kw = dict(stride=tuple(s["stride"]), padding=tuple(s["padding"]),
                            dilation=tuple(s["dilation"]), groups=g)
        self.x = torch.randn(batch, c, *s["in_size"], device=dev, dtype=dtype).contiguous(memory_format=cl)
        fan_in = (c // g) * math.prod(s["kernel"])
        self.w = (torch.randn(k, c // g, *s["kernel"], device=dev, dtype=dtype) / fan_in**0.5).contiguous(
            memory_format=cl)
        self.p = make_params(self.x, self.w, **self.conv_kw)
        follow = s.get("followed_by", "bn_relu")
        self.relu = "relu" in follow
        self.act = "relu" if self.relu else "none"
        self.res = (torch.randn(self.p.out_shape, device=dev, dtype=dtype).contiguous(memory_format=cl)
                    if "add" in follow else None)
        self.gamma = torch.rand(k, device=dev) + 0.5
        self.beta = torch.randn(k, device=dev) * 0.1
        self.rm, self.rv = torch.randn(k, device=dev) * 0.1, torch.rand(k, device=dev) + 0.5
        self.scale = self.gamma * torch.rsqrt(self.rv + EPS)
        self.shift = self.beta - self.rm * self.scale
        self.grad = torch.randn(self.p.out_shape, device=dev, dtype=dtype).contiguous(memory_format=cl)
        el = self.x.element_size()
        self.bytes_conv = (self.x.numel() + self.w.numel() + math.prod(self.p.out_shape)) * el
        self.bytes_fused = self.bytes_conv + (self.res.numel() * el if self.res is not None else 0)
        self.flops = 2 * self.p.macs

    # --- inference form ---
    def cudnn_eval(self):
        y = F.batch_norm(F.conv3d(self.x, self.w, None, **self.conv_kw), self.rm, self.rv, self.gamma, self.beta,
                         False, 0.0, EPS)
        if self.res is not None:
            y = y + self.res
        return torch.relu_(y) if self.relu else y

    def ours_eval(self):
        return ops.conv3d_affine_act(self.x, self.w, self.scale, self.shift, self.res, activation=self.act,
                                     backend="triton", **self.conv_kw)

    # --- training form (forward + backward through autograd.grad: no .grad accumulation) ---
    def train_fn(self, ours: bool):
        """(forward, leaves): a fresh training-form forward of this layer and the tensors to differentiate."""
        stem = self.s["in_channels"] == 3  # the stem's input is data: no input gradient
        x = self.x if stem else self.x.detach().requires_grad_(True)
        w, gamma, beta = (t.detach().requires_grad_(True) for t in (self.w, self.gamma, self.beta))
        res = None if self.res is None else self.res.detach().requires_grad_(True)
        leaves = [t for t in (None if stem else x, w, gamma, beta, res) if t is not None]
        rm, rv = self.rm.clone(), self.rv.clone()

        def forward_ours():
            return ops.conv3d_batchnorm_act(x, w, gamma, beta, rm, rv, None, res, activation=self.act,
                                            backend="triton", **self.conv_kw)

        def forward_eager():
            y = F.batch_norm(F.conv3d(x, w, None, **self.conv_kw), rm, rv, gamma, beta, True, 0.1, EPS)
            if res is not None:
                y = y + res
            return torch.relu(y) if self.relu else y

        return (forward_ours if ours else forward_eager), leaves


def _shapes(model_key: str, batch: int, smoke: bool) -> List[Dict]:
    name, depth = MODELS[model_key]
    if smoke:  # tiny clips and a few layers: exercises the plumbing on the CPU interpreter
        layers = conv_layer_shapes(model=name, model_depth=depth, sample_duration=4, sample_size=16, batch=1)
        uniq = unique_conv_shapes(layers)
        small = [u for u in uniq if u["in_channels"] <= 128 and u["out_channels"] <= 256]
        return [small[0]] + [u for u in small if u["groups"] > 1][:1] + [u for u in small if u["kernel"][0] == 1][:1]
    layers = conv_layer_shapes(model=name, model_depth=depth, sample_duration=16, sample_size=112, batch=batch)
    return unique_conv_shapes(layers)


def _fwd_config(pr: "Problem", b: Bench) -> str:
    """The forward kernel's tile (BLOCK_M x BLOCK_N x BLOCK_K / stages, then the split-K factor when a
    shipped table fixes one) for this layer, as chosen without autotuning."""
    from video3d_fast.ops.backends.triton.autotune import fwd_candidates, untuned_choice

    device = torch.device(b.device)
    c = untuned_choice("fwd", pr.p, b.dtype, device, fwd_candidates(pr.p, b.dtype, device))
    return f"{c.block_m}x{c.block_n}x{c.block_k}/{c.num_stages}" + (f" split {c.split_k}" if c.split_k else "")


def _kernel_ms(gpu_ms: float, wall_ms: float) -> float:
    """Throughput columns use the CUDA-graph (kernel) time when there is one."""
    return gpu_ms if gpu_ms == gpu_ms else wall_ms


def _row(section: str, model: str, s: Dict, **values) -> Dict:
    return dict(section=section, model=model, shape=_shape_label(s), count=s["count"],
                followed_by=s.get("followed_by", ""), **values)


# ------------------------------------------------------------------------------------------------
def run_grouped(b: Bench, batch: int):
    from video3d_fast.ops.backends.triton import TritonBackend

    backend = TritonBackend()
    for s in [u for u in _shapes("rx101", batch, b.args.smoke) if u["groups"] > 1]:
        if not b.has_time(reserve=5):
            b.skipped.append(f"grouped {_shape_label(s)}")
            continue
        pr = Problem(b, s, batch if not b.args.smoke else 1)
        p = pr.p
        ours_f = lambda: ops.conv3d(pr.x, pr.w, backend="triton", **pr.conv_kw)  # noqa: E731
        cudnn_f = lambda: F.conv3d(pr.x, pr.w, None, **pr.conv_kw)  # noqa: E731
        ours_b = lambda: backend.conv3d_backward(pr.grad, pr.x, pr.w, p, (True, True, False))  # noqa: E731
        cudnn_b = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
            pr.grad, pr.x, pr.w, None, list(p.stride), list(p.padding), list(p.dilation), False, [0, 0, 0],
            p.groups, [True, True, False])
        with torch.no_grad():
            err = rel_err(ours_f(), cudnn_f())
            gx, gw, _ = ours_b()
            rx, rw, _ = cudnn_b()
            err_b = max(rel_err(gx, rx), rel_err(gw, rw))
        fns = (("ours_fwd", ours_f), ("cudnn_fwd", cudnn_f), ("ours_bwd", ours_b), ("cudnn_bwd", cudnn_b))
        t = {name: b.time_ms(fn) for name, fn in fns}
        g = {name: b.graph_ms(fn) for name, fn in fns}
        gbps = pr.bytes_conv / _kernel_ms(g["ours_fwd"], t["ours_fwd"]) / 1e6
        b.rows.append(_row(
            "grouped", "rx101", s, ours_ms=t["ours_fwd"], base_ms=t["cudnn_fwd"], speedup=t["cudnn_fwd"] / t["ours_fwd"],
            ours_bwd_ms=t["ours_bwd"], base_bwd_ms=t["cudnn_bwd"], speedup_bwd=t["cudnn_bwd"] / t["ours_bwd"],
            ours_gpu_ms=g["ours_fwd"], base_gpu_ms=g["cudnn_fwd"], speedup_gpu=g["cudnn_fwd"] / g["ours_fwd"],
            ours_bwd_gpu_ms=g["ours_bwd"], base_bwd_gpu_ms=g["cudnn_bwd"],
            speedup_bwd_gpu=g["cudnn_bwd"] / g["ours_bwd"],
            tflops=pr.flops / _kernel_ms(g["ours_fwd"], t["ours_fwd"]) / 1e9, gbps=gbps, hbm_pct=100 * gbps / b.hbm_gbps,
            rel_err=max(err, err_b), ok=max(err, err_b) <= TOLERANCE[b.dtype]))
        pr = None  # free the layer's tensors before the next one allocates


def run_inference(b: Bench, model: str, batch: int, with_compile: bool):
    shapes = _shapes(model, batch, b.args.smoke)
    problems = []
    for s in shapes:
        if not b.has_time(reserve=10):
            b.skipped.append(f"inference {model} {_shape_label(s)}")
            continue
        pr = Problem(b, s, batch if not b.args.smoke else 1)
        with torch.no_grad():
            t0 = time.time()
            out = pr.ours_eval()
            b.sync()
            first_call_s = time.time() - t0
            err = rel_err(out, pr.cudnn_eval())
            t_ours = b.time_ms(pr.ours_eval)
            t_cudnn = b.time_ms(pr.cudnn_eval)
            g_ours, g_cudnn = b.graph_ms(pr.ours_eval), b.graph_ms(pr.cudnn_eval)
        row = _row("inference", model, s, ours_ms=t_ours, base_ms=t_cudnn, speedup=t_cudnn / t_ours,
                   ours_gpu_ms=g_ours, base_gpu_ms=g_cudnn, speedup_gpu=g_cudnn / g_ours,
                   tflops=pr.flops / _kernel_ms(g_ours, t_ours) / 1e9,
                   gbps=pr.bytes_fused / _kernel_ms(g_ours, t_ours) / 1e6, rel_err=err,
                   ok=err <= TOLERANCE[b.dtype], first_call_s=first_call_s, config=_fwd_config(pr, b))
        b.rows.append(row)
        problems.append((pr, row))
    if not with_compile or b.args.smoke:
        return
    # torch.compile of the eager cuDNN chain, shape by shape, while the compile share of the budget lasts
    compile_deadline = b.elapsed() + b.args.compile_budget
    for pr, row in sorted(problems, key=lambda pr_row: -pr_row[0].flops * pr_row[1]["count"]):
        if b.elapsed() > compile_deadline or not b.has_time(reserve=60):
            b.skipped.append(f"torch.compile {model} {row['shape']}")
            continue
        torch._dynamo.reset()  # one graph per shape; no recompile limits in the way
        compiled = torch.compile(pr.cudnn_eval, mode=b.args.compile_mode, dynamic=False)
        with torch.no_grad():
            t0 = time.time()
            compiled()
            b.sync()
            row["compile_s"] = time.time() - t0
            row["compile_ms"] = b.time_ms(compiled)
        row["speedup_vs_compile"] = row["compile_ms"] / row["ours_ms"]


def run_training(b: Bench, model: str, batch: int):
    for s in _shapes(model, batch, b.args.smoke):
        if not b.has_time(reserve=10):
            b.skipped.append(f"training {model} {_shape_label(s)}")
            continue
        pr = Problem(b, s, batch if not b.args.smoke else 1)
        results = {}
        for name in ("ours", "eager"):
            forward, leaves = pr.train_fn(ours=name == "ours")

            def step():
                y = forward()
                return (y,) + torch.autograd.grad(y, leaves, pr.grad)

            outs = step()
            b.sync()
            # memory the autograd graph holds between forward and backward, and one step's peak
            base = b.memory()
            y = forward()
            saved = b.memory() - base - y.numel() * y.element_size()
            del y
            if b.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step()
            peak = (torch.cuda.max_memory_allocated() - base) if b.device == "cuda" else 0
            results[name] = dict(outs=outs, saved=saved, peak=peak, ms=b.time_ms(step), gpu_ms=b.graph_ms(step))
        err = max(rel_err(a, e) for a, e in zip(results["ours"]["outs"], results["eager"]["outs"]))
        o, e = results["ours"], results["eager"]
        b.rows.append(_row(
            "training", model, s, ours_ms=o["ms"], base_ms=e["ms"], speedup=e["ms"] / o["ms"],
            ours_gpu_ms=o["gpu_ms"], base_gpu_ms=e["gpu_ms"], speedup_gpu=e["gpu_ms"] / o["gpu_ms"],
            tflops=3 * pr.flops / _kernel_ms(o["gpu_ms"], o["ms"]) / 1e9, saved_mb=o["saved"] / 2**20, base_saved_mb=e["saved"] / 2**20,
            peak_mb=o["peak"] / 2**20, base_peak_mb=e["peak"] / 2**20, rel_err=err,
            ok=err <= 2 * TOLERANCE[b.dtype]))
        pr = results = None  # free this layer's tensors before the next one allocates


def profile_host(b: Bench, calls: int = 200) -> str:
    """cProfile of the inference and training forms on a layer small enough to be launch-bound."""
    import cProfile
    import io
    import pstats

    s = min((u for u in _shapes("rx101", 8, b.args.smoke) if u["kernel"][0] == 1), key=lambda u: u["macs"])
    calls = 2 if b.args.smoke else calls
    pr = Problem(b, s, 8 if not b.args.smoke else 1)
    forward, leaves = pr.train_fn(ours=True)

    def train():
        y = forward()
        torch.autograd.grad(y, leaves, pr.grad)

    report = io.StringIO()
    for name, fn in (("inference", pr.ours_eval), ("training", train)):
        with torch.no_grad() if name == "inference" else torch.enable_grad():
            fn()
            b.sync()
            t0 = time.time()
            for _ in range(calls):
                fn()
            b.sync()
            report.write(f"host profile {name} {_shape_label(s)}: {(time.time() - t0) / calls * 1e6:.0f} us "
                         f"per call\n")
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(calls):
                fn()
            prof.disable()
            b.sync()
        pstats.Stats(prof, stream=report).sort_stats("tottime").print_stats(18)
    return report.getvalue()


# ------------------------------------------------------------------------------------------------
def _weighted(rows: List[Dict], key: str) -> float:
    return sum(r[key] * r["count"] for r in rows)


def _ratio_line(rows: List[Dict], ours_key: str, base_key: str) -> str:
    """Weighted sums over the rows that have both times (a failed CUDA-graph capture leaves NaN, which
    would otherwise make the whole sum NaN), saying how many that is when not all."""
    timed = [r for r in rows if math.isfinite(r.get(ours_key, math.nan)) and math.isfinite(r.get(base_key, math.nan))]
    if not timed:
        return "no shape has both times"
    ours, base = _weighted(timed, ours_key), _weighted(timed, base_key)
    part = "" if len(timed) == len(rows) else f" (the {len(timed)} of {len(rows)} shapes with both times)"
    return f"ours {ours:.2f} ms vs {base:.2f} ms = {base / ours:.2f}x{part}"


def summarize(b: Bench) -> List[str]:
    """The three performance targets of the issue, each in eager wall time (what a user's eager loop
    sees, host launch overhead included) and in GPU time (CUDA-graph replay, kernels only)."""
    notes = []
    bad = [r for r in b.rows if not r["ok"]]
    graphs = b.device == "cuda"
    grouped = [r for r in b.rows if r["section"] == "grouped" and r["ok"]]
    if grouped:
        def worst(key):
            return min(r[key] for r in grouped)
        verdict = "met" if graphs and worst("speedup_gpu") >= 2 and worst("speedup_bwd_gpu") >= 2 else "NOT met"
        notes.append(
            f"grouped 3x3x3 (ResNeXt-101, {len(grouped)} shapes) min speedup vs cuDNN: eager fwd "
            f"{worst('speedup'):.2f}x / bwd {worst('speedup_bwd'):.2f}x; GPU time fwd {worst('speedup_gpu'):.2f}x / "
            f"bwd {worst('speedup_bwd_gpu'):.2f}x (target >= 2x: {verdict}); best fwd "
            f"{max(r['hbm_pct'] for r in grouped):.0f}% of the {b.hbm_gbps:.0f} GB/s copy bandwidth (target >= 60%)")
    inf = [r for r in b.rows if r["section"] == "inference" and r["model"] == "r50" and r["ok"]]
    if inf:
        line = (f"inference form, sum over ResNet-50's convs ({sum(r['count'] for r in inf)} convs) vs cuDNN "
                f"conv+BN+ReLU (target >= 1.3x): eager {_ratio_line(inf, 'ours_ms', 'base_ms')}; GPU time "
                f"{_ratio_line(inf, 'ours_gpu_ms', 'base_gpu_ms')}")
        comp = [r for r in inf if "compile_ms" in r]
        if comp:
            line += (f"; vs torch.compile(mode={b.args.compile_mode!r}) on {len(comp)} of {len(inf)} shapes "
                     f"(eager wall time, target >= 1.0x): {_ratio_line(comp, 'ours_ms', 'compile_ms')}")
        notes.append(line)
    tr = [r for r in b.rows if r["section"] == "training" and r["ok"]]
    if tr:
        notes.append(
            f"training form fwd+bwd, sum over ResNeXt-101's convs ({sum(r['count'] for r in tr)} convs) vs eager "
            f"(target >= 1.3x): eager {_ratio_line(tr, 'ours_ms', 'base_ms')}; GPU time "
            f"{_ratio_line(tr, 'ours_gpu_ms', 'base_gpu_ms')}; activation memory kept for backward "
            f"{_weighted(tr, 'saved_mb'):.0f} MiB vs {_weighted(tr, 'base_saved_mb'):.0f} MiB; largest one-layer "
            f"step peak {max(r['peak_mb'] for r in tr):.0f} vs {max(r['base_peak_mb'] for r in tr):.0f} MiB")
    if bad:
        notes.append(f"{len(bad)} rows above the error tolerance (left out of the sums): "
                     + "; ".join(f"{r['section']} {r['model']} {r['shape']} err {r['rel_err']:.2g}" for r in bad[:8]))
    if b.skipped:
        notes.append(f"skipped for the time budget ({b.args.budget:.0f} s): {len(b.skipped)} items, e.g. "
                     + "; ".join(b.skipped[:4]))
    if b.graph_failures:
        notes.append(f"{len(b.graph_failures)} CUDA-graph capture attempts failed (a second attempt follows a "
                     f"first failure; GPU time is NaN where both failed), first: {b.graph_failures[0]}")
    return notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="results folder (default $VIDEO3D_FAST_RESULTS or benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="shorter timing, ResNet-50 + ResNeXt-101 only")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter plumbing check on tiny shapes")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--budget", type=float, default=180.0, help="seconds for the whole run (shapes beyond are skipped)")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode of the baseline")
    ap.add_argument("--compile-budget", type=float, default=None, help="seconds spent compiling baselines")
    ap.add_argument("--profile-host", action="store_true",
                    help="only profile the host (Python) cost of our ops on one small layer, print it and exit")
    args = ap.parse_args(argv)
    if args.compile_budget is None:
        args.compile_budget = 15.0 if args.quick else 45.0
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_bench_triton: needs a CUDA device (use --smoke for the CPU plumbing check)", file=sys.stderr)
        return 2
    b = Bench(args)
    torch.backends.cudnn.benchmark = True
    if args.profile_host:
        print(profile_host(b))
        return 0
    env = environment()
    env.update(dtype=args.dtype, batch=args.batch, compile_mode=args.compile_mode,
               autotune=os.environ.get("VIDEO3D_FAST_TRITON_AUTOTUNE", "0"))
    print(f"gpu_bench_triton: {env}", flush=True)
    b.measure_hbm()
    env["copy_gbps"] = round(b.hbm_gbps, 1) if b.hbm_gbps == b.hbm_gbps else None

    run_grouped(b, args.batch)
    run_inference(b, "r50", args.batch, with_compile=args.compile_mode != "none")
    run_training(b, "rx101", args.batch)
    if not (args.quick or args.smoke):
        run_inference(b, "r18", args.batch, with_compile=False)
        run_inference(b, "rx101", args.batch, with_compile=False)
    out_dir = results_dir(args.out) if not args.smoke or args.out else Path(os.environ.get("TMPDIR", "/tmp"))
    if b.has_time(reserve=20):  # where the host time of one launch-bound layer goes, for the next round
        profile = profile_host(b, calls=50)
        (out_dir / "triton_host_profile.txt").write_text(profile)
        print("\n".join(line for line in profile.splitlines() if line.startswith("host profile")))
    notes = summarize(b)
    notes.append(f"total benchmark time {b.elapsed():.0f} s")
    columns = ["section", "model", "shape", "count", "followed_by", "ours_ms", "base_ms", "speedup",
               "ours_gpu_ms", "base_gpu_ms", "speedup_gpu", "compile_ms", "speedup_vs_compile", "ours_bwd_ms",
               "base_bwd_ms", "speedup_bwd", "ours_bwd_gpu_ms", "base_bwd_gpu_ms", "speedup_bwd_gpu", "tflops", "gbps",
               "hbm_pct", "saved_mb", "base_saved_mb", "peak_mb", "base_peak_mb", "rel_err", "ok", "config"]
    path = write_results(out_dir, "triton_conv", env, b.rows, columns,
                         "Triton backend vs cuDNN / torch.compile (conv layers of 3D ResNet-18/50, ResNeXt-101)",
                         notes)
    short = ["section", "model", "shape", "count", "ours_ms", "base_ms", "speedup", "speedup_gpu", "speedup_bwd",
             "speedup_bwd_gpu", "speedup_vs_compile", "rel_err"]
    heaviest = sorted(b.rows, key=lambda r: -r["base_ms"] * r["count"])[:20]  # where the network time goes
    print(markdown_table(heaviest, short))
    print("\n".join(f"- {n}" for n in notes))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
