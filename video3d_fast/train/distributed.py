"""DDP launched by ``torchrun`` (no OpenMPI): process group from the environment, helpers for metrics.

    torchrun --nproc_per_node=4 -m video3d_fast.cli train --config run.yaml          # one machine
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
             --nproc_per_node=8 -m video3d_fast.cli train --config run.yaml          # on each machine

The authors read the node rank from ``OMPI_COMM_WORLD_RANK`` (a KeyError without OpenMPI, their #216,
#244). Here ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun) decide: with ``WORLD_SIZE > 1``
the run is distributed, on NCCL with CUDA and gloo on CPU. ``--batch_size`` stays the global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "all_reduce_sum", "all_gather_objects", "all_agree",
           "average_gradients", "broadcast_from_main"]


@dataclass
class DistContext:
    """Where this process stands: rank, world size, local rank, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _pick_device(cfg, local_rank: int) -> torch.device:
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and not cfg.no_cuda)
    if want_cuda and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if cfg.device == "cuda":
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device("cpu")


def init_distributed(cfg) -> DistContext:
    """Join the torchrun process group if there is one; else a single-process context.

    Raises:
        ValueError: ``--distributed`` without a torchrun launch (with the command to use).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if cfg.distributed:
            raise ValueError(
                "--distributed needs a torchrun launch, e.g. `torchrun --nproc_per_node=2 -m video3d_fast.cli train ...` "
                "(RANK / WORLD_SIZE are not set in this process)"
            )
        return DistContext(device=_pick_device(cfg, 0))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(cfg, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method=cfg.dist_url or "env://", rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(values: List[float], ctx: DistContext) -> List[float]:
    """Sum a list of numbers over all processes (float64; identity without DDP)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_agree(flag: bool, ctx: DistContext) -> bool:
    """True iff ``flag`` is true on every process (lock-step decisions such as skipping an empty batch)."""
    if not ctx.enabled:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], ctx)[0] == ctx.world_size


def all_gather_objects(obj: Any, ctx: DistContext) -> List[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` without DDP)."""
    if not ctx.enabled:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _buckets(tensors: List[torch.Tensor], bucket_bytes: int) -> List[List[torch.Tensor]]:
    """``tensors`` grouped by (dtype, device) into runs of at most ``bucket_bytes`` (one tensor may exceed it)."""
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    buckets: List[List[torch.Tensor]] = []
    for group in groups.values():
        current, size = [], 0
        for t in group:
            if current and size + t.numel() * t.element_size() > bucket_bytes:
                buckets.append(current)
                current, size = [], 0
            current.append(t)
            size += t.numel() * t.element_size()
        buckets.append(current)
    return buckets


def average_gradients(params: List[torch.Tensor], ctx: DistContext, bucket_bytes: int = 64 << 20) -> None:
    """Every parameter's ``.grad`` replaced in place by its mean over the processes, as DDP leaves it, in a
    few flattened all-reduces (one per 64 MiB of gradients) instead of one per parameter. A parameter
    without a gradient on this process contributes zeros, and gets one only if another process had one."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                           device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(present, op=dist.ReduceOp.SUM)  # which gradients exist anywhere (all ranks agree)
    grads = []
    for p, anywhere in zip(params, present.tolist()):
        if anywhere and p.grad is None:
            p.grad = torch.zeros_like(p)
        if anywhere:
            grads.append(p.grad)
    for bucket in _buckets(grads, bucket_bytes):
        flat = torch._utils._flatten_dense_tensors(bucket)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= ctx.world_size
        for g, mean in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            g.copy_(mean)


def broadcast_from_main(tensors: List[torch.Tensor], ctx: DistContext, bucket_bytes: int = 64 << 20) -> None:
    """Rank 0's values of ``tensors`` copied into every process's, in place (the memory stays where it is:
    CUDA graphs may have captured it), in a few flattened broadcasts."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for bucket in _buckets(list(tensors), bucket_bytes):
            flat = torch._utils._flatten_dense_tensors(bucket)
            dist.broadcast(flat, src=0)
            for t, value in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                t.copy_(value)
