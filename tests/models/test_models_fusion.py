"""Fused execution: every architecture matches its unfused self (outputs, gradients, BN running statistics,
train and eval), the backend switch keeps the state_dict, and fuse() converts plain nn.Modules."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from video3d_fast import ops
from video3d_fast.models import (
    BackendMixin,
    conv_bn_act,
    fuse,
    fusion_coverage,
    generate_model,
    get_backend,
    record_conv_units,
    set_backend,
)

from .helpers import (
    all_model_depths,
    clip_for,
    compare_float32_accuracy,
    compare_fused_unfused,
    narrow_options,
    randomize_batchnorm,
    slow,
)

pytestmark = pytest.mark.usefixtures("cpu_extension")

REPRESENTATIVE = [
    ("resnet", 10, {"resnet_shortcut": "A"}),
    ("resnet", 18, {}),
    ("resnet", 50, {}),
    ("preresnet", 10, {}),
    ("preresnet", 50, {"resnet_shortcut": "A"}),
    ("wideresnet", 50, {}),
    ("resnext", 50, {}),
    ("densenet", 121, {"no_max_pool": True}),
    ("resnet2p1d", 10, {"conv1_t_size": 3}),
    ("resnet2p1d", 50, {}),
]


def _maker(model, depth, options):
    return functools.partial(generate_model, model, depth, n_classes=4, **narrow_options(model), **options)


@pytest.mark.parametrize("model,depth,options", REPRESENTATIVE, ids=lambda v: str(v))
def test_fused_matches_unfused_float64_train_and_eval(model, depth, options):
    x = clip_for(model)
    if model == "densenet" and options.get("no_max_pool"):
        x = x[:, :, :, :17, :16]
    compare_fused_unfused(_maker(model, depth, options), x)


@slow
@pytest.mark.parametrize("model,depth", all_model_depths())
def test_fused_matches_unfused_every_depth(model, depth):
    # rounding differences grow with depth (R(2+1)D-200 has 270 conv units): 1e-5 for float64
    compare_fused_unfused(_maker(model, depth, {}), clip_for(model), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fused_float32_channels_last_is_as_accurate_as_unfused(mode):
    x = clip_for("resnext").contiguous(memory_format=torch.channels_last_3d)
    compare_float32_accuracy(_maker("resnext", 50, {"conv1_t_stride": 2, "no_max_pool": True}), x, modes=(mode,))


def test_backend_auto_matches_torch_and_resolves_to_cpu_here():
    make = _maker("resnet", 10, {})
    compare_fused_unfused(make, clip_for("resnet"), backend="auto")
    assert ops.resolve_backend("auto", torch.device("cpu")) == "cpu"


def test_fused_path_calls_the_ops_with_the_bn_module_state():
    net = generate_model("resnet", 10, n_classes=3, block_inplanes=(4, 8, 8, 16), backend="cpu").double()
    calls = {"train": 0, "eval": 0}
    orig_train, orig_eval = ops.conv3d_batchnorm_act, ops.conv3d_affine_act

    def spy_train(*args, **kwargs):
        calls["train"] += 1
        assert kwargs["backend"] == "cpu"
        return orig_train(*args, **kwargs)

    def spy_eval(*args, **kwargs):
        calls["eval"] += 1
        return orig_eval(*args, **kwargs)

    x = clip_for("resnet", batch=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "conv3d_batchnorm_act", spy_train)
        mp.setattr(ops, "conv3d_affine_act", spy_eval)
        net.train()(x)
        assert calls == {"train": 12, "eval": 0}  # stem + 8 block convs + 3 projection shortcuts
        assert net.bn1.num_batches_tracked.item() == 1
        net.eval()(x)
        assert calls == {"train": 12, "eval": 12}


def test_state_dict_and_parameters_do_not_depend_on_backend():
    net = generate_model("resnet2p1d", 18, block_inplanes=(4, 8, 8, 16))
    keys = [(k, v.data_ptr()) for k, v in net.state_dict().items()]
    for backend in ("cpu", "auto", "torch"):
        set_backend(net, backend)
        assert [(k, v.data_ptr()) for k, v in net.state_dict().items()] == keys
        assert get_backend(net) == backend
        assert all(m.backend == backend for m in net.modules() if isinstance(m, BackendMixin))


def test_training_step_with_optimizer_keeps_models_in_lockstep():
    torch.manual_seed(0)
    ref = generate_model("preresnet", 18, n_classes=4, block_inplanes=(4, 8, 8, 16)).double()
    randomize_batchnorm(ref)
    fused = set_backend(copy.deepcopy(ref), "cpu")
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt_f = torch.optim.SGD(fused.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    target = torch.tensor([0, 3, 1, 1])
    for _ in range(2):
        x = clip_for("resnet")
        for net, opt in ((ref, opt_r), (fused, opt_f)):
            opt.zero_grad()
            F.cross_entropy(net(x), target).backward()
            opt.step()
    for (name, a), b in zip(ref.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")
    assert ref.bn1.num_batches_tracked.item() == 5  # randomize_batchnorm set 3


def test_bn_without_running_stats_and_cumulative_momentum_behave_like_nn():
    def make():
        torch.manual_seed(0)
        net = generate_model("resnet", 10, n_classes=3, block_inplanes=(4, 8, 8, 16)).double()
        net.layer1[0].bn1 = nn.BatchNorm3d(4, track_running_stats=False).double()
        net.layer2[0].bn2.momentum = None
        return net

    compare_fused_unfused(make, clip_for("resnet"))


class TestFuseForeignModules:
    def _plain_block_model(self):
        class Block(nn.Module):  # the authors' block style: modules called in forward, "out += residual"
            def __init__(self, c, stride):
                super().__init__()
                self.conv1 = nn.Conv3d(c, 2 * c, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm3d(2 * c)
                self.relu = nn.ReLU(inplace=True)
                self.conv2 = nn.Conv3d(2 * c, 2 * c, 3, 1, 1, groups=2, bias=False)
                self.bn2 = nn.BatchNorm3d(2 * c)
                self.downsample = nn.Sequential(nn.Conv3d(c, 2 * c, 1, stride, bias=False), nn.BatchNorm3d(2 * c))

            def forward(self, x):
                residual = x
                out = self.relu(self.bn1(self.conv1(x)))
                out = self.bn2(self.conv2(out))
                residual = self.downsample(x)
                out += residual
                return self.relu(out)

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv3d(3, 4, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False)
                self.bn1 = nn.BatchNorm3d(4)
                self.layer = nn.Sequential(Block(4, 2), Block(8, 1))
                self.head = nn.Conv3d(16, 5, 1)  # conv with bias and no BN

            def forward(self, x):
                x = F.relu(self.bn1(self.conv1(x)))
                x = self.layer(x)
                return self.head(x).mean((2, 3, 4))

        return Net()

    def test_plain_module_fused_matches_original(self):
        net = self._plain_block_model()
        fused = fuse(copy.deepcopy(net), backend="cpu")
        assert isinstance(fused, torch.fx.GraphModule) and type(fused).__name__ == "Net"
        with record_conv_units() as units:
            fused.double()(clip_for("resnet"))
        assert len(units) == sum(isinstance(m, nn.Conv3d) for m in net.modules()) == 8
        assert [u["residual"] for u in units].count(True) == 2
        compare_fused_unfused(self._plain_block_model, clip_for("resnet"), fuse_fn=fuse)

    def test_untraceable_parts_fall_back_to_fusing_children(self):
        class ShortcutA(nn.Module):  # authors' shortcut A style: torch.zeros with traced sizes
            def forward(self, x):
                out = F.avg_pool3d(x, kernel_size=1, stride=2)
                pad = torch.zeros(out.size(0), out.size(1), out.size(2), out.size(3), out.size(4), dtype=x.dtype)
                return torch.cat([out, pad], 1)

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv3d(3, 6, 3, 2, 1, bias=False)
                self.bn = nn.BatchNorm3d(6)
                self.short = ShortcutA()

            def forward(self, x):
                return torch.relu(self.bn(self.conv(x)) + self.short(x))

        def make():
            torch.manual_seed(0)
            return nn.Sequential(Block(), nn.Sequential(nn.Conv3d(6, 6, 3, 1, 1, bias=False), nn.BatchNorm3d(6),
                                                        nn.ReLU()))

        fused = fuse(make(), backend="cpu")
        assert isinstance(fused, nn.Sequential)  # the top level could not be traced
        assert isinstance(fused[1], torch.fx.GraphModule) and get_backend(fused) == "cpu"
        compare_fused_unfused(make, clip_for("resnet"), fuse_fn=fuse)

    def test_broadcast_add_and_conv_bias_before_bn_stay_correct(self):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv3d(3, 4, 3, padding=1, bias=False)
                self.bn = nn.BatchNorm3d(4)
                self.conv_b = nn.Conv3d(4, 4, 1, bias=True)
                self.bn_b = nn.BatchNorm3d(4)
                self.offset = nn.Parameter(torch.randn(1, 4, 1, 1, 1))

            def forward(self, x):
                y = torch.relu(self.bn(self.conv(x)) + self.offset)  # broadcast add: not a residual
                return self.bn_b(self.conv_b(y))  # conv bias + BN: BN not fused

        compare_fused_unfused(Net, clip_for("resnet"), fuse_fn=fuse)
        with record_conv_units() as units:
            fuse(Net(), "cpu").double()(clip_for("resnet"))
        assert [u["bn"] is not None for u in units] == [True, False]

    def test_fuse_on_package_model_switches_backend_in_place(self):
        net = generate_model("resnet", 10, block_inplanes=(4, 8, 8, 16))
        assert fuse(net, backend="cpu") is net and get_backend(net) == "cpu"

    def test_set_backend_on_fused_graph_and_errors(self):
        fused = fuse(self._plain_block_model(), backend="cpu")
        set_backend(fused, "torch")
        assert get_backend(fused) == "torch"
        with pytest.raises(ValueError, match="no fusable units"):
            set_backend(nn.Linear(2, 2), "cpu")
        with pytest.raises(ValueError, match="backend must be one of"):
            fuse(nn.Linear(2, 2), backend="gpu")
        with pytest.raises(TypeError, match="model must be an nn.Module"):
            fuse("resnet")


def test_sync_batchnorm_is_left_as_a_module():
    sync = fuse(nn.Sequential(nn.Conv3d(3, 4, 1, bias=False), nn.SyncBatchNorm(4)), "cpu").eval()
    with record_conv_units() as units:
        sync(torch.randn(1, 3, 2, 4, 4))
    assert len(units) == 1 and units[0]["bn"] is None
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())


def test_conv_bn_act_rejects_unfusable_padding_mode():
    conv = nn.Conv3d(2, 2, 3, padding=1, padding_mode="circular", bias=False)
    with pytest.raises(ValueError, match="padding_mode"):
        conv_bn_act(torch.randn(1, 2, 3, 4, 4), conv, None, backend="cpu")


def test_fusion_coverage_per_architecture():
    assert fusion_coverage("resnet", 50) == dict(convs=53, conv_bn=53, with_residual=16, with_relu=49, conv_only=0,
                                                 batchnorms=53, batchnorms_unfused=0)
    pre = fusion_coverage("preresnet", 50)
    assert pre["conv_only"] == 16 and pre["batchnorms_unfused"] == 16  # each block's leading BN -> ReLU
    dense = fusion_coverage("densenet", 121)
    assert dense["conv_bn"] == 1 + 58 and dense["batchnorms_unfused"] == 58 + 3 + 1
    assert fusion_coverage("resnet2p1d", 18)["batchnorms_unfused"] == 0
