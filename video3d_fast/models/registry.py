"""Named model constructors (``r3d_50(...)``, ``resnext3d_101(...)``, ...) and the registry that lists them,
in the style of torchvision's ``list_models`` / ``get_model`` / ``get_model_weights`` / ``get_weight``.

Every constructor is ``name(*, weights=None, progress=True, weights_path=None, **generate_model_options)``.
With ``weights``, the options the checkpoint needs (classes, shortcut type, legacy stem, ...) are filled in
(a conflicting explicit option is a ValueError) and the state_dict is loaded strictly.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Type, Union

import torch.nn as nn

from . import weights as W
from .factory import generate_model

__all__ = ["get_model", "get_model_builder", "get_model_weights", "get_weight", "list_models"]

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}
_BUILDER_WEIGHTS: Dict[str, Optional[Type[W.WeightsEnum]]] = {}
_WEIGHT_ENUMS = {cls.__name__: cls for cls in W.WeightsEnum.__subclasses__()}


def _build(name: str, model: str, depth: int, weights_enum: Optional[Type[W.WeightsEnum]], preset: Dict[str, Any],
           weights: Any, progress: bool, weights_path: Optional[Union[str, os.PathLike]], kwargs: Dict[str, Any]):
    options = dict(preset)
    for key, value in kwargs.items():
        if key in preset and value != preset[key]:
            raise ValueError(f"{name} fixes {key}={preset[key]!r}; got {key}={value!r} (use generate_model instead)")
        options[key] = value
    selected = None
    if weights is not None:
        if weights_enum is None:
            raise ValueError(f"the authors published no weights for {name}")
        selected = weights_enum.verify(weights)
        for key, value in selected.model_kwargs.items():
            if key in ("model", "model_depth"):
                continue
            if key in options and options[key] != value:
                raise ValueError(f"{key}={options[key]!r} conflicts with {selected!r}, which needs {key}={value!r}")
            options[key] = value
    elif weights_path is not None:
        raise ValueError("weights_path is given but weights is None; pass the weights entry it belongs to")
    net = generate_model(model=model, model_depth=depth, **options)
    if selected is not None:
        net.load_state_dict(selected.get_state_dict(weights_path, progress=progress), strict=True)
    return net


def _register(name: str, model: str, depth: int, weights_enum: Optional[Type[W.WeightsEnum]] = None,
              summary: str = "", **preset: Any) -> Callable[..., nn.Module]:
    def builder(*, weights: Any = None, progress: bool = True,
                weights_path: Optional[Union[str, os.PathLike]] = None, **kwargs: Any) -> nn.Module:
        return _build(name, model, depth, weights_enum, preset, weights, progress, weights_path, kwargs)

    fixed = ", ".join(f"{k}={v!r}" for k, v in preset.items())
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (
        f"{summary or f'{model}-{depth}'}: ``generate_model(model={model!r}, model_depth={depth}"
        f"{', ' + fixed if fixed else ''}, **kwargs)``.\n\n"
        f"    weights: None or a member/name of ``{weights_enum.__name__ if weights_enum else 'None'}``; "
        "weights_path: the checkpoint file or its folder.\n"
        "    Input (N, C, T, H, W) clips, output logits (N, n_classes)."
    )
    _BUILDERS[name] = builder
    _BUILDER_WEIGHTS[name] = weights_enum
    return builder


r3d_10 = _register("r3d_10", "resnet", 10)
r3d_18 = _register("r3d_18", "resnet", 18, W.R3D_18_Weights)
r3d_34 = _register("r3d_34", "resnet", 34, W.R3D_34_Weights)
r3d_50 = _register("r3d_50", "resnet", 50, W.R3D_50_Weights)
r3d_101 = _register("r3d_101", "resnet", 101, W.R3D_101_Weights)
r3d_152 = _register("r3d_152", "resnet", 152, W.R3D_152_Weights)
r3d_200 = _register("r3d_200", "resnet", 200, W.R3D_200_Weights)
preact_r3d_10 = _register("preact_r3d_10", "preresnet", 10)
preact_r3d_18 = _register("preact_r3d_18", "preresnet", 18)
preact_r3d_34 = _register("preact_r3d_34", "preresnet", 34)
preact_r3d_50 = _register("preact_r3d_50", "preresnet", 50)
preact_r3d_101 = _register("preact_r3d_101", "preresnet", 101)
preact_r3d_152 = _register("preact_r3d_152", "preresnet", 152)
preact_r3d_200 = _register("preact_r3d_200", "preresnet", 200, W.PreActR3D_200_Weights)
wide_r3d_50 = _register("wide_r3d_50", "wideresnet", 50, W.WideR3D_50_Weights)
wide_r3d_101 = _register("wide_r3d_101", "wideresnet", 101)
wide_r3d_152 = _register("wide_r3d_152", "wideresnet", 152)
wide_r3d_200 = _register("wide_r3d_200", "wideresnet", 200)
resnext3d_50 = _register("resnext3d_50", "resnext", 50)
resnext3d_101 = _register("resnext3d_101", "resnext", 101, W.ResNeXt3D_101_Weights)
resnext3d_152 = _register("resnext3d_152", "resnext", 152)
resnext3d_200 = _register("resnext3d_200", "resnext", 200)
densenet3d_121 = _register("densenet3d_121", "densenet", 121, W.DenseNet3D_121_Weights)
densenet3d_169 = _register("densenet3d_169", "densenet", 169)
densenet3d_201 = _register("densenet3d_201", "densenet", 201, W.DenseNet3D_201_Weights)
densenet3d_264 = _register("densenet3d_264", "densenet", 264)
r2plus1d_10 = _register("r2plus1d_10", "resnet2p1d", 10)
r2plus1d_18 = _register("r2plus1d_18", "resnet2p1d", 18, W.R2Plus1D_18_Weights)
r2plus1d_34 = _register("r2plus1d_34", "resnet2p1d", 34, W.R2Plus1D_34_Weights)
r2plus1d_50 = _register("r2plus1d_50", "resnet2p1d", 50, W.R2Plus1D_50_Weights)
r2plus1d_101 = _register("r2plus1d_101", "resnet2p1d", 101)
r2plus1d_152 = _register("r2plus1d_152", "resnet2p1d", 152)
r2plus1d_200 = _register("r2plus1d_200", "resnet2p1d", 200)
torchvision_r3d_18 = _register(
    "torchvision_r3d_18", "resnet", 18, W.TorchvisionR3D_18_Weights,
    summary="torchvision's r3d_18 as the authors' ResNet-18 (3x7x7 stem, no max-pool, shortcut B); convert its "
            "state_dict with state_dict_from_torchvision",
    conv1_t_size=3, no_max_pool=True, resnet_shortcut="B",
)


def list_models() -> List[str]:
    """Names of every registered constructor, sorted."""
    return sorted(_BUILDERS)


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; list_models() gives {list_models()}")
    return _BUILDERS[name]


def get_model(name: str, **config: Any) -> nn.Module:
    """``get_model_builder(name)(**config)``, e.g. ``get_model("r3d_50", n_classes=101, backend="auto")``."""
    return get_model_builder(name)(**config)


def get_model_weights(name: Union[str, Callable[..., nn.Module]]) -> Optional[Type[W.WeightsEnum]]:
    """The weights enum of a constructor (name or function), None if the authors published none for it."""
    key = name if isinstance(name, str) else getattr(name, "__name__", None)
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; list_models() gives {list_models()}")
    return _BUILDER_WEIGHTS[key]


def get_weight(name: str) -> W.WeightsEnum:
    """A weights entry from its full name, e.g. ``"R3D_50_Weights.KINETICS700_200EP"``."""
    if not isinstance(name, str) or "." not in name:
        raise ValueError(f"expected 'EnumName.MEMBER', got {name!r}")
    enum_name, member = name.split(".", 1)
    if enum_name not in _WEIGHT_ENUMS:
        raise ValueError(f"unknown weights enum {enum_name!r}; known: {sorted(_WEIGHT_ENUMS)}")
    return _WEIGHT_ENUMS[enum_name].verify(member)
