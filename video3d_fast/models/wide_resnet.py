"""Wide ResNet (``--model wideresnet --wide_resnet_k k``): bottleneck blocks with expansion 2 on stage widths
[64k, 128k, 256k, 512k]. With k=2 the stem is 128 wide (master, since 2019-09); ``stem_planes=64`` gives
the CVPR-era layout of ``wideresnet-50-kinetics.pth``.
"""
from __future__ import annotations

from typing import Sequence

from .resnet import Bottleneck, ResNet, resnet_layers

__all__ = ["WideBottleneck", "WIDE_RESNET_DEPTHS", "build_wide_resnet"]

WIDE_RESNET_DEPTHS = (50, 101, 152, 200)


class WideBottleneck(Bottleneck):
    """The ResNet bottleneck with expansion 2 (stage outputs 2 x planes)."""

    expansion = 2


def build_wide_resnet(model_depth: int, k: int = 2, block_inplanes: Sequence[int] = (64, 128, 256, 512),
                      **kwargs) -> ResNet:
    """WRN-d with widening factor ``k`` applied to ``block_inplanes`` (ResNet kwargs)."""
    _, layers = resnet_layers(model_depth, WIDE_RESNET_DEPTHS)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"wide_resnet_k must be a positive int, got {k!r}")
    return ResNet(WideBottleneck, layers, [x * k for x in block_inplanes], **kwargs)
