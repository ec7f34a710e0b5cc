"""torchvision interop: r3d_18 is the authors' ResNet-18 with a 3x7x7 stem and no max-pool (ecosystem.md 1.3);
the state_dict converters work both ways and our model reproduces torchvision's outputs and gradients."""
from __future__ import annotations

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

from .helpers import compare_float32_accuracy, randomize_batchnorm

video = pytest.importorskip("torchvision.models.video")


def _torchvision_pair(num_classes=50):
    torch.manual_seed(0)
    tv = video.r3d_18(num_classes=num_classes)
    randomize_batchnorm(tv)
    ours = torchvision_r3d_18(n_classes=num_classes)
    ours.load_state_dict(state_dict_from_torchvision(tv.state_dict()), strict=True)
    return tv, ours


def test_converted_keys_are_the_authors_resnet18_layout():
    tv, ours = _torchvision_pair()
    assert len(tv.state_dict()) == len(ours.state_dict()) == 122
    assert ours.conv1.weight.shape == (64, 3, 3, 7, 7) and ours.no_max_pool


def test_outputs_gradients_and_running_stats_equal_torchvision():
    tv, ours = _torchvision_pair()
    x = torch.rand(2, 3, 4, 32, 32)  # torchvision's own test uses torch.rand at (1, 3, 4, 112, 112)
    for mode in ("eval", "train"):
        tv.train(mode == "train")
        ours.train(mode == "train")
        tv.zero_grad()
        ours.zero_grad()
        xt, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        yt, yo = tv(xt), ours(xo)
        torch.testing.assert_close(yo, yt, rtol=1e-5, atol=1e-5)
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


def test_state_dict_round_trip_loads_into_torchvision():
    tv, ours = _torchvision_pair(num_classes=7)
    back = state_dict_to_torchvision(ours.state_dict())
    assert list(back) == list(tv.state_dict())
    fresh = video.r3d_18(num_classes=7)
    fresh.load_state_dict(back, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tv.state_dict().values()))


def test_load_checkpoint_detects_torchvision_layout():
    tv, _ = _torchvision_pair(num_classes=5)
    ours = torchvision_r3d_18(n_classes=5)
    assert load_checkpoint({"model": tv.state_dict(), "epoch": 44}, ours)["format"] == "torchvision"
    assert torch.equal(ours.layer2[0].bn1.running_var, tv.layer2[0].conv1[1].running_var)


def test_fused_ours_matches_torchvision_in_float32():
    tv, ours = _torchvision_pair()
    set_backend(ours, "cpu")
    x = torch.rand(2, 3, 4, 32, 32)
    for mode in ("train", "eval"):
        tv.train(mode == "train")
        ours.train(mode == "train")
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-4)


def _seeded(builder):
    def make():
        torch.manual_seed(0)
        return builder(num_classes=5)
    return make


def test_fuse_torchvision_r3d_18_keeps_state_dict_and_matches(cpu_extension):
    make = _seeded(video.r3d_18)
    fused = fuse(make(), backend="cpu")
    assert get_backend(fused) == "cpu" and list(fused.state_dict()) == list(make().state_dict())
    with record_conv_units() as units:
        fused.eval()(torch.randn(1, 3, 4, 32, 32))
    assert len(units) == 20 and sum(u["residual"] for u in units) == 8 and all(u["bn"] is not None for u in units)
    # float32 (full-width float64 convs are slow on two cores); train mode is judged against float64, where
    # the plain float32 BatchNorm path can be the less accurate one
    x = torch.randn(2, 3, 4, 32, 32)
    compare_float32_accuracy(make, x, fuse_fn=fuse, modes=("train",))
    plain = make().eval()
    torch.testing.assert_close(fused.eval()(x), plain(x), rtol=1e-5, atol=1e-5)


def test_fuse_torchvision_r2plus1d_18_but_no_authors_equivalent(cpu_extension):
    make = _seeded(video.r2plus1d_18)
    fused = fuse(make(), backend="cpu").eval()
    with record_conv_units() as units:
        y = fused(torch.ones(1, 3, 4, 32, 32))
    assert len(units) == 37 and all(u["bn"] is not None for u in units)
    torch.testing.assert_close(y, make().eval()(torch.ones(1, 3, 4, 32, 32)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="r2plus1d_18"):
        state_dict_from_torchvision(make().state_dict())
    with pytest.raises(ValueError, match="mc3_18"):
        state_dict_from_torchvision(video.mc3_18(num_classes=5).state_dict())


def test_converter_argument_errors():
    with pytest.raises(ValueError, match="stem.0.weight"):
        state_dict_from_torchvision({"conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="conv1.weight"):
        state_dict_to_torchvision({"stem.0.weight": torch.zeros(1)})
