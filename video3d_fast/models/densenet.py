"""DenseNet-BC (``--model densenet``), the authors' master-branch layout: ``features`` (``conv1, norm1,
relu1[, pool1]``, ``denseblock{i}.denselayer{j}.{norm1,relu1,conv1,norm2,relu2,conv2}``,
``transition{i}.{norm,relu,conv,pool}``, ``norm5``) and ``classifier``.

Fusion: the stem ``conv1 -> norm1 -> relu1`` and each dense layer's ``conv1 -> norm2 -> relu2`` are fused
units; a dense layer's ``conv2`` and a transition's ``conv`` run as plain (unfused-epilogue) convs through
the ops; ``norm1 -> relu1`` of dense layers, ``norm -> relu`` of transitions and ``norm5 -> relu`` stay
unfused (pre-activation order: BN without a conv in front of it).
Fix of the authors' master code: the constructor takes ``n_classes`` (theirs took ``num_classes`` while
their factory passed ``n_classes`` -> TypeError).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fusion import BackendMixin, FusableSequential

__all__ = ["DenseNet", "DENSENET_CONFIGS", "build_densenet"]

# depth -> layers per dense block (growth rate 32, 64 initial features).
DENSENET_CONFIGS: Dict[int, Tuple[int, int, int, int]] = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
    264: (6, 12, 64, 48),
}


class _DenseLayer(FusableSequential):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float):
        super().__init__()
        self.add_module("norm1", nn.BatchNorm3d(num_input_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module("conv1", nn.Conv3d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1,
                                           bias=False))
        self.add_module("norm2", nn.BatchNorm3d(bn_size * growth_rate))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module("conv2", nn.Conv3d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1,
                                           bias=False))
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new_features = super().forward(x)
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return torch.cat([x, new_features], 1)


class _DenseBlock(nn.Sequential):
    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int, drop_rate: float):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)


class _Transition(FusableSequential):
    def __init__(self, num_input_features: int, num_output_features: int):
        super().__init__()
        self.add_module("norm", nn.BatchNorm3d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv3d(num_input_features, num_output_features, kernel_size=1, stride=1,
                                          bias=False))
        self.add_module("pool", nn.AvgPool3d(kernel_size=2, stride=2))


class DenseNet(BackendMixin, nn.Module):
    """DenseNet-BC.

    Args:
        n_input_channels, conv1_t_size, conv1_t_stride, no_max_pool: stem options as in ResNet
            (``no_max_pool`` omits ``pool1``, which has no parameters).
        growth_rate: channels each dense layer adds (k).
        block_config: dense layers per block (4 ints).
        num_init_features: stem width.
        bn_size: bottleneck width factor (``bn_size * growth_rate`` channels in the 1x1x1 conv).
        drop_rate: dropout after each dense layer (0 = none).
        n_classes: outputs of ``classifier``.
    Input (N, n_input_channels, T, H, W); output logits (N, n_classes).
    """

    def __init__(self, n_input_channels: int = 3, conv1_t_size: int = 7, conv1_t_stride: int = 1,
                 no_max_pool: bool = False, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0.0, n_classes: int = 1000):
        super().__init__()
        for name, value in (("n_input_channels", n_input_channels), ("conv1_t_size", conv1_t_size),
                            ("conv1_t_stride", conv1_t_stride), ("growth_rate", growth_rate),
                            ("num_init_features", num_init_features), ("bn_size", bn_size),
                            ("n_classes", n_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        stem = [
            ("conv1", nn.Conv3d(n_input_channels, num_init_features, kernel_size=(conv1_t_size, 7, 7),
                                stride=(conv1_t_stride, 2, 2), padding=(conv1_t_size // 2, 3, 3), bias=False)),
            ("norm1", nn.BatchNorm3d(num_init_features)),
            ("relu1", nn.ReLU(inplace=True)),
        ]
        if not no_max_pool:
            stem.append(("pool1", nn.MaxPool3d(kernel_size=3, stride=2, padding=1)))
        self.features = FusableSequential(OrderedDict(stem))

        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm3d(num_features))

        # The authors initialise the convs twice (before and after creating the classifier); doing the
        # same keeps a given seed's initial weights equal to theirs.
        self._init_convs_and_norms()
        self.classifier = nn.Linear(num_features, n_classes)
        self._init_convs_and_norms()
        nn.init.constant_(self.classifier.bias, 0)

    def _init_convs_and_norms(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool3d(out, output_size=(1, 1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


def build_densenet(model_depth: int, **kwargs) -> DenseNet:
    """DenseNet-BC-d for d in 121/169/201/264 (growth 32, 64 initial features unless given; DenseNet kwargs)."""
    if isinstance(model_depth, bool) or model_depth not in DENSENET_CONFIGS:
        raise ValueError(f"model_depth must be one of {tuple(DENSENET_CONFIGS)} for densenet, got {model_depth!r}")
    options = {"num_init_features": 64, "growth_rate": 32, **kwargs}
    return DenseNet(block_config=DENSENET_CONFIGS[model_depth], **options)
