"""``video3d-fast loader-bench``: is data loading the bottleneck? (the authors' users' #1 complaint, #48, #252)

Measures, for the run's options, (1) the training loader alone (decode + clip sampling + augmentation +
collate, with ``--n_threads`` workers): clips/s; (2) one training step of the model on a batch of the
same shape: clips/s. Loading keeps up when (1) exceeds (2).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .graphs import GraphedTraining, cuda_graph_unsupported_reason

__all__ = ["ThroughputReport", "measure_loader", "measure_train_step"]


@dataclass
class ThroughputReport:
    loader_clips_per_s: float
    step_clips_per_s: float
    step_seconds: float
    batch_size: int
    workers: int
    skipped: int

    def summary(self) -> str:
        verdict = "loading keeps up" if self.loader_clips_per_s >= self.step_clips_per_s else \
            "LOADING IS THE BOTTLENECK (more --n_threads, smaller frames, or hdf5/video storage)"
        return (f"loader alone: {self.loader_clips_per_s:.1f} clips/s ({self.workers} workers); "
                f"train step: {self.step_clips_per_s:.1f} clips/s ({1000 * self.step_seconds:.0f} ms per batch of "
                f"{self.batch_size}) -> {verdict}")


def measure_loader(loader, n_batches: int, warmup: int = 1) -> tuple:
    """(clips/s, skipped) over ``n_batches`` batches after ``warmup`` batches (worker start-up excluded)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it, None)
    clips = skipped = 0
    start = time.perf_counter()
    for _ in range(n_batches):
        batch = next(it, None)
        if batch is None:
            break
        clips += batch.clips.shape[0]
        skipped += len(batch.skipped)
    elapsed = time.perf_counter() - start
    return (clips / elapsed if elapsed > 0 and clips else float("nan")), skipped


def measure_train_step(model, normalize, batch_clips: torch.Tensor, n_classes: int, n_steps: int, device,
                       amp_dtype=None, cuda_graph: bool = False) -> float:
    """Seconds per SGD step (forward, backward, update) on ``batch_clips`` (uint8), after one warm-up step
    (which, with ``cuda_graph``, is the capture: see graphs.GraphedTraining)."""
    model.train()
    call = model
    if cuda_graph:
        reason = cuda_graph_unsupported_reason(device, sync_batchnorm=False, accumulation_steps=1, compile=False)
        if reason is not None:
            raise ValueError(reason)
        call = GraphedTraining(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    x = normalize(batch_clips.to(device))
    y = torch.randint(0, n_classes, (x.shape[0],), device=device)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None,
                            cache_enabled=not cuda_graph):
            loss = F.cross_entropy(call(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n_steps
