"""Per-layer conv shapes, MAC counts and fusion coverage, measured by running the real models on the meta
device (no memory, no compute): the benchmarks and the docs read their shape lists from here.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops.params import Conv3dParams, resolve_padding
from .factory import generate_model
from .fusion import BackendMixin, get_backend, record_conv_units, set_backend

__all__ = ["conv_layer_shapes", "fusion_coverage", "model_complexity", "unique_conv_shapes"]

ModelArg = Union[str, nn.Module]
_SHAPE_KEYS = ("in_channels", "out_channels", "kernel", "stride", "padding", "dilation", "groups", "batch",
               "in_size", "out_size", "followed_by")


def _meta_model(model: ModelArg, model_depth: int, model_kwargs: Dict[str, Any]) -> nn.Module:
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise ValueError(f"model options {sorted(model_kwargs)} only apply when model is a name")
        return model
    if not isinstance(model, str):
        raise TypeError(f"model must be a model name or an nn.Module, got {type(model).__name__}")
    model_kwargs = dict(model_kwargs)
    model_kwargs.pop("backend", None)  # shapes do not depend on it; the meta device needs "torch"
    with torch.device("meta"):
        return generate_model(model, model_depth, **model_kwargs)


def _check_sizes(sample_duration: int, sample_size: int, batch: int) -> None:
    for name, value in (("sample_duration", sample_duration), ("sample_size", sample_size), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _input_channels(net: nn.Module) -> int:
    first = next((m for m in net.modules() if isinstance(m, nn.Conv3d)), None)
    if first is None:
        raise ValueError(f"{type(net).__name__} has no Conv3d")
    return first.in_channels


def _run_recorded(net: nn.Module, x_shape, linear_macs: Optional[List[int]] = None) -> List[Dict]:
    """Run ``net`` on a meta tensor with backend "torch" (restored afterwards); the recorded conv units."""
    has_units = any(isinstance(m, BackendMixin) for m in net.modules()) or isinstance(net, torch.fx.GraphModule)
    if not has_units:
        raise ValueError(f"{type(net).__name__} does not run its convs through conv_bn_act; pass a model of this "
                         "package or the result of video3d_fast.fuse(model)")
    previous = get_backend(net)
    if previous != "torch":
        if previous == "mixed":
            raise ValueError("model has mixed backends; set one with set_backend first")
        set_backend(net, "torch")
    hooks = []
    if linear_macs is not None:
        def count_linear(module, inputs, output):
            linear_macs.append(output.numel() * module.in_features)
        hooks = [m.register_forward_hook(count_linear) for m in net.modules() if isinstance(m, nn.Linear)]
    device = next(iter(net.parameters())).device
    was_training = net.training
    try:
        net.eval()
        x = torch.empty(x_shape, device=device)
        with torch.no_grad(), record_conv_units() as units:
            net(x)
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
        if previous != "torch":
            set_backend(net, previous)
    return units


def _followed_by(unit: Dict) -> str:
    parts = [p for p, present in (("bn", unit["bn"] is not None), ("add", unit["residual"]), ("relu", unit["relu"]))
             if present]
    return "_".join(parts) or "none"


def conv_layer_shapes(model: ModelArg = "resnet", model_depth: int = 50, sample_duration: int = 16,
                      sample_size: int = 112, batch: int = 8, **model_kwargs: Any) -> List[Dict[str, Any]]:
    """Every conv of a model as executed on a ``(batch, C, sample_duration, sample_size, sample_size)`` input.

    ``model`` is a name for :func:`generate_model` (with ``model_depth`` and ``model_kwargs``, e.g.
    ``resnet_shortcut``, ``conv1_t_size``, ``legacy_stem``), or a model of this package / one returned by
    ``fuse``. Cheap: the model is built and run on the meta device (an nn.Module runs on its own device).

    Returns one dict per conv call, in execution order: ``name`` (module path), ``in_channels``,
    ``out_channels``, ``kernel`` (T, R, S), ``stride``, ``padding``, ``dilation`` (3-tuples), ``groups``,
    ``batch``, ``in_size`` / ``out_size`` (D, H, W), ``followed_by`` (what the fused unit absorbs: "bn_relu",
    "bn", "bn_add_relu", "add", "none", ...) and ``macs`` (multiply-accumulates; FLOPs = 2 x MACs).
    """
    _check_sizes(sample_duration, sample_size, batch)
    net = _meta_model(model, model_depth, model_kwargs)
    x_shape = (batch, _input_channels(net), sample_duration, sample_size, sample_size)
    return _describe_units(net, _run_recorded(net, x_shape))


def _describe_units(net: nn.Module, units: List[Dict]) -> List[Dict[str, Any]]:
    names = {id(m): n for n, m in net.named_modules()}
    layers = []
    for unit in units:
        conv: nn.Conv3d = unit["conv"]
        n, c, d, h, w = unit["input_shape"]
        kernel = tuple(conv.kernel_size)
        p = Conv3dParams(batch=n, in_channels=c, in_size=(d, h, w), out_channels=conv.out_channels,
                         kernel=kernel, stride=tuple(conv.stride),
                         padding=resolve_padding(conv.padding, kernel, tuple(conv.dilation), tuple(conv.stride)),
                         dilation=tuple(conv.dilation), groups=conv.groups)
        layers.append(dict(name=names.get(id(conv), "?"), in_channels=c, out_channels=p.out_channels, kernel=kernel,
                           stride=p.stride, padding=p.padding, dilation=p.dilation, groups=p.groups, batch=n,
                           in_size=p.in_size, out_size=p.out_size, followed_by=_followed_by(unit), macs=p.macs))
    return layers


def unique_conv_shapes(layers: Union[Sequence[Dict[str, Any]], ModelArg] = "resnet", **kwargs: Any) -> List[Dict]:
    """Distinct conv problems with how often each occurs, first occurrence first.

    ``layers``: the list from :func:`conv_layer_shapes`, or its arguments (``unique_conv_shapes("resnext",
    model_depth=101, batch=8)``). Each result has the shape keys of conv_layer_shapes (the same shape followed
    by different epilogues counts as different problems), plus ``count``, ``names`` and ``macs`` (of one).
    """
    if isinstance(layers, (str, nn.Module)):
        layers = conv_layer_shapes(layers, **kwargs)
    elif kwargs:
        raise ValueError("extra arguments only apply when layers is a model name or module")
    groups: "OrderedDict[tuple, Dict[str, Any]]" = OrderedDict()
    for layer in layers:
        key = tuple(layer[k] for k in _SHAPE_KEYS)
        if key not in groups:
            groups[key] = dict({k: layer[k] for k in _SHAPE_KEYS}, count=0, names=[], macs=layer["macs"])
        groups[key]["count"] += 1
        groups[key]["names"].append(layer["name"])
    return list(groups.values())


def model_complexity(model: ModelArg = "resnet", model_depth: int = 50, sample_duration: int = 16,
                     sample_size: int = 112, **model_kwargs: Any) -> Dict[str, Any]:
    """Parameters and compute of one clip (batch 1): ``params``, ``state_dict_entries``, ``convs``,
    ``conv_macs``, ``fc_macs``, ``macs`` (convs + fully connected layers, the convention of the paper's
    repo and of torchvision's ``_ops``; BN, ReLU, pooling and adds are not counted) and ``flops`` = 2 x macs."""
    _check_sizes(sample_duration, sample_size, 1)
    net = _meta_model(model, model_depth, model_kwargs)
    linear_macs: List[int] = []
    x_shape = (1, _input_channels(net), sample_duration, sample_size, sample_size)
    units = _run_recorded(net, x_shape, linear_macs)
    conv_macs = sum(layer["macs"] for layer in _describe_units(net, units))
    macs = conv_macs + sum(linear_macs)
    return dict(params=sum(p.numel() for p in net.parameters()), state_dict_entries=len(net.state_dict()),
                convs=len(units), conv_macs=conv_macs, fc_macs=sum(linear_macs), macs=macs, flops=2 * macs)


def fusion_coverage(model: ModelArg = "resnet", model_depth: int = 50, **model_kwargs: Any) -> Dict[str, int]:
    """What the fused backends run as one op, counted on a 16x112x112 clip.

    ``convs``; ``conv_bn`` (conv + BN units: training form / folded inference form), of which
    ``with_residual`` and ``with_relu``; ``conv_only`` (no BN: plain conv, or conv + residual/ReLU epilogue);
    ``batchnorms`` in the model and ``batchnorms_unfused`` (run as separate modules, e.g. pre-activation BNs).
    """
    net = _meta_model(model, model_depth, model_kwargs)
    units = _run_recorded(net, (1, _input_channels(net), 16, 112, 112))
    fused_bns = {id(u["bn"]) for u in units if u["bn"] is not None}
    all_bns = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    return dict(
        convs=len(units),
        conv_bn=sum(u["bn"] is not None for u in units),
        with_residual=sum(u["bn"] is not None and u["residual"] for u in units),
        with_relu=sum(u["bn"] is not None and u["relu"] for u in units),
        conv_only=sum(u["bn"] is None for u in units),
        batchnorms=len(all_bns),
        batchnorms_unfused=sum(id(m) not in fused_bns for m in all_bns),
    )
