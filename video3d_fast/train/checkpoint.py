"""Training checkpoints: atomic writes, safe loads, the full state needed to resume bit-exactly.

A checkpoint is the authors' dict plus what a faithful resume needs::

    {"epoch": e, "arch": "resnet-18", "state_dict": ..., "optimizer": ..., "scheduler": ...,
     "scaler": ... | None, "rng": {"python", "numpy", "torch", "cuda"}, "config": {...}, "format": 1}

``epoch`` is the last *finished* epoch (the authors' master convention; ``--resume_path`` continues at
``epoch + 1``). ``state_dict`` is the unwrapped model's (no ``module.`` / ``_orig_mod.`` prefixes), so the
file also works as ``--pretrain_path`` and with the authors' code.

Files are written to a temporary name in the same folder, flushed, then renamed over the target
(``os.replace``): a crash never leaves a half-written checkpoint. Files are read with
``torch.load(weights_only=True)``; full unpickling (which can run arbitrary code) needs
``allow_unsafe_pickle=True`` (``--allow_unsafe_pickle``).
"""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    "atomic_save",
    "capture_rng_state",
    "load_checkpoint_file",
    "load_weights",
    "make_checkpoint",
    "restore_rng_state",
    "unwrap_model",
]

FORMAT_VERSION = 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def atomic_save(obj: Any, path: os.PathLike | str) -> Path:
    """``torch.save`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def capture_rng_state() -> Dict[str, Any]:
    """States of Python's, NumPy's, torch's CPU and CUDA generators, in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def make_checkpoint(epoch: int, cfg, model: nn.Module, optimizer=None, scheduler=None, scaler=None) -> Dict[str, Any]:
    """The checkpoint dict of the module docstring for the state after ``epoch``."""
    return {
        "format": FORMAT_VERSION,
        "epoch": int(epoch),
        "arch": cfg.arch,
        "state_dict": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": capture_rng_state(),
        "config": cfg.to_dict(),
    }


def load_checkpoint_file(path: os.PathLike | str, allow_unsafe_pickle: bool = False, what: str = "checkpoint") -> Dict:
    """Read a checkpoint on the CPU with ``weights_only=True`` (full unpickling only if allowed).

    Raises:
        FileNotFoundError: no such file (the message names ``what``, e.g. ``--resume_path``).
        ValueError: the file needs full unpickling and ``allow_unsafe_pickle`` is False (``--allow_unsafe_pickle``),
            or it is not a readable checkpoint dict.
    """
    from ..models import read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        obj = read_checkpoint(path, allow_unsafe_pickle=allow_unsafe_pickle)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{what}: {e} (command line: --allow_unsafe_pickle)") from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{what} {path} is not a readable torch checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def check_arch(checkpoint: Dict, expected_arch: str, path, what: str) -> None:
    """ValueError when a checkpoint names an architecture other than the run's (the authors' assert, with a message)."""
    arch = checkpoint.get("arch")
    if arch is not None and arch != expected_arch:
        model, _, depth = str(arch).rpartition("-")
        hint = f" (--model {model} --model_depth {depth})" if depth.isdigit() else ""
        raise ValueError(
            f"{what} {path} was saved from architecture {arch!r}{hint}, but this run builds {expected_arch!r}; "
            "pass the matching --model / --model_depth"
        )


def load_weights(model: nn.Module, path, expected_arch: str, allow_unsafe_pickle: bool = False,
                 what: str = "checkpoint", checkpoint: Optional[Dict] = None) -> Dict:
    """Load a checkpoint's weights into ``model`` (strict), after checking its ``arch``.

    Accepts the authors' dicts of both eras and bare state_dicts; key conversion (``module.`` prefixes,
    CVPR-era layouts) is :func:`video3d_fast.models.load_checkpoint`'s. Returns the checkpoint dict.
    """
    from .. import models

    if checkpoint is None:
        checkpoint = load_checkpoint_file(path, allow_unsafe_pickle, what)
    check_arch(checkpoint, expected_arch, path, what)
    try:
        models.load_checkpoint(checkpoint, unwrap_model(model), strict=True, allow_unsafe_pickle=allow_unsafe_pickle)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(
            f"{what} {path} does not fit the model {expected_arch} built from the options "
            f"(check --n_classes / --n_pretrain_classes, --resnet_shortcut, --conv1_t_size, widths): {e}"
        ) from None
    return checkpoint
