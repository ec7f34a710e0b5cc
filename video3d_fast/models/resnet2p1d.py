"""R(2+1)D (``--model resnet2p1d``): the ResNet skeleton with every 3x3x3 conv factorised into a 1x3x3
spatial conv -> BN -> ReLU -> 3x1x1 temporal conv, the middle width chosen to match the 3D conv's parameter
count, as in the authors' master code (``conv1_s/bn1_s/conv1_t/bn1_t``, ``conv2_s/.../bn2_t``).

Every conv is followed by a BN, so every conv is a fused unit (the last of a block with the shortcut add).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .fusion import BackendMixin
from .resnet import ResNet, conv1x1x1, resnet_layers

__all__ = ["BasicBlock2p1d", "Bottleneck2p1d", "ResNet2p1d", "build_resnet2p1d", "mid_planes_2p1d"]


def mid_planes_2p1d(in_planes: int, planes: int, t: int = 3, s: int = 3) -> int:
    """Width between the (1,s,s) and (t,1,1) convs giving a (t,s,s) conv's parameter count (floored)."""
    return (in_planes * planes * t * s * s) // (in_planes * s * s + t * planes)


def conv1x3x3(in_planes: int, mid_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, mid_planes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1),
                     bias=False)


def conv3x1x1(mid_planes: int, planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(mid_planes, planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False)


class BasicBlock2p1d(BackendMixin, nn.Module):
    """Two factorised (2+1)D convs, each (1,3,3) -> BN -> ReLU -> (3,1,1) -> BN; + shortcut -> ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        mid1 = mid_planes_2p1d(in_planes, planes)
        self.conv1_s = conv1x3x3(in_planes, mid1, stride)
        self.bn1_s = nn.BatchNorm3d(mid1)
        self.conv1_t = conv3x1x1(mid1, planes, stride)
        self.bn1_t = nn.BatchNorm3d(planes)
        mid2 = mid_planes_2p1d(planes, planes)
        self.conv2_s = conv1x3x3(planes, mid2)
        self.bn2_s = nn.BatchNorm3d(mid2)
        self.conv2_t = conv3x1x1(mid2, planes)
        self.bn2_t = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv_unit(x, self.conv1_s, self.bn1_s, relu=self.relu)
        out = self.conv_unit(out, self.conv1_t, self.bn1_t, relu=self.relu)
        out = self.conv_unit(out, self.conv2_s, self.bn2_s, relu=self.relu)
        return self.conv_unit(out, self.conv2_t, self.bn2_t, residual=shortcut, relu=self.relu)


class Bottleneck2p1d(BackendMixin, nn.Module):
    """conv 1x1x1 -> BN -> ReLU -> (2+1)D conv (stride s in both parts) -> conv 1x1x1 -> BN -> + shortcut -> ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        mid = mid_planes_2p1d(planes, planes)
        self.conv2_s = conv1x3x3(planes, mid, stride)
        self.bn2_s = nn.BatchNorm3d(mid)
        self.conv2_t = conv3x1x1(mid, planes, stride)
        self.bn2_t = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv_unit(x, self.conv1, self.bn1, relu=self.relu)
        out = self.conv_unit(out, self.conv2_s, self.bn2_s, relu=self.relu)
        out = self.conv_unit(out, self.conv2_t, self.bn2_t, relu=self.relu)
        return self.conv_unit(out, self.conv3, self.bn3, residual=shortcut, relu=self.relu)


class ResNet2p1d(ResNet):
    """ResNet skeleton with the factorised stem ``conv1_s (1,7,7)/(1,2,2) -> bn1_s -> ReLU -> conv1_t (t,1,1)
    /(ts,1,1) -> bn1_t -> ReLU``. The stem's middle width uses a literal 3 input channels (as the authors,
    also for 2-channel flow input) so that their checkpoints keep their shapes."""

    def _make_stem(self, n_input_channels: int, conv1_t_size: int, conv1_t_stride: int) -> None:
        mid = (3 * self.in_planes * conv1_t_size * 7 * 7) // (3 * 7 * 7 + conv1_t_size * self.in_planes)
        self.conv1_s = nn.Conv3d(n_input_channels, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3),
                                 bias=False)
        self.bn1_s = nn.BatchNorm3d(mid)
        self.conv1_t = nn.Conv3d(mid, self.in_planes, kernel_size=(conv1_t_size, 1, 1), stride=(conv1_t_stride, 1, 1),
                                 padding=(conv1_t_size // 2, 0, 0), bias=False)
        self.bn1_t = nn.BatchNorm3d(self.in_planes)

    def _forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_unit(x, self.conv1_s, self.bn1_s, relu=self.relu)
        return self.conv_unit(x, self.conv1_t, self.bn1_t, relu=self.relu)


def build_resnet2p1d(model_depth: int, block_inplanes: Sequence[int] = (64, 128, 256, 512), **kwargs) -> ResNet2p1d:
    """R(2+1)D-d, depths 10-200 (ResNet kwargs)."""
    bottleneck, layers = resnet_layers(model_depth)
    return ResNet2p1d(Bottleneck2p1d if bottleneck else BasicBlock2p1d, layers, block_inplanes, **kwargs)
