"""GPU microbenchmark of the "cuda" backend (cuDNN conv + our CUDA epilogue kernels) against eager
PyTorch (cuDNN conv + separate BatchNorm + residual add + ReLU) on the conv layers of 3D ResNet-50.

    python benchmarks/gpu_bench_ops.py [--out DIR] [--quick] [--batch 8] [--model resnet --depth 50]

Both sides run the same cuDNN convolution (channels_last_3d, bf16, cudnn.benchmark on), so the ratio
measures what the fused epilogue saves: one pass over the conv output instead of two or three, and in
training one fused statistics + apply pass and a fused BN/ReLU backward. Shapes come from the model
(video3d_fast.models.unique_conv_shapes); every row carries its max relative error against eager.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import environment, rel_err, results_dir, time_cuda, write_results  # noqa: E402
from video3d_fast import ops  # noqa: E402
from video3d_fast.models import conv_layer_shapes, unique_conv_shapes  # noqa: E402


def bench_shape(shape: dict, dtype: torch.dtype, rep_ms: float) -> dict:
    dev = "cuda"
    n, c, k, g = shape["batch"], shape["in_channels"], shape["out_channels"], shape["groups"]
    conv_kw = dict(stride=tuple(shape["stride"]), padding=tuple(shape["padding"]),
                   dilation=tuple(shape["dilation"]), groups=g)
    x = torch.randn(n, c, *shape["in_size"], device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    fan_in = (c // g) * int(torch.tensor(shape["kernel"]).prod())
    w = (torch.randn(k, c // g, *shape["kernel"], device=dev, dtype=dtype) / fan_in**0.5).contiguous(
        memory_format=torch.channels_last_3d)
    out_shape = (n, k, *shape["out_size"])
    follow = shape.get("followed_by", "bn_relu")
    relu = follow.endswith("relu")
    res = (torch.randn(out_shape, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
           if "add" in follow else None)
    gamma = torch.rand(k, device=dev) + 0.5
    beta = torch.randn(k, device=dev)
    rm, rv = torch.randn(k, device=dev), torch.rand(k, device=dev) + 0.5
    scale = gamma * torch.rsqrt(rv + 1e-5)
    shift = beta - rm * scale
    act = "relu" if relu else "none"

    def eager_eval():
        y = F.batch_norm(F.conv3d(x, w, None, **conv_kw), rm, rv, gamma, beta, False, 0.0, 1e-5)
        if res is not None:
            y = y + res
        return F.relu(y) if relu else y

    def ours_eval():
        return ops.conv3d_affine_act(x, w, scale, shift, res, activation=act, backend="cuda", **conv_kw)

    xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
    gam, bet = gamma.detach().requires_grad_(), beta.detach().requires_grad_()
    grad = torch.randn(out_shape, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    rm_e, rv_e, rm_o, rv_o = rm.clone(), rv.clone(), rm.clone(), rv.clone()

    def eager_train():
        y = F.batch_norm(F.conv3d(xg, wg, None, **conv_kw), rm_e, rv_e, gam, bet, True, 0.1, 1e-5)
        if res is not None:
            y = y + res
        y = F.relu(y) if relu else y
        return (y,) + torch.autograd.grad(y, (xg, wg, gam, bet), grad)

    def ours_train():
        y = ops.conv3d_batchnorm_act(xg, wg, gam, bet, rm_o, rv_o, None, res, activation=act, backend="cuda",
                                     **conv_kw)
        return (y,) + torch.autograd.grad(y, (xg, wg, gam, bet), grad)

    with torch.no_grad():
        err_eval = rel_err(ours_eval(), eager_eval())
    te, to = eager_train(), ours_train()
    err_train = max(rel_err(a, b) for a, b in zip(to, te))
    row = dict(
        name=shape["name"], count=shape.get("count", 1),
        shape=f"{n}x{c}x{'x'.join(map(str, shape['in_size']))} k{''.join(map(str, shape['kernel']))} "
              f"s{''.join(map(str, shape['stride']))} g{g} -> {k}",
        follow=follow,
    )
    with torch.no_grad():
        row["eval_eager_ms"] = time_cuda(eager_eval, rep_ms=rep_ms)["median_ms"]
        row["eval_ours_ms"] = time_cuda(ours_eval, rep_ms=rep_ms)["median_ms"]
    row["train_eager_ms"] = time_cuda(eager_train, rep_ms=rep_ms)["median_ms"]
    row["train_ours_ms"] = time_cuda(ours_train, rep_ms=rep_ms)["median_ms"]
    row["eval_speedup"] = row["eval_eager_ms"] / row["eval_ours_ms"]
    row["train_speedup"] = row["train_eager_ms"] / row["train_ours_ms"]
    row["eval_rel_err"], row["train_rel_err"] = err_eval, err_train
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="results folder (default $VIDEO3D_FAST_RESULTS or benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model", default="resnet")
    ap.add_argument("--depth", type=int, default=50)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench_ops: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16
    shapes = unique_conv_shapes(conv_layer_shapes(model=args.model, model_depth=args.depth, sample_duration=16,
                                                  sample_size=112, batch=args.batch))
    shapes = [{**s, "name": s["names"][0]} for s in shapes]
    if args.quick:
        shapes = shapes[:6]
    rows = []
    for s in shapes:
        rows.append(bench_shape(s, dtype, rep_ms=40 if args.quick else 100))
        r = rows[-1]
        print(f"{r['name']:28s} x{r['count']:<2d} eval {r['eval_eager_ms']:.3f}->{r['eval_ours_ms']:.3f} ms "
              f"train {r['train_eager_ms']:.3f}->{r['train_ours_ms']:.3f} ms err {r['eval_rel_err']:.1e}/"
              f"{r['train_rel_err']:.1e}", flush=True)
    tot = {k: sum(r[k] * r["count"] for r in rows)
           for k in ("eval_eager_ms", "eval_ours_ms", "train_eager_ms", "train_ours_ms")}
    worst = max(max(r["eval_rel_err"], r["train_rel_err"]) for r in rows)
    notes = [
        f"model {args.model}-{args.depth}, batch {args.batch}, 16x112x112, bf16, channels_last_3d, "
        f"cudnn.benchmark on, cuDNN {torch.backends.cudnn.version()}; times are medians (triton.testing.do_bench)",
        f"**inference form, sum over all convs (count-weighted): eager {tot['eval_eager_ms']:.2f} ms, "
        f"cuda backend {tot['eval_ours_ms']:.2f} ms, speedup {tot['eval_eager_ms'] / tot['eval_ours_ms']:.2f}x**",
        f"**training form fwd+bwd, sum: eager {tot['train_eager_ms']:.2f} ms, cuda backend "
        f"{tot['train_ours_ms']:.2f} ms, speedup {tot['train_eager_ms'] / tot['train_ours_ms']:.2f}x**",
        f"worst relative error vs eager: {worst:.2e}",
    ]
    cols = ["name", "count", "shape", "follow", "eval_eager_ms", "eval_ours_ms", "eval_speedup", "train_eager_ms",
            "train_ours_ms", "train_speedup", "eval_rel_err", "train_rel_err"]
    path = write_results(results_dir(args.out), "gpu_ops", environment(), rows, cols,
                         "cuda backend (cuDNN conv + our epilogue kernels) vs eager", notes)
    print("\n".join(notes))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
