"""Activation memory a training step keeps between forward and backward, per network and execution mode.

    python benchmarks/activation_memory.py [--models r50,rx101] [--batch 1] [--time] [--out DIR]
    TRITON_INTERPRET=1 python benchmarks/activation_memory.py --backend triton --stub-launches \
        --name cpu_activation_memory_triton     # which tensors the triton backend keeps, kernels not run

Counts, during one training-mode forward, the distinct tensor storages autograd saves for backward
(``torch.autograd.graph.saved_tensors_hooks``), parameters and buffers left out: the activation memory
that sets the batch size / clip length a GPU can train. Device independent (which tensors are saved is
decided by the op layer, the same for every fused backend), so it runs on the CPU: fp32 here; bf16
halves every activation alike. Modes:

* ``torch``: the authors' modules (Conv3d, BatchNorm3d, ReLU) under plain autograd;
* ``fused, outputs kept``: every conv unit as one training-form op (``--backend``, default cpu), keeping
  the pre-BN conv output and the output per unit, like eager;
* ``fused``: the default: where the backend can rebuild a unit's output bit-exactly from its conv output
  (the triton backend, units without residual), the output is not kept (library._OutputRecipe);
* ``fused+recompute``: inside ``ops.recompute_conv_outputs()``: the conv output is recomputed in backward
  instead of kept.

``--time`` also times one forward+backward per mode (CPU, one run: the recompute overhead's order of
magnitude, not a GPU number).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    environment, markdown_table, replace_triton_launch, results_dir, write_results,
)
from video3d_fast import ops  # noqa: E402
from video3d_fast.ops import library  # noqa: E402
from video3d_fast.models import generate_model, set_backend  # noqa: E402

MODELS = {"r18": ("resnet", 18), "r50": ("resnet", 50), "rx101": ("resnext", 101)}
MODES = ("torch", "fused, outputs kept", "fused", "fused+recompute")


class SavedActivations:
    """Distinct storages packed by autograd, minus those of the model's parameters and buffers."""

    def __init__(self, model: torch.nn.Module):
        self.skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        self.storages = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.skip:
            self.storages[ptr] = t.untyped_storage().nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    @property
    def mib(self) -> float:
        return sum(self.storages.values()) / 2**20


def measure(key: str, mode: str, batch: int, size, backend: str, timed: bool) -> dict:
    torch.manual_seed(0)
    name, depth = MODELS[key]
    model = generate_model(name, depth, n_classes=400).to(memory_format=torch.channels_last_3d).train()
    set_backend(model, "torch" if mode == "torch" else backend)
    x = torch.randn(batch, 3, *size).contiguous(memory_format=torch.channels_last_3d)
    recompute = ops.recompute_conv_outputs() if mode == "fused+recompute" else contextlib.nullcontext()
    library.REBUILD_OUTPUTS = mode != "fused, outputs kept"
    saved = SavedActivations(model)
    t0 = time.perf_counter()
    with saved.hooks(), recompute:
        loss = model(x).logsumexp(dim=1).mean()
    library.REBUILD_OUTPUTS = True
    forward_s = time.perf_counter() - t0
    row = dict(model=key, mode=mode, batch=batch, saved_mib=saved.mib, tensors=len(saved.storages))
    if timed:
        t0 = time.perf_counter()
        loss.backward()
        row.update(forward_s=forward_s, backward_s=time.perf_counter() - t0)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="r50,rx101", help=f"comma-separated, of {sorted(MODELS)}")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, nargs=3, default=(16, 112, 112), metavar=("T", "H", "W"))
    ap.add_argument("--backend", default="cpu", help="fused backend (cpu; triton needs a GPU or TRITON_INTERPRET=1)")
    ap.add_argument("--time", action="store_true", help="also time one forward+backward per mode")
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="cpu_activation_memory", help="result file name (without extension)")
    ap.add_argument("--stub-launches", action="store_true",
                    help="triton backend: skip every kernel launch (outputs hold garbage; which tensors are kept, "
                         "and their sizes, do not depend on the values), so full-size networks take seconds")
    args = ap.parse_args(argv)
    if args.stub_launches:
        if args.time:
            ap.error("--time measures nothing with --stub-launches")
        replace_triton_launch(lambda *args, **kwargs: None)
    env = environment()
    env.update(batch=args.batch, clip="x".join(map(str, args.size)), dtype="float32", backend=args.backend,
               launches="stubbed" if args.stub_launches else "run")
    rows = []
    for key in args.models.split(","):
        for mode in MODES:
            rows.append(measure(key, mode, args.batch, args.size, args.backend, args.time))
            print(rows[-1], flush=True)
    notes = []
    for key in args.models.split(","):
        by_mode = {r["mode"]: r for r in rows if r["model"] == key}
        base = by_mode["torch"]["saved_mib"]
        notes.append(f"{key}: fused {by_mode['fused, outputs kept']['saved_mib'] / base:.2f}x with every output kept, "
                     f"{by_mode['fused']['saved_mib'] / base:.2f}x by default (outputs rebuilt where the backend can), "
                     f"{by_mode['fused+recompute']['saved_mib'] / base:.2f}x with recomputed conv outputs; torch modules "
                     f"{base:.1f} MiB at batch {args.batch}, {args.backend} backend, fp32")
    columns = ["model", "mode", "batch", "saved_mib", "tensors"] + (["forward_s", "backward_s"] if args.time else [])
    path = write_results(results_dir(args.out), args.name, env, rows, columns,
                         "Activation memory kept for backward (training mode, one forward)", notes)
    print(markdown_table(rows, columns))
    print("\n".join(notes))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
