"""Checkpoint loading: the authors' master and CVPR-era dict formats, DataParallel prefixes, weights_only
safety, and helpful errors when a checkpoint does not fit the model."""
from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from video3d_fast.models import (
    convert_cvpr2018_state_dict,
    detect_checkpoint_format,
    generate_model,
    load_checkpoint,
    read_checkpoint,
)

NARROW = dict(block_inplanes=(4, 8, 8, 16))


class NotATensor:  # stands for any object that needs full unpickling
    def __init__(self, value):
        self.value = value


def _randomized(net):
    torch.manual_seed(1)
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) + 0.5)
    return net


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _cvpr_style(state_dict, rename=lambda k: k):
    """What the CVPR-era code saved: DataParallel keys, no num_batches_tracked (PyTorch <= 0.4.0)."""
    return OrderedDict(("module." + rename(k), v) for k, v in state_dict.items()
                       if not k.endswith("num_batches_tracked"))


def test_master_checkpoint_dict_loads_with_optimizer_and_scheduler(tmp_path):
    net = _randomized(generate_model("resnet", 10, n_classes=5, **NARROW))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    net(torch.randn(2, 3, 8, 32, 32)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [50, 100, 150])
    path = tmp_path / "save_10.pth"
    torch.save({"epoch": 10, "arch": "resnet-10", "state_dict": net.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, path)
    fresh = generate_model("resnet", 10, n_classes=5, **NARROW)
    ckpt = load_checkpoint(path, fresh)
    _same_state(fresh, net)
    assert ckpt["epoch"] == 10 and ckpt["arch"] == "resnet-10" and ckpt["format"] == "master"
    assert ckpt["missing_keys"] == [] and ckpt["unexpected_keys"] == []
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt["optimizer"])
    assert sorted(ckpt["scheduler"]["milestones"]) == [50, 100, 150]


def test_dataparallel_prefix_and_wrapped_model(tmp_path):
    net = _randomized(generate_model("resnet2p1d", 10, n_classes=5, **NARROW))
    prefixed = OrderedDict(("module." + k, v) for k, v in net.state_dict().items())
    fresh = generate_model("resnet2p1d", 10, n_classes=5, **NARROW)
    assert load_checkpoint({"state_dict": prefixed}, nn.DataParallel(fresh))["format"] == "master"
    _same_state(fresh, net)


def test_cvpr2018_resnext_with_legacy_stem_loads_and_computes_the_same(tmp_path):
    options = dict(n_classes=6, legacy_stem=True, block_inplanes=(32, 64, 64, 128), resnext_cardinality=4)
    net = _randomized(generate_model("resnext", 50, **options)).eval()
    path = tmp_path / "resnext-101-kinetics.pth"
    torch.save({"epoch": 200, "arch": "resnext-101", "state_dict": _cvpr_style(net.state_dict()),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}, path)
    fresh = generate_model("resnext", 50, **options).eval()
    ckpt = load_checkpoint(path, fresh)
    assert ckpt["format"] == "cvpr2018" and ckpt["epoch"] == 200
    x = torch.randn(1, 3, 8, 32, 32)
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)
    assert all(fresh.state_dict()[k].item() == 0 for k in fresh.state_dict() if k.endswith("num_batches_tracked"))
    master_stem = generate_model("resnext", 50, **dict(options, legacy_stem=False))
    with pytest.raises(RuntimeError, match="legacy_stem=True"):
        load_checkpoint(path, master_stem)


def test_cvpr2018_densenet_names_are_converted():
    options = dict(n_classes=4, growth_rate=4, num_init_features=8, bn_size=2)
    net = _randomized(generate_model("densenet", 121, **options))

    def old_name(key):
        for new, old in (("features.conv1.", "features.conv0."), ("features.norm1.", "features.norm0.")):
            if key.startswith(new):
                return old + key[len(new):]
        for new, old in ((".norm1.", ".norm.1."), (".conv1.", ".conv.1."), (".norm2.", ".norm.2."),
                         (".conv2.", ".conv.2.")):
            key = key.replace(new, old) if ".denselayer" in key else key
        return key

    old = _cvpr_style(net.state_dict(), old_name)
    assert "module.features.denseblock1.denselayer1.norm.1.weight" in old
    assert detect_checkpoint_format(old) == "cvpr2018"
    converted = convert_cvpr2018_state_dict(old)
    assert list(converted) == list(net.state_dict())
    fresh = generate_model("densenet", 121, **options)
    load_checkpoint({"state_dict": old}, fresh)
    _same_state(fresh, net)


def test_conversion_is_idempotent_on_master_state_dicts():
    sd = generate_model("preresnet", 18, **NARROW).state_dict()
    converted = convert_cvpr2018_state_dict(sd)
    assert list(converted) == list(sd) and all(converted[k] is sd[k] for k in sd)
    assert detect_checkpoint_format(sd) == "master"


def test_untrusted_pickle_is_refused_unless_opted_in(tmp_path):
    net = generate_model("resnet", 10, n_classes=2, **NARROW)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": net.state_dict(), "extra": NotATensor(3)}, path)
    with pytest.raises(pickle.UnpicklingError, match="allow_unsafe_pickle=True"):
        load_checkpoint(path, net)
    with pytest.warns(UserWarning, match="arbitrary code"):
        ckpt = load_checkpoint(path, net, allow_unsafe_pickle=True)
    assert ckpt["extra"].value == 3


def test_mismatch_errors_say_what_to_change():
    resnet_b = generate_model("resnet", 18, n_classes=7, **NARROW).state_dict()
    with pytest.raises(RuntimeError, match="resnet_shortcut='B'"):
        load_checkpoint(resnet_b, generate_model("resnet", 18, n_classes=7, resnet_shortcut="A", **NARROW))
    with pytest.raises(RuntimeError, match="n_classes=7"):
        load_checkpoint(resnet_b, generate_model("resnet", 18, n_classes=400, **NARROW))
    with pytest.raises(RuntimeError, match="resnet2p1d"):  # the authors' issue #256
        load_checkpoint(generate_model("resnet2p1d", 18, **NARROW).state_dict(),
                        generate_model("resnet", 18, **NARROW))
    with pytest.raises(RuntimeError, match="conv1_t_size=7"):
        load_checkpoint(generate_model("resnet", 10, **NARROW).state_dict(),
                        generate_model("resnet", 10, conv1_t_size=3, **NARROW))
    result = load_checkpoint(resnet_b, generate_model("resnet", 18, n_classes=7, resnet_shortcut="A", **NARROW),
                             strict=False)
    assert any(".downsample." in k for k in result["unexpected_keys"])


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="path must be"):
        load_checkpoint(123)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="no state_dict"):
        load_checkpoint({"epoch": 3, "arch": "resnet-18"})
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        load_checkpoint(generate_model("resnet", 10, **NARROW).state_dict(), model="resnet")
    path = tmp_path / "plain.pth"
    torch.save([1, 2, 3], path)
    assert read_checkpoint(path) == [1, 2, 3]
    with pytest.raises(TypeError, match="checkpoint must be a dict"):
        load_checkpoint(path)
