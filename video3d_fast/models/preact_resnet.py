"""Pre-activation ResNet (``--model preresnet``): blocks BN -> ReLU -> conv, shortcut added after the last
conv, no ReLU after the add; stem and head as in ResNet (no final BN/ReLU before pooling, as the authors).

Fusion: a block's first BN -> ReLU has no conv in front of it and stays unfused (two elementwise ops);
each following ``conv -> BN -> ReLU`` is one fused unit; the last conv takes the shortcut add in its epilogue.
Fix of the authors' master code: blocks are built positionally (theirs raised TypeError on ``in_planes=``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .fusion import BackendMixin
from .resnet import ResNet, conv1x1x1, conv3x3x3, resnet_layers

__all__ = ["PreActivationBasicBlock", "PreActivationBottleneck", "build_preact_resnet"]


class PreActivationBasicBlock(BackendMixin, nn.Module):
    """BN -> ReLU -> conv 3x3x3 (stride s) -> BN -> ReLU -> conv 3x3x3 -> + shortcut(x)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.bn1 = nn.BatchNorm3d(in_planes)
        self.conv1 = conv3x3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)  # the raw input, as the authors
        out = self.relu(self.bn1(x))
        out = self.conv_unit(out, self.conv1, self.bn2, relu=self.relu)
        return self.conv_unit(out, self.conv2, residual=shortcut)


class PreActivationBottleneck(BackendMixin, nn.Module):
    """BN -> ReLU -> conv 1x1x1 -> BN -> ReLU -> conv 3x3x3 (stride s) -> BN -> ReLU -> conv 1x1x1 -> + shortcut(x)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.bn1 = nn.BatchNorm3d(in_planes)
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(x))
        out = self.conv_unit(out, self.conv1, self.bn2, relu=self.relu)
        out = self.conv_unit(out, self.conv2, self.bn3, relu=self.relu)
        return self.conv_unit(out, self.conv3, residual=shortcut)


def build_preact_resnet(model_depth: int, block_inplanes: Sequence[int] = (64, 128, 256, 512), **kwargs) -> ResNet:
    """PreAct ResNet-d, depths 10-200 (ResNet kwargs)."""
    bottleneck, layers = resnet_layers(model_depth)
    block = PreActivationBottleneck if bottleneck else PreActivationBasicBlock
    return ResNet(block, layers, block_inplanes, **kwargs)
