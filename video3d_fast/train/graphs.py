"""``--cuda_graph``: the model's training forward and backward replayed as CUDA graphs.

At the batch sizes one GPU trains 3D CNNs with (8-32 clips of 16x112x112), most layers need 10-200 us
of GPU time and the host needs about as long or longer to launch them: a ResNeXt-101 training step on
an H200 measured ~50 ms of per-layer wall time on torch modules and ~100 ms on the triton backend's
Python op layer, against 16-22 ms of GPU time (benchmarks/notes_triton.md). Captured once and replayed,
a step costs its GPU time; the optimizer, loss, GradScaler and LR schedule stay eager.

Under DDP the model is not wrapped in DistributedDataParallel (its hooks would run inside the capture):
the Runner broadcasts rank 0's parameters once and its BatchNorm buffers before every step, as DDP does,
and averages the gradients after backward in a few flattened all-reduces (``distributed.py``), without
DDP's overlap of communication and backward.

What it relies on (``torch.cuda.make_graphed_callables``): fixed input shape, dtype and layout (a batch
that differs runs eagerly, with its memory next to the graph's pool: the Runner's training loader
therefore drops each epoch's last partial batch; a batch that lost corrupt videos still differs);
parameters updated in place (every torch optimizer does); no host synchronisation inside the model
(BatchNorm with ``momentum=None`` reads its batch count on the host: capture fails, and training goes on
eagerly with a warning).
"""
from __future__ import annotations

import inspect
import warnings
from typing import Callable, Optional

import torch
import torch.nn as nn

from .. import ops

__all__ = ["GraphedTraining", "cuda_graph_unsupported_reason"]


def cuda_graph_unsupported_reason(device: torch.device, sync_batchnorm: bool, accumulation_steps: int,
                                  compile: bool) -> Optional[str]:
    """Why ``--cuda_graph`` cannot run with these options, or None."""
    if device.type != "cuda":
        return f"--cuda_graph needs a CUDA device, the run uses {device.type}"
    if sync_batchnorm:  # its forward all-gathers statistics: collectives inside the captured graph
        return "--cuda_graph does not support --batchnorm_sync"
    if accumulation_steps > 1:
        # the replayed backward writes every gradient into the same static buffers, which the first
        # micro-batch's .grad would alias: accumulation would be silently wrong
        return "--cuda_graph needs --accumulation_steps 1"
    if compile:
        return "--cuda_graph and --compile exclude each other (use --compile_mode reduce-overhead for graphs " \
               "through torch.compile)"
    return None


class _Forward(nn.Module):
    """What is captured: ``model(x)``. A wrapper, so that make_graphed_callables patches this module's
    forward and not the model's, which keeps serving eval mode and batches of other shapes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GraphedTraining:
    """``model(x)`` for training steps: the first call captures forward and backward for that input
    signature; later calls with the same signature replay them, anything else runs ``model`` eagerly.

    Call it inside the step's autocast (with ``cache_enabled=False``, which capture requires) and
    ``recompute_conv_outputs`` contexts. A replay repeats what was captured, so the autocast state and
    the recompute setting are part of the signature that must match (other calls run eagerly).
    BatchNorm buffers are restored after the capture's warm-up iterations, so the running statistics
    see each real batch exactly once, as in eager training.
    """

    WARMUP_ITERS = 3  # make_graphed_callables' default: lazy initialisation (cuDNN search, JIT) stays outside

    def __init__(self, model: nn.Module, make_graphed: Optional[Callable] = None,
                 echo: Callable[[str], None] = print):
        self.model = model
        self._make_graphed = make_graphed or torch.cuda.make_graphed_callables
        self._echo = echo
        self._graphed: Optional[Callable] = None
        self._signature = None
        self.failed: Optional[str] = None
        self.replays = self.eager_calls = 0

    @staticmethod
    def _signature_of(x: torch.Tensor) -> tuple:
        kind = x.device.type
        autocast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        return x.shape, x.stride(), x.dtype, x.device, autocast, ops.recomputing_conv_outputs()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.model.training and torch.is_grad_enabled()) or self.failed is not None:
            return self._eager(x)
        if self._graphed is None:
            self._capture(x)
            if self._graphed is None:
                return self._eager(x)
        if self._signature_of(x) != self._signature:
            return self._eager(x)
        self.replays += 1
        return self._graphed(x)

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        self.eager_calls += 1
        return self.model(x)

    def _capture(self, x: torch.Tensor) -> None:
        buffers = list(self.model.buffers())
        saved = [b.detach().clone() for b in buffers]
        sample = x.detach().clone()  # the graph's static input; each replay copies the batch into it
        options = dict(num_warmup_iters=self.WARMUP_ITERS, allow_unused_input=True)
        if "capture_error_mode" in inspect.signature(self._make_graphed).parameters:
            # only this thread's calls may invalidate the capture, not the loader's pin-memory thread
            options["capture_error_mode"] = "thread_local"
        try:
            self._graphed = self._make_graphed(_Forward(self.model), (sample,), **options)
            self._signature = self._signature_of(x)
            self._echo(f"cuda_graph: captured the training forward and backward for input {tuple(x.shape)} "
                       f"{x.dtype}; other shapes run eagerly")
        except Exception as exc:  # noqa: BLE001 - any capture failure: keep training, eagerly
            self.failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"--cuda_graph: capture failed ({self.failed}); training continues without CUDA graphs",
                          RuntimeWarning, stacklevel=3)
            if x.is_cuda:
                torch.cuda.synchronize()
        finally:
            with torch.no_grad():  # the warm-up iterations updated the BatchNorm statistics
                for b, value in zip(buffers, saved):
                    b.copy_(value)
