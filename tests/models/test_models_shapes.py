"""Per-layer conv shapes exported for the benchmarks, MAC counts and fusion coverage, all measured from the
real models on the meta device."""
from __future__ import annotations

import pytest
import torch

from video3d_fast.models import (
    conv_layer_shapes,
    generate_model,
    get_backend,
    model_complexity,
    torchvision_r3d_18,
    unique_conv_shapes,
)


def _out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def _analytic_bottleneck_convs(kind, T=16, S=112):
    """The conv list of seed_repo.md section 1.1/1.5 (and spec/conv3d_flops.py), written out by hand:
    name -> (cin, cout, groups, kernel, stride, in_size, out_size)."""
    planes, exp, card, blocks = {"r50": ([64, 128, 256, 512], 4, None, [3, 4, 6, 3]),
                                 "rx101": ([128, 256, 512, 1024], 2, 32, [3, 4, 23, 3])}[kind]
    stem = 128 if kind == "rx101" else 64
    convs = {}

    def conv(name, cin, cout, d, k, s, p, g=1):
        o = tuple(_out(d[i], k[i], s[i], p[i]) for i in range(3))
        convs[name] = (cin, cout, g, k, s, d, o)
        return o

    d = conv("conv1", 3, stem, (T, S, S), (7, 7, 7), (1, 2, 2), (3, 3, 3))
    d = tuple(_out(x, 3, 2, 1) for x in d)
    cin = stem
    for si, (pl, nb) in enumerate(zip(planes, blocks)):
        for b in range(nb):
            s = 2 if si > 0 and b == 0 else 1
            mid = pl if card is None else card * pl // 32
            p = f"layer{si + 1}.{b}"
            d1 = conv(f"{p}.conv1", cin, mid, d, (1, 1, 1), (1, 1, 1), (0, 0, 0))
            d2 = conv(f"{p}.conv2", mid, mid, d1, (3, 3, 3), (s, s, s), (1, 1, 1), g=card or 1)
            d3 = conv(f"{p}.conv3", mid, pl * exp, d2, (1, 1, 1), (1, 1, 1), (0, 0, 0))
            if b == 0:
                conv(f"{p}.downsample.0", cin, pl * exp, d, (1, 1, 1), (s, s, s), (0, 0, 0))
            d, cin = d3, pl * exp
    return convs


@pytest.mark.parametrize("model,kind", [("resnet", "r50"), ("resnext", "rx101")])
def test_layer_shapes_match_hand_derived_list(model, kind):
    depth = 50 if kind == "r50" else 101
    layers = conv_layer_shapes(model, depth, batch=8)
    expected = _analytic_bottleneck_convs(kind)
    got = {l["name"]: (l["in_channels"], l["out_channels"], l["groups"], l["kernel"], l["stride"], l["in_size"],
                       l["out_size"]) for l in layers}
    assert got == expected
    assert all(l["batch"] == 8 and l["dilation"] == (1, 1, 1) for l in layers)
    with torch.device("meta"):
        net = generate_model(model, depth)
    assert sum(isinstance(m, torch.nn.Conv3d) for m in net.modules()) == len(layers)


def test_followed_by_describes_what_the_fused_op_absorbs():
    by_name = {l["name"]: l["followed_by"] for l in conv_layer_shapes("resnet", 18, batch=1)}
    assert by_name["conv1"] == "bn_relu"
    assert by_name["layer1.0.conv1"] == "bn_relu" and by_name["layer1.0.conv2"] == "bn_add_relu"
    assert by_name["layer2.0.downsample.0"] == "bn"
    pre = {l["name"]: l["followed_by"] for l in conv_layer_shapes("preresnet", 50, batch=1)}
    assert pre["layer1.0.conv1"] == "bn_relu" and pre["layer1.0.conv3"] == "add"
    dense = {l["name"]: l["followed_by"] for l in conv_layer_shapes("densenet", 121, batch=1)}
    assert dense["features.denseblock1.denselayer1.conv1"] == "bn_relu"
    assert dense["features.denseblock1.denselayer1.conv2"] == "none"
    assert dense["features.transition1.conv"] == "none"
    r2p1d = {l["name"]: l for l in conv_layer_shapes("resnet2p1d", 18, batch=1)}
    assert r2p1d["conv1_s"]["out_channels"] == 110 and r2p1d["conv1_t"]["kernel"] == (7, 1, 1)
    assert r2p1d["layer4.1.conv2_t"]["followed_by"] == "bn_add_relu"


