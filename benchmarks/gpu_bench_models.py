"""Whole-network GPU benchmark: what a user of ``--backend triton`` sees per training step and per
inference batch, against the same network on plain PyTorch modules (cuDNN), eager and as CUDA graphs.

    python benchmarks/gpu_bench_models.py --out DIR [--quick] [--batch 8] [--models r50,rx101]
    python benchmarks/gpu_bench_models.py --smoke      # CPU + TRITON_INTERPRET=1, a narrow tiny network

Per network (16x112x112 clips, channels_last_3d, bf16 autocast as ``--amp bf16`` trains):
* ``train``: forward, a loss, and the gradients of every parameter (``torch.autograd.grad``: nothing
  accumulates, so a step can be replayed); BatchNorm in training mode, running statistics updated;
* ``eval``: forward under ``no_grad`` with eval-mode (folded) BatchNorm.
``train`` runs a third time with ``ops.recompute_conv_outputs()`` (the conv outputs are recomputed in
backward instead of kept: its time cost and peak memory). Each is timed eagerly (host launch overhead included: what a plain training loop sees) and replayed as
a CUDA graph (GPU time: what ``torch.compile(mode="reduce-overhead")`` or graphed callables approach).
The logits (and, for ``train``, the loss) must match the torch backend's; the stem's weight gradient
error is reported alongside. Writes DIR/gpu_models.{json,md} and prints a table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    cuda_graph, environment, markdown_table, rel_err, results_dir, time_cpu, time_cuda, write_results,
)
from video3d_fast import ops  # noqa: E402
from video3d_fast.models import generate_model, set_backend  # noqa: E402

MODELS = {"r18": ("resnet", 18), "r50": ("resnet", 50), "rx101": ("resnext", 101)}
TOLERANCE = 5e-2  # bf16 autocast through a whole network, relative norm against the torch backend


def _model(key: str, smoke: bool) -> torch.nn.Module:
    name, depth = MODELS[key]
    if smoke:  # the real topology at a few channels (tests/models/helpers.narrow_options)
        narrow = dict(block_inplanes=(32, 64, 64, 128), resnext_cardinality=4) if name == "resnext" else dict(
            block_inplanes=(4, 8, 8, 16))
        return generate_model(name, depth, n_classes=10, **narrow)
    return generate_model(name, depth, n_classes=400)


def run(args) -> int:
    dev = "cpu" if args.smoke else "cuda"
    batch = 2 if args.smoke else args.batch  # >= 2 clips: train-mode BN of the last stage needs > 1 value
    size = (4, 32, 32) if args.smoke else (16, 112, 112)
    timer = (lambda fn: time_cpu(fn, warmup=0, min_runs=1, min_seconds=0.0)["median_ms"]) if args.smoke else (
        lambda fn: time_cuda(fn, warmup_ms=10, rep_ms=50 if args.quick else 150)["median_ms"])
    # The smoke network's last BatchNorm sees 2 values per channel, whose normalised values are +-1 and
    # flip with bf16 rounding: the plumbing check runs in fp32.
    amp = not args.smoke
    torch.backends.cudnn.benchmark = True
    env = environment()
    env.update(batch=batch, clip="x".join(map(str, size)), amp="bf16" if amp else "none")
    print("gpu_bench_models:", env, flush=True)
    rows: List[Dict] = []
    failures: List[str] = []
    t_start = time.time()
    for key in args.models.split(","):
        torch.manual_seed(0)
        model = _model(key, args.smoke).to(dev).to(memory_format=torch.channels_last_3d)
        x = torch.randn(batch, 3, *size, device=dev).contiguous(memory_format=torch.channels_last_3d)
        params = [p for p in model.parameters() if p.requires_grad]
        results: Dict[str, Dict] = {}
        for variant in ("torch", "triton", "triton+recompute"):
            set_backend(model, variant.split("+")[0])
            recompute = variant.endswith("+recompute")
            state = {k: v.clone() for k, v in model.state_dict().items()}  # same BN statistics for both

            def train_step():
                with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp), ops.recompute_conv_outputs(recompute):
                    logits = model(x)
                loss = logits.float().logsumexp(dim=1).mean()
                return (logits, loss) + torch.autograd.grad(loss, params)

            def eval_step():
                with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
                    return model(x)

            out = {}
            for mode, fn in (("train", train_step), ("eval", eval_step)):
                if recompute and mode == "eval":  # recomputing the conv output is a training-form option
                    continue
                model.load_state_dict(state)
                model.train(mode == "train")
                first = fn()
                out[mode] = dict(result=first if mode == "train" else (first,))
                if not args.smoke:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    fn()
                    out[mode]["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
                out[mode]["eager_ms"] = timer(fn)
                graph = None if args.smoke else cuda_graph(fn, failures)
                out[mode]["graph_ms"] = float("nan") if graph is None else timer(graph.replay)
                del graph
                print(f"{key} {variant:6s} {mode}: eager {out[mode]['eager_ms']:.2f} ms, graph "
                      f"{out[mode]['graph_ms']:.2f} ms", flush=True)
            model.load_state_dict(state)
            results[variant] = out
        for mode in ("train", "eval"):
            ours, base = results["triton"][mode], results["torch"][mode]
            pairs = list(zip(ours["result"], base["result"]))
            err = max(rel_err(a, b) for a, b in pairs[:2])  # logits (and the loss)
            # the stem's weight gradient went back through every layer in bf16 on both sides: reported only
            grad_err = rel_err(*pairs[2]) if len(pairs) > 2 else float("nan")
            rows.append(dict(
                model=key, mode=mode, batch=batch,
                torch_eager_ms=base["eager_ms"], triton_eager_ms=ours["eager_ms"],
                speedup_eager=base["eager_ms"] / ours["eager_ms"],
                torch_graph_ms=base["graph_ms"], triton_graph_ms=ours["graph_ms"],
                speedup_graph=base["graph_ms"] / ours["graph_ms"],
                torch_peak_mb=base.get("peak_mb", float("nan")), triton_peak_mb=ours.get("peak_mb", float("nan")),
                rel_err=err, stem_grad_rel_err=grad_err, ok=err <= TOLERANCE,
            ))
            if mode == "train":  # the same step keeping less activation memory (ops.recompute_conv_outputs)
                rec = results["triton+recompute"]["train"]
                rec_err = max(rel_err(a, b) for a, b in list(zip(rec["result"], base["result"]))[:2])
                rows[-1].update(
                    recompute_eager_ms=rec["eager_ms"], recompute_graph_ms=rec["graph_ms"],
                    recompute_peak_mb=rec.get("peak_mb", float("nan")), recompute_rel_err=rec_err,
                    ok=rows[-1]["ok"] and rec_err <= TOLERANCE)
        model = results = None  # free this network before the next (not del: the step closures name it)
    notes = [f"{r['model']} {r['mode']}: eager {r['speedup_eager']:.2f}x, CUDA graph {r['speedup_graph']:.2f}x "
             f"(triton backend vs torch modules){'' if r['ok'] else ' -- ABOVE TOLERANCE, not a valid speed'}"
             for r in rows]
    notes += [f"{r['model']} train with recomputed conv outputs: eager {r['torch_eager_ms'] / r['recompute_eager_ms']:.2f}x, "
              f"CUDA graph {r['torch_graph_ms'] / r['recompute_graph_ms']:.2f}x, peak {r['recompute_peak_mb']:.0f} MiB "
              f"(torch modules {r['torch_peak_mb']:.0f} MiB)" for r in rows if "recompute_eager_ms" in r]
    if failures:
        notes.append(f"{len(failures)} CUDA-graph capture attempts failed, first: {failures[0]}")
    notes.append(f"total {time.time() - t_start:.0f} s")
    columns = ["model", "mode", "batch", "torch_eager_ms", "triton_eager_ms", "speedup_eager", "torch_graph_ms",
               "triton_graph_ms", "speedup_graph", "torch_peak_mb", "triton_peak_mb", "rel_err", "stem_grad_rel_err",
               "recompute_eager_ms", "recompute_graph_ms", "recompute_peak_mb", "recompute_rel_err", "ok"]
    path = write_results(results_dir(args.out), "gpu_models", env, rows, columns,
                         "Whole networks: triton backend vs PyTorch modules (cuDNN), bf16 autocast", notes)
    print(markdown_table(rows, columns))
    print("\n".join(notes))
    print(f"written: {path}")
    return 0 if all(r["ok"] for r in rows) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="shorter timing windows")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--models", default="r50,rx101", help=f"comma-separated, of {sorted(MODELS)}")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter plumbing check")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models = "r18"
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
