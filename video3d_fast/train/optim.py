"""Optimizers (SGD as the authors', AdamW) and the learning-rate schedule (warm-up + multistep/plateau/cosine).

The schedule is a pure function of (epoch, step within the epoch) plus, for ``plateau``, a multiplier
updated once per epoch from the validation loss. It sets each parameter group's ``lr`` before every
optimizer step, so warm-up is per iteration and a resumed run gets exactly the rates of an uninterrupted one.

Epoch-level rules match the authors' ``MultiStepLR`` / ``ReduceLROnPlateau`` stepped once per epoch:
epoch ``e`` (1-based) of ``multistep`` trains at ``lr * 0.1 ** #{m in milestones : m < e}``, so with
milestones [50, 100, 150] epochs 1-50 use ``lr`` and epoch 51 the first decay.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence

import torch

__all__ = ["LRSchedule", "build_optimizer"]


def build_optimizer(params: Iterable, cfg) -> torch.optim.Optimizer:
    """SGD (momentum, dampening, nesterov, weight decay; dampening forced to 0 with Nesterov, as the authors)
    or AdamW (decoupled weight decay), at ``cfg.learning_rate``.

    ``params``: parameters or parameter groups (the fine-tuning selection).
    """
    params = list(params)
    if not params:
        raise ValueError("no trainable parameters (check --ft_begin_module)")
    if cfg.optimizer == "sgd":
        dampening = 0.0 if cfg.nesterov else cfg.dampening
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum, dampening=dampening,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    raise ValueError(f"--optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


class LRSchedule:
    """Per-iteration learning rate (see the module docstring).

    Args:
        optimizer: its groups' current ``lr`` is taken as their base rate.
        kind: ``"multistep"``, ``"plateau"`` or ``"cosine"``.
        n_epochs: last epoch (cosine reaches ``min_lr`` at its end).
        steps_per_epoch: optimizer steps per epoch.
        warmup_epochs: linear warm-up length in epochs (0: none).
        milestones, gamma: multistep decay epochs and factor (plateau uses ``gamma`` too).
        patience: plateau epochs without improvement (relative 1e-4, as ReduceLROnPlateau) before decaying.
        min_lr: cosine floor.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, n_epochs: int, steps_per_epoch: int,
                 warmup_epochs: float = 0.0, milestones: Sequence[int] = (50, 100, 150), gamma: float = 0.1,
                 patience: int = 10, min_lr: float = 0.0):
        if kind not in ("multistep", "plateau", "cosine"):
            raise ValueError(f"lr_scheduler must be multistep, plateau or cosine, got {kind!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.optimizer = optimizer
        self.kind = kind
        self.n_epochs = n_epochs
        self.steps_per_epoch = steps_per_epoch
        self.warmup_epochs = float(warmup_epochs)
        self.milestones = list(milestones)
        self.gamma = gamma
        self.patience = patience
        self.min_lr = min_lr
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        # plateau state (ReduceLROnPlateau, mode "min", threshold 1e-4 relative, cooldown 0)
        self.plateau_factor = 1.0
        self.best = math.inf
        self.num_bad_epochs = 0

    def factor(self, epoch: int, step: int, base: float = 1.0) -> float:
        """Multiplier of ``base`` for optimizer step ``step`` (0-based) of epoch ``epoch`` (1-based).

        Warm-up scales the whole rate linearly from 0; cosine decays from ``base`` to ``min(min_lr, base)``.
        """
        progress = (epoch - 1) + (step + 1) / self.steps_per_epoch  # epochs done after this step
        warm = min(1.0, progress / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0
        if self.kind == "multistep":
            return warm * self.gamma ** sum(1 for m in self.milestones if m < epoch)
        if self.kind == "plateau":
            return warm * self.plateau_factor
        # cosine over the post-warm-up part, evaluated at the start of the step
        start = (epoch - 1) + step / self.steps_per_epoch
        span = max(1e-12, self.n_epochs - self.warmup_epochs)
        t = min(1.0, max(0.0, (start - self.warmup_epochs) / span))
        floor = min(self.min_lr, base) / base if base > 0 else 0.0
        return warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))

    def set_step(self, epoch: int, step: int) -> None:
        """Write the rates of this optimizer step into the optimizer's groups."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.factor(epoch, step, base)

    def step_epoch(self, val_loss: Optional[float] = None) -> None:
        """End-of-epoch update; only ``plateau`` uses it (with the validation loss)."""
        if self.kind != "plateau" or val_loss is None:
            return
        if val_loss < self.best * (1.0 - 1e-4):  # ReduceLROnPlateau's default relative threshold
            self.best = val_loss
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            self.plateau_factor *= self.gamma
            self.num_bad_epochs = 0

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> Dict:
        return {
            "kind": self.kind,
            "base_lrs": list(self.base_lrs),
            "milestones": list(self.milestones),
            "plateau_factor": self.plateau_factor,
            "best": self.best,
            "num_bad_epochs": self.num_bad_epochs,
        }

    def load_state_dict(self, state: Dict, overwrite_milestones: bool = False) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"checkpoint's lr schedule is {state.get('kind')!r} but this run uses {self.kind!r} (--lr_scheduler)")
        self.base_lrs = list(state["base_lrs"])
        if not overwrite_milestones:
            self.milestones = list(state["milestones"])
        self.plateau_factor = float(state["plateau_factor"])
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])


def describe_groups(optimizer: torch.optim.Optimizer) -> List[int]:
    """Number of parameters per group (for the run summary)."""
    return [sum(p.numel() for p in g["params"]) for g in optimizer.param_groups]
