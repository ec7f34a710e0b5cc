"""``generate_model``: the authors' model factory (master ``model.py``), keyword arguments named after their
command-line options, for every architecture of the paper."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch.nn as nn

from .densenet import DENSENET_CONFIGS, build_densenet
from .fusion import set_backend
from .preact_resnet import build_preact_resnet
from .resnet import RESNET_DEPTHS, build_resnet
from .resnet2p1d import build_resnet2p1d
from .resnext import RESNEXT_DEPTHS, build_resnext
from .wide_resnet import WIDE_RESNET_DEPTHS, build_wide_resnet

__all__ = ["MODEL_DEPTHS", "MODEL_NAMES", "generate_model"]

MODEL_DEPTHS: Dict[str, Tuple[int, ...]] = {
    "resnet": tuple(RESNET_DEPTHS),
    "preresnet": tuple(RESNET_DEPTHS),
    "wideresnet": WIDE_RESNET_DEPTHS,
    "resnext": RESNEXT_DEPTHS,
    "densenet": tuple(DENSENET_CONFIGS),
    "resnet2p1d": tuple(RESNET_DEPTHS),
}
MODEL_NAMES = tuple(MODEL_DEPTHS)

_RESNET_FAMILIES = ("resnet", "preresnet", "wideresnet", "resnext", "resnet2p1d")
_WIDENABLE = ("resnet", "preresnet", "resnet2p1d")  # where the authors' skeleton takes --resnet_widen_factor
# Extra keyword options (not CLI flags of the authors) and the models they apply to.
_EXTRA_OPTIONS = {
    "legacy_stem": ("wideresnet", "resnext"),
    "shortcut_a_detach": _RESNET_FAMILIES,
    "block_inplanes": _RESNET_FAMILIES,
    "growth_rate": ("densenet",),
    "num_init_features": ("densenet",),
    "bn_size": ("densenet",),
    "drop_rate": ("densenet",),
}


def generate_model(
    model: str = "resnet",
    model_depth: int = 18,
    n_classes: int = 400,
    n_input_channels: int = 3,
    resnet_shortcut: str = "B",
    conv1_t_size: int = 7,
    conv1_t_stride: int = 1,
    no_max_pool: bool = False,
    resnet_widen_factor: float = 1.0,
    wide_resnet_k: int = 2,
    resnext_cardinality: int = 32,
    backend: str = "torch",
    **kwargs: Any,
) -> nn.Module:
    """Build ``model`` of depth ``model_depth`` like the authors' ``generate_model(opt)``.

    Args (the authors' ``--`` options):
        model: "resnet", "preresnet", "wideresnet", "resnext", "densenet" or "resnet2p1d".
        model_depth: resnet/preresnet/resnet2p1d 10, 18, 34, 50, 101, 152, 200; wideresnet/resnext 50, 101,
            152, 200; densenet 121, 169, 201, 264.
        n_classes: classifier outputs (400 Kinetics-400, 700 Kinetics-700, 101 UCF-101, 51 HMDB-51, ...).
        n_input_channels: 3 (RGB) or 2 (flow).
        resnet_shortcut: "A" or "B" (ResNet families).
        conv1_t_size, conv1_t_stride: stem temporal kernel size / stride.
        no_max_pool: drop the stem max-pool.
        resnet_widen_factor: width multiplier (resnet, preresnet, resnet2p1d; as in the authors' factory).
        wide_resnet_k: WRN widening factor. resnext_cardinality: ResNeXt groups.
        backend: "torch" (plain modules, the authors' computation), "auto", "cpu", "cuda" or "triton"
            (fused ops); switch later with ``set_backend``.
    Extra keyword options:
        legacy_stem (wideresnet, resnext): 64-wide stem of the CVPR-2018 checkpoints (master: 128).
        shortcut_a_detach (ResNet families): no gradient through type-A shortcuts, as the authors' code.
        block_inplanes (ResNet families): base stage widths, 4 ints (default: the paper's).
        growth_rate, num_init_features, bn_size, drop_rate (densenet).
    Options that do not apply to ``model`` must keep their defaults (ValueError otherwise).

    Returns the model (training mode, float32, on the default device). It maps (N, n_input_channels, T, H, W)
    clips, T and H=W any size the strides allow (paper: 16 x 112 x 112), to logits (N, n_classes).
    Unlike the authors' code, every model constructs (their ResNeXt/PreAct/DenseNet constructor bugs are fixed).
    """
    if model not in MODEL_DEPTHS:
        raise ValueError(f"model must be one of {MODEL_NAMES}, got {model!r}")
    depths = MODEL_DEPTHS[model]
    if isinstance(model_depth, bool) or model_depth not in depths:
        raise ValueError(f"model_depth must be one of {depths} for model {model!r}, got {model_depth!r}")
    for name in kwargs:
        if name not in _EXTRA_OPTIONS:
            raise TypeError(f"generate_model() got an unexpected keyword argument {name!r}")
        if model not in _EXTRA_OPTIONS[name]:
            raise ValueError(f"option {name!r} applies to {_EXTRA_OPTIONS[name]}, not to model {model!r}")
    _require_default(model, "resnet_widen_factor", resnet_widen_factor, 1.0, _WIDENABLE)
    _require_default(model, "wide_resnet_k", wide_resnet_k, 2, ("wideresnet",))
    _require_default(model, "resnext_cardinality", resnext_cardinality, 32, ("resnext",))
    _require_default(model, "resnet_shortcut", resnet_shortcut, "B", _RESNET_FAMILIES)

    common = dict(n_input_channels=n_input_channels, conv1_t_size=conv1_t_size, conv1_t_stride=conv1_t_stride,
                  no_max_pool=no_max_pool, n_classes=n_classes)
    if model == "densenet":
        net = build_densenet(model_depth, **common, **kwargs)
    else:
        options: Dict[str, Any] = dict(common, shortcut_type=resnet_shortcut)
        if kwargs.pop("legacy_stem", False):
            options["stem_planes"] = 64
        if "shortcut_a_detach" in kwargs:
            options["shortcut_a_detach"] = bool(kwargs.pop("shortcut_a_detach"))
        block_inplanes = kwargs.pop("block_inplanes", None)
        if model in _WIDENABLE:
            options["widen_factor"] = resnet_widen_factor
        builder, builder_args = {
            "resnet": (build_resnet, {}),
            "preresnet": (build_preact_resnet, {}),
            "resnet2p1d": (build_resnet2p1d, {}),
            "wideresnet": (build_wide_resnet, {"k": wide_resnet_k}),
            "resnext": (build_resnext, {"cardinality": resnext_cardinality}),
        }[model]
        if block_inplanes is not None:
            builder_args["block_inplanes"] = _check_block_inplanes(block_inplanes)
        net = builder(model_depth, **builder_args, **options)
    return set_backend(net, backend)


def _require_default(model: str, name: str, value, default, applies_to) -> None:
    if model not in applies_to and value != default:
        raise ValueError(f"{name}={value!r} does not apply to model {model!r} (only to {applies_to})")


def _check_block_inplanes(values) -> Tuple[int, ...]:
    values = tuple(values)
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"block_inplanes must be 4 positive ints, got {values!r}")
    return values
