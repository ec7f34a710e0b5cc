"""3D ResNet (Hara et al., CVPR 2018; authors' master-branch layout): the skeleton shared by every ResNet-like
family of this package, the basic and bottleneck blocks, shortcut types A and B, and ``--model resnet``.

Module names and registration order are the authors' (``conv1, bn1, relu, maxpool, layer1..4, avgpool, fc``;
blocks ``conv1, bn1, relu, conv2, bn2[, conv3, bn3], downsample``), so their checkpoints load with
``strict=True`` and state_dicts list keys in the same order. Modules are also created in the authors' order,
so a given ``torch.manual_seed`` gives the same initial weights as their code.

Every conv runs through :func:`~video3d_fast.models.fusion.conv_bn_act`: with ``backend="torch"`` that is the
plain module sequence of the authors' ``forward``; other backends run the fused ops.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn

from .fusion import BackendMixin, FusableSequential

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ProjectionShortcut",
    "ResNet",
    "RESNET_DEPTHS",
    "ZeroPadShortcut",
    "conv1x1x1",
    "conv3x3x3",
    "resnet_layers",
]

# depth -> blocks per stage; depths >= 50 use bottleneck blocks (seed_repo.md section 1.1).
RESNET_DEPTHS: Dict[int, Tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}


def resnet_layers(model_depth: int, allowed: Sequence[int] = tuple(RESNET_DEPTHS)) -> Tuple[bool, List[int]]:
    """(uses_bottleneck, blocks per stage) for a ResNet depth; ValueError for unknown depths."""
    if isinstance(model_depth, bool) or not isinstance(model_depth, int) or model_depth not in allowed:
        raise ValueError(f"model_depth must be one of {tuple(allowed)}, got {model_depth!r}")
    return model_depth >= 50, list(RESNET_DEPTHS[model_depth])


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Shortcut type A: subsample by ``stride`` in T, H, W, then zero-pad the channels to ``out_planes``.

    Parameter-free, so it adds no state_dict keys (the authors' ``functools.partial`` added none either).
    Fixes of the authors' version: the zeros take the input's dtype and device (theirs were float32 on the
    CPU, moved only to the default CUDA device), and gradients flow through the shortcut. ``detach=True``
    restores their ``out.data`` behaviour (no gradient through the down-sampling shortcut) for bit-faithful
    re-training of the CVPR-era type-A models.
    """

    def __init__(self, out_planes: int, stride: int, detach: bool = False):
        super().__init__()
        self.out_planes = out_planes
        self.stride = stride
        self.detach = detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        out = x[:, :, ::s, ::s, ::s]  # == avg_pool3d(kernel_size=1, stride=s), for every dtype/device
        if self.detach:
            out = out.detach()
        n, c, d, h, w = out.shape
        if c > self.out_planes:
            raise ValueError(f"shortcut A pads channels up to {self.out_planes}, but the input has {c}")
        pad = out.new_zeros((n, self.out_planes - c, d, h, w))
        return torch.cat([out, pad], dim=1)

    def extra_repr(self) -> str:
        return f"out_planes={self.out_planes}, stride={self.stride}, detach={self.detach}"


class ProjectionShortcut(FusableSequential):
    """Shortcut type B: ``Sequential(conv 1x1x1 stride s, BatchNorm3d)``, keys ``downsample.0`` / ``.1``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__(conv1x1x1(in_planes, out_planes, stride), nn.BatchNorm3d(out_planes))


class BasicBlock(BackendMixin, nn.Module):
    """conv 3x3x3 (stride s) -> BN -> ReLU -> conv 3x3x3 -> BN -> + shortcut -> ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv3x3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv_unit(x, self.conv1, self.bn1, relu=self.relu)
        return self.conv_unit(out, self.conv2, self.bn2, residual=shortcut, relu=self.relu)


