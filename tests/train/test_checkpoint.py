"""Checkpoints: atomic writes, weights_only loading with an explicit opt-in, arch check, RNG round trip."""
import os
import random

import numpy as np
import pytest
import torch

from video3d_fast.train.checkpoint import (
    atomic_save,
    capture_rng_state,
    check_arch,
    load_checkpoint_file,
    restore_rng_state,
)


class NotATensor:  # a pickled custom class: needs full unpickling
    def __init__(self):
        self.x = 1


def test_atomic_save_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "ckpt" / "last.pth"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, target)
    atomic_save({"epoch": 2, "w": torch.zeros(3)}, target)
    assert load_checkpoint_file(target)["epoch"] == 2
    assert sorted(os.listdir(target.parent)) == ["last.pth"]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    target = tmp_path / "last.pth"
    atomic_save({"epoch": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"epoch": 2, "bad": Unpicklable()}, target)
    assert load_checkpoint_file(target)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


def test_untrusted_objects_need_the_opt_in(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"epoch": 1, "obj": NotATensor()}, path)
    with pytest.raises(ValueError, match="--allow_unsafe_pickle"):
        load_checkpoint_file(path, what="--resume_path")
    with pytest.warns(UserWarning, match="full unpickling"):
        assert load_checkpoint_file(path, allow_unsafe_pickle=True)["epoch"] == 1


def test_missing_and_truncated_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--pretrain_path"):
        load_checkpoint_file(tmp_path / "nope.pth", what="--pretrain_path")
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_checkpoint_file(path)


def test_wrong_arch_names_both_architectures():
    check_arch({"arch": "resnet-18"}, "resnet-18", "x.pth", "--resume_path")
    check_arch({}, "resnet-18", "x.pth", "--resume_path")  # bare state_dicts carry no arch
    with pytest.raises(ValueError, match=r"'resnet-50' \(--model resnet --model_depth 50\).*'resnet-18'"):
        check_arch({"arch": "resnet-50"}, "resnet-18", "x.pth", "--resume_path")


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    atomic_save({"rng": capture_rng_state()}, tmp_path / "r.pth")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_checkpoint_file(tmp_path / "r.pth")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
