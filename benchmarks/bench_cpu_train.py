"""CPU model benchmark: a whole training step (forward, loss, backward) and an eval forward of the paper's
networks with every conv unit on the fused ops (``backend="cpu"``) against the same network on plain torch
modules (``backend="torch"``), same weights, channels_last_3d, fp32.

    python benchmarks/bench_cpu_train.py [--models resnet-18 resnext-50] [--batch 2] [--rounds 8] [--out DIR]

Both variants alternate round by round (random order within a round) and the speedup is the median of
the per-round ratios, so drifting background load biases neither side.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import environment, interleaved_rounds, quantile, results_dir, write_results  # noqa: E402
from video3d_fast import ops  # noqa: E402
from video3d_fast.models import generate_model, set_backend  # noqa: E402


def bench_model(spec: str, batch: int, rounds: int, frames: int, size: int):
    model, depth = spec.rsplit("-", 1)
    torch.manual_seed(0)
    base = generate_model(model, int(depth), n_classes=400).to(memory_format=torch.channels_last_3d)
    nets = {"torch": set_backend(copy.deepcopy(base), "torch"), "fused": set_backend(copy.deepcopy(base), "cpu")}
    x = torch.randn(batch, 3, frames, size, size).contiguous(memory_format=torch.channels_last_3d)
    target = torch.randint(0, 400, (batch,))

    def train_step(net):
        def run():
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), target).backward()
        return run

    def eval_forward(net):
        def run():
            with torch.no_grad():
                net(x)
        return run

    rows = []
    for phase, make in (("train step", train_step), ("eval forward", eval_forward)):
        for net in nets.values():
            net.train(phase == "train step")
        t = interleaved_rounds({name: make(net) for name, net in nets.items()}, rounds=rounds, min_seconds=0.0,
                               max_rounds=rounds, shuffle=True)
        ratios = [a / b for a, b in zip(t["torch"], t["fused"])]
        rows.append(dict(model=spec, phase=phase, batch=batch, clip=f"{frames}x{size}x{size}",
                         torch_ms=quantile(t["torch"], 0.5), fused_ms=quantile(t["fused"], 0.5),
                         speedup=quantile(ratios, 0.5), speedup_p10=quantile(ratios, 0.1),
                         speedup_p90=quantile(ratios, 0.9), rounds=len(ratios)))
        r = rows[-1]
        print(f"{spec:12s} {phase:12s} b{batch} torch {r['torch_ms']:8.1f} ms fused {r['fused_ms']:8.1f} ms "
              f"x{r['speedup']:.2f} [{r['speedup_p10']:.2f}, {r['speedup_p90']:.2f}] n={r['rounds']}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet-18", "resnext-50"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    status = ops.available_backends()["cpu"]
    if not status.available:
        print(f"cpu backend unavailable: {status.reason}", file=sys.stderr)
        return 2
    rows = []
    for spec in args.models:
        rows += bench_model(spec, args.batch, args.rounds, args.frames, args.size)
    notes = [
        f"fp32, channels_last_3d, {torch.get_num_threads()} threads, 400 classes. torch/fused_ms: median round; "
        "speedup: median over rounds of torch time / fused time in the same round, [p10, p90] beside it",
    ]
    path = write_results(results_dir(args.out), "cpu_train", environment(), rows,
                         ["model", "phase", "batch", "clip", "torch_ms", "fused_ms", "speedup", "speedup_p10",
                          "speedup_p90", "rounds"],
                         "Whole-model training step and eval forward on the cpu backend vs plain torch modules",
                         notes)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