class Bottleneck(BackendMixin, nn.Module):
    """conv 1x1x1 -> BN -> ReLU -> conv 3x3x3 (stride s, ``groups``) -> BN -> ReLU -> conv 1x1x1 -> BN ->
    + shortcut -> ReLU. ``mid_planes`` (default ``planes``) and ``groups`` serve ResNeXt."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 mid_planes: Optional[int] = None, groups: int = 1):
        super().__init__()
        mid = planes if mid_planes is None else mid_planes
        self.conv1 = conv1x1x1(in_planes, mid)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = conv3x3x3(mid, mid, stride, groups)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = conv1x1x1(mid, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv_unit(x, self.conv1, self.bn1, relu=self.relu)
        out = self.conv_unit(out, self.conv2, self.bn2, relu=self.relu)
        return self.conv_unit(out, self.conv3, self.bn3, residual=shortcut, relu=self.relu)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class ResNet(BackendMixin, nn.Module):
    """The authors' ResNet skeleton: stem (conv ``(t,7,7)`` stride ``(ts,2,2)`` -> BN -> ReLU -> max-pool),
    four stages (stride 1, 2, 2, 2 in T, H and W), global average pooling, ``fc``.

    Args (the authors' constructor, master branch):
        block: block class (``expansion`` attribute; built as ``block(in_planes, planes, stride, downsample)``).
        layers: blocks per stage (4 ints).
        block_inplanes: stage widths before ``widen_factor`` (4 ints).
        n_input_channels: 3 for RGB, 2 for optical flow.
        conv1_t_size, conv1_t_stride: temporal kernel size and stride of the stem conv.
        no_max_pool: skip the stem max-pool (the module still exists; it has no parameters).
        shortcut_type: "A" (zero-padding, parameter-free) or "B" (1x1x1 conv + BN where the shape changes).
        widen_factor: multiplies every width, the stem's included.
        n_classes: outputs of ``fc``.
    Keyword-only additions:
        stem_planes: stem width if not ``block_inplanes[0]`` (64 for the CVPR-era ResNeXt/WRN weights).
        shortcut_a_detach: reproduce the authors' gradient-free type-A shortcut (see ZeroPadShortcut).
    Input (N, n_input_channels, T, H, W) float; output logits (N, n_classes).
    """

    def __init__(
        self,
        block: Type[nn.Module],
        layers: Sequence[int],
        block_inplanes: Sequence[int],
        n_input_channels: int = 3,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        no_max_pool: bool = False,
        shortcut_type: str = "B",
        widen_factor: float = 1.0,
        n_classes: int = 400,
        *,
        stem_planes: Optional[int] = None,
        shortcut_a_detach: bool = False,
    ):
        super().__init__()
        if len(layers) != 4 or len(block_inplanes) != 4:
            raise ValueError(f"layers and block_inplanes need 4 entries, got {list(layers)} and {list(block_inplanes)}")
        for name, value in (("n_input_channels", n_input_channels), ("conv1_t_size", conv1_t_size),
                            ("conv1_t_stride", conv1_t_stride), ("n_classes", n_classes)):
            _check_positive_int(value, name)
        if shortcut_type not in ("A", "B"):
            raise ValueError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, (int, float)) or widen_factor <= 0:
            raise ValueError(f"widen_factor must be a positive number, got {widen_factor!r}")
        block_inplanes = [int(x * widen_factor) for x in block_inplanes]
        if min(block_inplanes) < 1:
            raise ValueError(f"widen_factor {widen_factor} leaves a stage without channels: {block_inplanes}")

        self.in_planes = block_inplanes[0] if stem_planes is None else _check_positive_int(stem_planes, "stem_planes")
        self.no_max_pool = no_max_pool
        self.shortcut_a_detach = shortcut_a_detach
        self._make_stem(n_input_channels, conv1_t_size, conv1_t_stride)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, block_inplanes[0], layers[0], shortcut_type)
        self.layer2 = self._make_layer(block, block_inplanes[1], layers[1], shortcut_type, stride=2)
        self.layer3 = self._make_layer(block, block_inplanes[2], layers[2], shortcut_type, stride=2)
        self.layer4 = self._make_layer(block, block_inplanes[3], layers[3], shortcut_type, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(block_inplanes[3] * block.expansion, n_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_stem(self, n_input_channels: int, conv1_t_size: int, conv1_t_stride: int) -> None:
        self.conv1 = nn.Conv3d(n_input_channels, self.in_planes, kernel_size=(conv1_t_size, 7, 7),
                               stride=(conv1_t_stride, 2, 2), padding=(conv1_t_size // 2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(self.in_planes)

    def _forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_unit(x, self.conv1, self.bn1, relu=self.relu)

    def _new_block(self, block, in_planes: int, planes: int, stride: int = 1,
                   downsample: Optional[nn.Module] = None) -> nn.Module:
        return block(in_planes, planes, stride, downsample)

    def _make_layer(self, block, planes: int, blocks: int, shortcut_type: str, stride: int = 1) -> nn.Sequential:
        downsample = None
        out_planes = planes * block.expansion
        if stride != 1 or self.in_planes != out_planes:
            if shortcut_type == "A":
                downsample = ZeroPadShortcut(out_planes, stride, detach=self.shortcut_a_detach)
            else:
                downsample = ProjectionShortcut(self.in_planes, out_planes, stride)
        layers = [self._new_block(block, self.in_planes, planes, stride, downsample)]
        self.in_planes = out_planes
        for _ in range(1, blocks):
            layers.append(self._new_block(block, self.in_planes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._forward_stem(x)
        if not self.no_max_pool:
            x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


def build_resnet(model_depth: int, block_inplanes: Sequence[int] = (64, 128, 256, 512), **kwargs) -> ResNet:
    """``--model resnet --model_depth d``: BasicBlock for 10/18/34, Bottleneck for 50-200 (ResNet kwargs)."""
    bottleneck, layers = resnet_layers(model_depth)
    return ResNet(Bottleneck if bottleneck else BasicBlock, layers, block_inplanes, **kwargs)
