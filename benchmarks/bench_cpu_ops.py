"""CPU microbenchmark: the fused inference op on the "cpu" backend (C++ extension) against torch eager
(F.conv3d + F.batch_norm(eval) [+ residual] + F.relu) on the 3x3x3 conv layers of 3D ResNet-18 and
ResNeXt-101 at 16x112x112 input.

    python benchmarks/bench_cpu_ops.py [--batch 2 4 8] [--out DIR] [--quick] [--layout ndhwc|ncdhw]

Eager and fused runs alternate round by round and the speedup is the median of the per-round ratios
(with its 10th/90th percentiles), so drifting background load biases neither side. Shapes come from the models (unique_conv_shapes). The same
cases serve the pytest-benchmark file benchmarks/test_bench_cpu_ops.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import environment, interleaved_rounds, quantile, results_dir, write_results  # noqa: E402
from video3d_fast import ops  # noqa: E402
from video3d_fast.models import conv_layer_shapes, unique_conv_shapes  # noqa: E402

MODELS = (("resnet", 18, {}), ("resnext", 101, {}))


def cases(batches=(2, 4, 8), kernel=(3, 3, 3)) -> List[dict]:
    """The models' unique conv shapes with the given kernel, for each batch size."""
    out = []
    for model, depth, kw in MODELS:
        for batch in batches:
            layers = conv_layer_shapes(model=model, model_depth=depth, sample_duration=16, sample_size=112,
                                       batch=batch, **kw)
            for s in unique_conv_shapes(layers):
                if tuple(s["kernel"]) == tuple(kernel):
                    out.append({**s, "model": f"{model}-{depth}", "name": s["names"][0]})
    return out


def make_pair(case: dict, layout: str = "ndhwc") -> Tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """(eager, fused) closures over fresh random data for one conv shape, inference form."""
    gen = torch.Generator().manual_seed(0)
    n, c, k, g = case["batch"], case["in_channels"], case["out_channels"], case["groups"]
    fmt = torch.channels_last_3d if layout == "ndhwc" else torch.contiguous_format
    x = torch.randn(n, c, *case["in_size"], generator=gen).contiguous(memory_format=fmt)
    fan_in = (c // g) * 27
    # Weights as nn.Conv3d holds them (contiguous): oneDNN reorders channels_last weights on every call.
    w = torch.randn(k, c // g, *case["kernel"], generator=gen) / fan_in**0.5
    follow = case.get("followed_by", "bn_relu")
    res = torch.randn(n, k, *case["out_size"], generator=gen).contiguous(memory_format=fmt) if "add" in follow else None
    relu = follow.endswith("relu")
    bn = torch.nn.BatchNorm3d(k).eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.normal_(generator=gen)
        scale, shift = ops.fold_batchnorm(bn)
    kw = dict(stride=tuple(case["stride"]), padding=tuple(case["padding"]), dilation=tuple(case["dilation"]),
              groups=g)

    def eager():
        y = F.batch_norm(F.conv3d(x, w, None, **kw), bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
        if res is not None:
            y = y + res
        return F.relu(y) if relu else y

    def fused():
        return ops.conv3d_affine_act(x, w, scale, shift, res, activation="relu" if relu else "none", backend="cpu",
                                     **kw)

    return eager, fused


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--layout", choices=["ndhwc", "ncdhw"], default="ndhwc")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="batch 2 only, fewer rounds")
    args = ap.parse_args(argv)
    status = ops.available_backends()["cpu"]
    if not status.available:
        print(f"cpu backend unavailable: {status.reason}", file=sys.stderr)
        return 2
    batches = [2] if args.quick else args.batch
    rows = []
    with torch.no_grad():
        for case in cases(batches):
            eager, fused = make_pair(case, args.layout)
            err = ((fused() - eager()).norm() / eager().norm()).item()
            t = interleaved_rounds({"eager": eager, "fused": fused}, rounds=5 if args.quick else 15,
                                   min_seconds=0.5 if args.quick else 3.0)
            ratios = [e / f for e, f in zip(t["eager"], t["fused"])]  # per round: same load for both
            row = dict(model=case["model"], layer=case["name"], count=case["count"], batch=case["batch"],
                       shape=f"{case['in_channels']}x{'x'.join(map(str, case['in_size']))} "
                             f"s{case['stride'][0]} g{case['groups']} -> {case['out_channels']}",
                       follow=case.get("followed_by", ""), eager_ms=min(t["eager"]), fused_ms=min(t["fused"]),
                       speedup=quantile(ratios, 0.5), speedup_p10=quantile(ratios, 0.1),
                       speedup_p90=quantile(ratios, 0.9), rounds=len(ratios), rel_err=err)
            rows.append(row)
            print(f"{row['model']:11s} b{row['batch']} {row['shape']:28s} {row['follow']:12s} eager "
                  f"{row['eager_ms']:8.2f} ms fused {row['fused_ms']:8.2f} ms  x{row['speedup']:.2f} "
                  f"[{row['speedup_p10']:.2f}, {row['speedup_p90']:.2f}] n={row['rounds']}", flush=True)
    speedups = [r["speedup"] for r in rows]
    clearly_slower = [r for r in rows if r["speedup_p90"] < 1.0]
    notes = [
        f"layout {args.layout}, fp32, {torch.get_num_threads()} threads. eager/fused_ms: fastest round; speedup: "
        "median over interleaved rounds of eager time / fused time in the same round, [p10, p90] beside it",
        f"**median speedup fused vs eager: min {min(speedups):.2f}x, max {max(speedups):.2f}x, "
        f">= 1.0 on {sum(s >= 1.0 for s in speedups)}/{len(speedups)} shapes; slower in 90% of rounds on "
        f"{len(clearly_slower)} shapes**",
    ]
    path = write_results(results_dir(args.out), f"cpu_ops_{args.layout}", environment(), rows,
                         ["model", "layer", "count", "batch", "shape", "follow", "eager_ms", "fused_ms", "speedup",
                          "speedup_p10", "speedup_p90", "rounds", "rel_err"],
                         "Fused inference op on the cpu backend vs torch eager", notes)
    print("\n".join(notes))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