# seed_repo.md section 1.10 (GMAC per 16x112x112 clip, convs + fc) and ecosystem.md section 1.1 (torchvision).
@pytest.mark.parametrize("model,depth,options,gmacs", [
    ("resnet", 18, {}, 8.3), ("resnet", 34, {}, 12.7), ("resnet", 50, {}, 10.1), ("resnet", 101, {}, 13.9),
    ("resnet", 152, {}, 18.6), ("resnet", 200, {}, 25.8), ("resnext", 101, {"legacy_stem": True}, 9.6),
    ("resnext", 101, {}, 13.0), ("wideresnet", 50, {"legacy_stem": True}, 26.2),
])
def test_macs_match_spec(model, depth, options, gmacs):
    c = model_complexity(model, depth, **options)
    assert round(c["macs"] / 1e9, 1) == gmacs
    assert c["flops"] == 2 * c["macs"] and c["macs"] == c["conv_macs"] + c["fc_macs"]


def test_macs_64_frame_resnext_and_torchvision_r3d_18():
    assert round(model_complexity("resnext", 101, sample_duration=64, legacy_stem=True)["macs"] / 1e9, 1) == 38.3
    with torch.device("meta"):
        tv = torchvision_r3d_18()
    assert round(model_complexity(tv)["macs"] / 1e9, 3) == 40.697  # torchvision's "GFLOPS" field is GMACs


def test_unique_shapes_deduplicate_with_counts():
    layers = conv_layer_shapes("resnext", 101, batch=8)
    unique = unique_conv_shapes(layers)
    assert sum(u["count"] for u in unique) == len(layers) == 104
    assert len(unique) < len(layers)
    assert unique == unique_conv_shapes("resnext", model_depth=101, batch=8)
    grouped = [u for u in unique if u["groups"] == 32]
    assert [(u["in_channels"], u["in_size"]) for u in grouped] == [
        (128, (8, 28, 28)), (256, (8, 28, 28)), (256, (4, 14, 14)), (512, (4, 14, 14)), (512, (2, 7, 7)),
        (1024, (2, 7, 7)), (1024, (1, 4, 4))]
    assert sum(u["count"] for u in grouped) == 33


def test_instances_run_where_they_are_and_keep_their_backend():
    net = generate_model("resnet", 10, n_classes=3, block_inplanes=(4, 8, 8, 16), backend="cpu")
    layers = conv_layer_shapes(net, sample_duration=8, sample_size=32, batch=2)
    assert layers[0]["in_size"] == (8, 32, 32) and layers[0]["batch"] == 2
    assert get_backend(net) == "cpu" and net.training


def test_argument_errors():
    with pytest.raises(ValueError, match="sample_size"):
        conv_layer_shapes("resnet", 18, sample_size=0)
    with pytest.raises(ValueError, match="only apply when model is a name"):
        conv_layer_shapes(generate_model("resnet", 10, block_inplanes=(4, 8, 8, 16)), n_classes=3)
    with pytest.raises(TypeError, match="model must be a model name"):
        conv_layer_shapes(3)
    with pytest.raises(ValueError, match="video3d_fast.fuse"):
        conv_layer_shapes(torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3)))
    with pytest.raises(ValueError, match="model_depth"):
        conv_layer_shapes("resnet", 19)
