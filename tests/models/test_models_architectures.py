"""Every architecture and depth: state_dict layout and parameter counts from the spec, init, forward shapes,
the authors' constructor options and the fixes of their constructor bugs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from .helpers import SPEC_PARAMS, all_model_depths, expected_state_dict, narrow_options, slow
from video3d_fast.models import (
    MODEL_DEPTHS,
    ZeroPadShortcut,
    generate_model,
    get_backend,
    list_models,
    get_model,
    r3d_18,
    resnext3d_101,
)


def _meta(model, depth, **kwargs):
    with torch.device("meta"):
        return generate_model(model, depth, **kwargs)


def _layout(net):
    return [(k, tuple(v.shape)) for k, v in net.state_dict().items()]


@pytest.mark.parametrize("model,depth", all_model_depths())
def test_state_dict_keys_and_shapes_match_spec_layout(model, depth):
    assert _layout(_meta(model, depth)) == expected_state_dict(model, depth)


@pytest.mark.parametrize("depth", [10, 18, 34])
def test_shortcut_a_has_no_downsample_keys(depth):
    assert _layout(_meta("resnet", depth, resnet_shortcut="A")) == expected_state_dict("resnet", depth, shortcut="A")


@pytest.mark.parametrize("model,depth", [("wideresnet", 50), ("resnext", 101), ("resnext", 50)])
def test_legacy_stem_is_64_wide_like_cvpr_checkpoints(model, depth):
    net = _meta(model, depth, legacy_stem=True)
    assert _layout(net) == expected_state_dict(model, depth, legacy_stem=True)
    assert net.conv1.weight.shape[0] == 64


def test_options_change_layout_as_in_authors_code():
    net = _meta("resnet", 18, n_input_channels=2, conv1_t_size=3, n_classes=101)
    assert _layout(net) == expected_state_dict("resnet", 18, n_classes=101, n_input_channels=2, conv1_t_size=3)
    net = _meta("resnet2p1d", 18, conv1_t_size=5, n_input_channels=2)
    assert _layout(net) == expected_state_dict("resnet2p1d", 18, conv1_t_size=5, n_input_channels=2)
    net = _meta("wideresnet", 50, wide_resnet_k=3)
    assert _layout(net) == expected_state_dict("wideresnet", 50, k=3)
    net = _meta("densenet", 121, n_classes=7)
    assert _layout(net) == expected_state_dict("densenet", 121, n_classes=7)


@pytest.mark.parametrize("model,depth,options,params_m,entries", SPEC_PARAMS)
def test_parameter_count_matches_spec_table(model, depth, options, params_m, entries):
    net = _meta(model, depth, **options)
    params = sum(p.numel() for p in net.parameters())
    assert round(params / 1e6, 2) == params_m
    assert len(net.state_dict()) == entries


def test_resnext_cardinality_other_than_32_builds_and_runs():
    # authors' fc used cardinality*32*2 inputs: a shape error for C != 32
    for cardinality in (8, 16, 64):
        net = _meta("resnext", 50, resnext_cardinality=cardinality)
        assert net.fc.in_features == 2048
        assert net.layer1[0].conv2.groups == cardinality
        assert net.layer1[0].conv2.weight.shape[:2] == (cardinality * 128 // 32, 4)
    small = generate_model("resnext", 50, resnext_cardinality=8, n_classes=3, block_inplanes=(32, 64, 64, 128)).eval()
    assert small(torch.randn(1, 3, 8, 32, 32)).shape == (1, 3)


def test_resnext_widths_are_not_multiplied_by_n_classes():
    # authors' master passed n_classes positionally into widen_factor (x400 widths, out of memory)
    net = _meta("resnext", 101, n_classes=400)
    assert net.layer4[0].conv3.weight.shape == (2048, 1024, 1, 1, 1)


def test_preresnet_and_densenet_construct_with_authors_factory_arguments():
    # both raised TypeError in the authors' master (keyword in_planes / n_classes)
    assert _meta("preresnet", 50, n_classes=9).fc.out_features == 9
    assert _meta("densenet", 121, n_classes=9).classifier.out_features == 9


def test_init_follows_authors_code():
    torch.manual_seed(0)
    net = generate_model("resnet", 18, n_classes=10)
    w = net.layer1[0].conv1.weight
    fan_out = w.shape[0] * 27
    assert abs(w.std().item() - math.sqrt(2.0 / fan_out)) < 0.05 * math.sqrt(2.0 / fan_out)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    assert all(m.eps == 1e-5 and m.momentum == 0.1 for m in bns)
    assert net.fc.bias.abs().max() > 0  # default Linear init, not zeroed
    dense = generate_model("densenet", 121, n_classes=10, growth_rate=4, num_init_features=8, bn_size=2)
    assert torch.all(dense.classifier.bias == 0)
    torch.manual_seed(1)
    a = generate_model("resnext", 50, block_inplanes=(32, 64, 64, 128), resnext_cardinality=4)
    torch.manual_seed(1)
    b = generate_model("resnext", 50, block_inplanes=(32, 64, 64, 128), resnext_cardinality=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("model,depth", all_model_depths())
def test_every_depth_runs_forward_at_narrow_width(model, depth):
    torch.manual_seed(0)
    net = generate_model(model, depth, n_classes=5, **narrow_options(model)).eval()
    t = 16 if model == "densenet" else 8
    with torch.no_grad():
        out = net(torch.randn(1, 3, t, 32, 32))
    assert out.shape == (1, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("model,depth", [("resnet", 10), ("preresnet", 10), ("resnet2p1d", 10), ("resnext", 50),
                                         ("densenet", 121)])
def test_full_width_forward_small_depths(model, depth):
    torch.manual_seed(0)
    net = generate_model(model, depth, n_classes=5).eval()
    t = 16 if model == "densenet" else 8
    with torch.no_grad():
        out = net(torch.randn(1, 3, t, 32, 32))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


@slow
@pytest.mark.parametrize("model,depth", all_model_depths())
def test_full_width_forward_every_depth(model, depth):
    torch.manual_seed(0)
    net = generate_model(model, depth, n_classes=5).eval()
    t = 16 if model == "densenet" else 8
    with torch.no_grad():
        out = net(torch.randn(1, 3, t, 32, 32))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_no_max_pool_and_temporal_stride_change_output_sizes():
    seen = {}

    def hook(name):
        return lambda m, i, o: seen.__setitem__(name, tuple(o.shape))

    for no_max_pool, stride in ((False, 1), (True, 1), (False, 2)):
        net = _meta("resnet", 18, no_max_pool=no_max_pool, conv1_t_stride=stride)
        net.layer1.register_forward_hook(hook("layer1"))
        net(torch.empty(1, 3, 16, 112, 112, device="meta"))
        expected = {(False, 1): (1, 64, 8, 28, 28), (True, 1): (1, 64, 16, 56, 56), (False, 2): (1, 64, 4, 28, 28)}
        assert seen["layer1"] == expected[(no_max_pool, stride)]


def test_two_channel_flow_input_runs():
    net = generate_model("resnet2p1d", 10, n_input_channels=2, n_classes=4, block_inplanes=(4, 8, 8, 16)).eval()
    assert net(torch.randn(1, 2, 8, 32, 32)).shape == (1, 4)


class TestShortcutA:
    def test_works_in_low_precision_and_on_meta(self):
        # the authors' zeros were float32 CPU tensors: cat failed for fp16/bf16 and non-default devices
        net = generate_model("resnet", 10, resnet_shortcut="A", n_classes=3, block_inplanes=(4, 8, 8, 16))
        out = net.to(torch.bfloat16).eval()(torch.randn(1, 3, 8, 32, 32, dtype=torch.bfloat16))
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
        short = ZeroPadShortcut(8, 2)
        y = short(torch.randn(2, 3, 5, 7, 6, dtype=torch.float16))
        assert y.shape == (2, 8, 3, 4, 3) and y.dtype == torch.float16
        assert short(torch.empty(2, 3, 5, 7, 6, device="meta")).device.type == "meta"

    def test_equals_strided_average_pool_then_zero_channels(self):
        x = torch.randn(2, 3, 5, 7, 6)
        y = ZeroPadShortcut(7, 2)(x)
        expected = torch.nn.functional.avg_pool3d(x, kernel_size=1, stride=2)
        torch.testing.assert_close(y[:, :3], expected, rtol=0, atol=0)
        assert torch.count_nonzero(y[:, 3:]) == 0

    def test_gradient_flows_unless_detach_requested(self):
        x = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
        ZeroPadShortcut(4, 2)(x).sum().backward()
        assert x.grad.sum().item() == 2 * 2 * 2 * 2
        x2 = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
        y = ZeroPadShortcut(4, 2, detach=True)(x2)
        assert not y.requires_grad
        net = generate_model("resnet", 10, resnet_shortcut="A", shortcut_a_detach=True, block_inplanes=(4, 8, 8, 16))
        assert all(m.detach for m in net.modules() if isinstance(m, ZeroPadShortcut))


class TestArgumentChecks:
    def test_unknown_model_and_depth(self):
        with pytest.raises(ValueError, match="model must be one of"):
            generate_model("vgg")
        with pytest.raises(ValueError, match="model_depth must be one of"):
            generate_model("resnext", 18)
        with pytest.raises(ValueError, match="model_depth must be one of"):
            generate_model("densenet", 50)

    def test_options_that_do_not_apply_are_rejected(self):
        with pytest.raises(ValueError, match="resnext_cardinality"):
            generate_model("resnet", 18, resnext_cardinality=16)
        with pytest.raises(ValueError, match="resnet_widen_factor"):
            generate_model("resnext", 50, resnet_widen_factor=2.0)
        with pytest.raises(ValueError, match="legacy_stem"):
            generate_model("resnet", 18, legacy_stem=True)
        with pytest.raises(TypeError, match="unexpected keyword argument 'num_classes'"):
            generate_model("densenet", 121, num_classes=10)

    def test_bad_values_name_the_argument(self):
        with pytest.raises(ValueError, match="shortcut_type"):
            generate_model("resnet", 18, resnet_shortcut="C")
        with pytest.raises(ValueError, match="n_classes"):
            generate_model("resnet", 18, n_classes=0)
        with pytest.raises(ValueError, match="conv1_t_size"):
            generate_model("resnet", 18, conv1_t_size=0)
        with pytest.raises(ValueError, match="widen_factor"):
            generate_model("resnet", 18, resnet_widen_factor=-1)
        with pytest.raises(ValueError, match="cardinality"):
            generate_model("resnext", 50, resnext_cardinality=0)
        with pytest.raises(ValueError, match="cardinality 32 does not divide"):
            generate_model("resnext", 50, block_inplanes=(16, 32, 64, 128))
        with pytest.raises(ValueError, match="backend must be one of"):
            generate_model("resnet", 10, backend="cudnn")
        with pytest.raises(ValueError, match="block_inplanes"):
            generate_model("resnet", 10, block_inplanes=(4, 8))


def test_registry_lists_every_constructor_and_builds_by_name():
    names = list_models()
    for expected in ("r3d_10", "r3d_200", "preact_r3d_200", "wide_r3d_50", "resnext3d_101", "densenet3d_264",
                     "r2plus1d_18", "torchvision_r3d_18"):
        assert expected in names
    assert len(names) == sum(len(d) for d in MODEL_DEPTHS.values()) + 1
    net = get_model("r3d_18", n_classes=3, block_inplanes=(4, 8, 8, 16), backend="cpu")
    assert net.fc.out_features == 3 and get_backend(net) == "cpu"
    with torch.device("meta"):
        assert resnext3d_101().layer1[0].conv2.groups == 32
        assert r3d_18(resnet_shortcut="A").layer2[0].downsample.__class__ is ZeroPadShortcut
    with pytest.raises(ValueError, match="unknown model"):
        get_model("r3d_19")
