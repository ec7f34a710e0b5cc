"""ResNeXt (``--model resnext --resnext_cardinality C``): bottlenecks with expansion 2 whose 3x3x3 conv is
grouped (``groups=C``), ``mid_planes = C * planes // 32`` on stage widths [128, 256, 512, 1024].

Fixes of the authors' master code (seed_repo.md section 1.13): blocks are built positionally (theirs passed
``in_planes=`` to a block expecting ``inplanes`` -> TypeError), ``n_classes`` is not passed into
``widen_factor`` (theirs made every width x400 -> out of memory), and ``fc`` takes the real feature width
``2 * 1024`` for every cardinality (theirs used ``cardinality * 32 * 2``, wrong unless C = 32).
The stem is 128 wide as in master; ``stem_planes=64`` gives the CVPR-era layout of ``resnext-101-kinetics.pth``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn as nn

from .resnet import Bottleneck, ResNet, resnet_layers

__all__ = ["ResNeXt", "ResNeXtBottleneck", "RESNEXT_DEPTHS", "build_resnext"]

RESNEXT_DEPTHS = (50, 101, 152, 200)


class ResNeXtBottleneck(Bottleneck):
    expansion = 2

    def __init__(self, in_planes: int, planes: int, cardinality: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None):
        mid_planes = cardinality * planes // 32
        if mid_planes < cardinality or mid_planes % cardinality:
            raise ValueError(f"cardinality {cardinality} does not divide the {mid_planes} mid channels of a "
                             f"block with {planes} planes (mid = cardinality * planes // 32)")
        super().__init__(in_planes, planes, stride, downsample, mid_planes=mid_planes, groups=cardinality)
        self.cardinality = cardinality


class ResNeXt(ResNet):
    """ResNet skeleton with ResNeXt blocks; ``cardinality`` = groups of the 3x3x3 convs (ResNet args)."""

    def __init__(self, block, layers: Sequence[int], block_inplanes: Sequence[int], n_input_channels: int = 3,
                 conv1_t_size: int = 7, conv1_t_stride: int = 1, no_max_pool: bool = False,
                 shortcut_type: str = "B", cardinality: int = 32, n_classes: int = 400, **kwargs):
        if isinstance(cardinality, bool) or not isinstance(cardinality, int) or cardinality < 1:
            raise ValueError(f"cardinality must be a positive int, got {cardinality!r}")
        self.cardinality = cardinality
        super().__init__(block, layers, block_inplanes, n_input_channels, conv1_t_size, conv1_t_stride,
                         no_max_pool, shortcut_type, n_classes=n_classes, **kwargs)

    def _new_block(self, block, in_planes, planes, stride=1, downsample=None):
        return block(in_planes, planes, self.cardinality, stride, downsample)


def build_resnext(model_depth: int, cardinality: int = 32, block_inplanes: Sequence[int] = (128, 256, 512, 1024),
                  **kwargs) -> ResNeXt:
    """ResNeXt-d, ``cardinality`` groups (ResNet kwargs)."""
    _, layers = resnet_layers(model_depth, RESNEXT_DEPTHS)
    return ResNeXt(ResNeXtBottleneck, layers, block_inplanes, cardinality=cardinality, **kwargs)
