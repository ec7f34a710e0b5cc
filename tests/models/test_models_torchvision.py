"""torchvision interop: r3d_18 is the authors' ResNet-18 with a 3x7x7 stem and no max-pool (ecosystem.md 1.3);
the state_dict converters work both ways and our model reproduces torchvision's outputs and gradients."""
from __future__ import annotations

import copy

import pytest
import torch

from video3d_fast.models import (
    fuse,
    get_backend,
    load_checkpoint,
    record_conv_units,
    set_backend,
    state_dict_from_torchvision,
    state_dict_to_torchvision,
    torchvision_r3d_18,
)

from .helpers import randomize_batchnorm

video = pytest.importorskip("torchvision.models.video")


@pytest.fixture(scope="module")
def pair():
    """torchvision's r3d_18 (seed 0, non-trivial BN statistics) and our preset loaded from it; tests take
    deep copies (building full-width models twice per test would dominate the run time)."""
    torch.manual_seed(0)
    tv = video.r3d_18(num_classes=50)
    randomize_batchnorm(tv)
    with torch.device("meta"):
        ours = torchvision_r3d_18(n_classes=50)
    ours.load_state_dict(state_dict_from_torchvision(tv.state_dict()), strict=True, assign=True)
    return tv, ours


def _copies(pair):
    return copy.deepcopy(pair[0]), copy.deepcopy(pair[1])


def test_converted_keys_are_the_authors_resnet18_layout(pair):
    tv, ours = pair
    assert len(tv.state_dict()) == len(ours.state_dict()) == 122
    assert [tuple(v.shape) for v in ours.state_dict().values()] == [tuple(v.shape) for v in tv.state_dict().values()]
    assert ours.conv1.weight.shape == (64, 3, 3, 7, 7) and ours.no_max_pool


def test_outputs_gradients_and_running_stats_equal_torchvision(pair):
    tv, ours = _copies(pair)
    x = torch.rand(1, 3, 4, 24, 24)  # torchvision's own test uses torch.rand at (1, 3, 4, 112, 112)
    for mode in ("eval", "train"):
        tv.train(mode == "train")
        ours.train(mode == "train")
        xt, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        yt, yo = tv(xt), ours(xo)
        torch.testing.assert_close(yo, yt, rtol=1e-5, atol=1e-5)
        if mode == "eval":
            continue  # one backward pass (train mode) suffices: full-width weight gradients are slow here
        yt[0].sum().backward()
        yo[0].sum().backward()
        torch.testing.assert_close(xo.grad, xt.grad, rtol=1e-5, atol=1e-6)
        ours_grads = {k: p.grad for k, p in ours.named_parameters()}
        for key, p in state_dict_from_torchvision(dict(tv.named_parameters())).items():
            torch.testing.assert_close(ours_grads[key], p.grad, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, key=key: f"{mode} {key}: {m}")
    converted = state_dict_from_torchvision(tv.state_dict())
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, converted[key], rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_loads_into_torchvision(pair):
    tv, ours = pair
    back = state_dict_to_torchvision(ours.state_dict())
    assert list(back) == list(tv.state_dict())
    with torch.device("meta"):
        fresh = video.r3d_18(num_classes=50)
    fresh.load_state_dict(back, strict=True, assign=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tv.state_dict().values()))


def test_load_checkpoint_detects_torchvision_layout(pair):
    tv, ours = pair
    target = copy.deepcopy(ours)
    with torch.no_grad():
        for v in target.state_dict().values():
            v.zero_()
    assert load_checkpoint({"model": tv.state_dict(), "epoch": 44}, target)["format"] == "torchvision"
    assert torch.equal(target.layer2[0].bn1.running_var, tv.layer2[0].conv1[1].running_var)


def test_fused_ours_matches_torchvision_in_float32(pair):
    tv, ours = _copies(pair)
    set_backend(ours, "cpu")
    x = torch.rand(2, 3, 4, 32, 32)
    for mode in ("train", "eval"):
        tv.train(mode == "train")
        ours.train(mode == "train")
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-4)


def test_fuse_torchvision_r3d_18_keeps_state_dict_and_matches(pair, cpu_extension):
    plain = copy.deepcopy(pair[0])
    fused = fuse(copy.deepcopy(pair[0]), backend="cpu")
    assert get_backend(fused) == "cpu" and list(fused.state_dict()) == list(plain.state_dict())
    with record_conv_units() as units:
        fused.eval()(torch.randn(1, 3, 4, 32, 32))
    assert len(units) == 20 and sum(u["residual"] for u in units) == 8 and all(u["bn"] is not None for u in units)
    # Forward values and BN statistics here; gradients of fx-fused graphs are compared in float64 on smaller
    # plain modules in test_models_fusion.py (full-width float64 backward passes are slow on two cores).
    x = torch.randn(2, 3, 4, 32, 32)
    for mode in ("train", "eval"):
        fused.train(mode == "train")
        plain.train(mode == "train")
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-4, atol=1e-4)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_fuse_torchvision_r2plus1d_18_but_no_authors_equivalent(cpu_extension):
    torch.manual_seed(0)
    plain = video.r2plus1d_18(num_classes=5).eval()
    fused = fuse(copy.deepcopy(plain), backend="cpu").eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with record_conv_units() as units:
        y = fused(x)
    assert len(units) == 37 and all(u["bn"] is not None for u in units)
    torch.testing.assert_close(y, plain(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="r2plus1d_18"):
        state_dict_from_torchvision(plain.state_dict())
    with torch.device("meta"):
        mc3 = video.mc3_18(num_classes=5)
    with pytest.raises(ValueError, match="mc3_18"):
        state_dict_from_torchvision(mc3.state_dict())


def test_converter_argument_errors():
    with pytest.raises(ValueError, match="stem.0.weight"):
        state_dict_from_torchvision({"conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="conv1.weight"):
        state_dict_to_torchvision({"stem.0.weight": torch.zeros(1)})
