"""Optimizers and the per-iteration learning-rate schedule against torch's schedulers."""
import math

import pytest
import torch

from video3d_fast.config import Config
from video3d_fast.train.optim import LRSchedule, build_optimizer


def _opt(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_multistep_matches_torch_multisteplr_stepped_per_epoch():
    ours_opt, ref_opt = _opt(), _opt()
    ours = LRSchedule(ours_opt, "multistep", n_epochs=12, steps_per_epoch=3, milestones=[4, 9])
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, milestones=[4, 9], gamma=0.1)
    for epoch in range(1, 13):
        for step in range(3):
            ours.set_step(epoch, step)
            assert math.isclose(ours_opt.param_groups[0]["lr"], ref_opt.param_groups[0]["lr"], rel_tol=1e-12), epoch
        ref_opt.step()
        ref.step()


def test_authors_milestone_semantics_epoch_50_then_decay():
    opt = _opt()
    s = LRSchedule(opt, "multistep", 200, 10, milestones=[50, 100, 150])
    assert s.factor(50, 9) == 1.0 and math.isclose(s.factor(51, 0), 0.1) and math.isclose(s.factor(151, 0), 1e-3)


def test_linear_warmup_is_per_iteration_then_cosine_to_floor():
    opt = _opt(1.0)
    s = LRSchedule(opt, "cosine", n_epochs=10, steps_per_epoch=4, warmup_epochs=2, min_lr=0.01)
    lrs = []
    for epoch in range(1, 11):
        for step in range(4):
            s.set_step(epoch, step)
            lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:8] == pytest.approx([i / 8 for i in range(1, 9)])  # 2 epochs of 4 steps, linear from 1/8
    assert lrs[8] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[8:], lrs[9:]))
    assert lrs[-1] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 31 / 32)))


def test_plateau_matches_torch_reduce_on_plateau():
    ours_opt, ref_opt = _opt(), _opt()
    ours = LRSchedule(ours_opt, "plateau", 30, 1, patience=2)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode="min", factor=0.1, patience=2)
    losses = [5.0, 4.0, 4.0, 3.9999, 4.1, 4.2, 3.0, 3.5, 3.5, 3.5, 3.5, 2.0]
    for epoch, loss in enumerate(losses, start=1):
        ours.set_step(epoch, 0)
        assert math.isclose(ours_opt.param_groups[0]["lr"], ref_opt.param_groups[0]["lr"], rel_tol=1e-9), epoch
        ours.step_epoch(loss)
        ref.step(loss)


def test_state_dict_round_trip_and_kind_check():
    opt = _opt()
    s = LRSchedule(opt, "plateau", 5, 1, patience=0)
    s.step_epoch(1.0)
    s.step_epoch(2.0)
    t = LRSchedule(_opt(), "plateau", 5, 1, patience=0)
    t.load_state_dict(s.state_dict())
    assert t.factor(3, 0) == s.factor(3, 0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="--lr_scheduler"):
        LRSchedule(_opt(), "cosine", 5, 1).load_state_dict(s.state_dict())


def test_sgd_and_adamw_from_options():
    p = [torch.nn.Parameter(torch.randn(3))]
    sgd = build_optimizer(p, Config(learning_rate=0.3, momentum=0.8, dampening=0.9, weight_decay=1e-3))
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["dampening"], g["weight_decay"], g["nesterov"]) == (0.3, 0.8, 0.9, 1e-3, False)
    nesterov = build_optimizer(p, Config(dampening=0.9, nesterov=True)).param_groups[0]
    assert nesterov["dampening"] == 0.0 and nesterov["nesterov"]  # torch forbids dampening with nesterov
    adamw = build_optimizer(p, Config(optimizer="adamw", learning_rate=1e-3, weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([], Config())
