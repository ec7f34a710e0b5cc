"""Building the model of a run: architecture, pretrained weights with a new head, fine-tuning selection.

``--ft_begin_module m`` follows the authors' rule for *which* parameters train: walk ``named_parameters()``
in registration order, take each parameter's module name (first dotted component after removing
``module.``, ``_orig_mod.`` and DenseNet's ``features.``), and train everything from the first parameter of
module ``m`` on. It fixes what their code left undone (their PR #235 and the BN issue):

* the parameters before ``m`` get ``requires_grad=False`` (theirs were only left out of the optimizer and
  still computed gradients);
* every BatchNorm whose parameters are all frozen is kept in eval mode during training
  (:func:`train_mode`), so its running statistics stay those of the pretrained model (theirs kept
  updating, silently changing the frozen part).
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "build_model",
    "head_name",
    "module_order",
    "replace_head",
    "select_fine_tuning",
    "train_mode",
]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _module_name(param_name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while param_name.startswith(prefix):
            param_name = param_name[len(prefix):]
    if param_name.startswith("features."):
        param_name = param_name[len("features."):]
    return param_name.split(".", 1)[0]


def module_order(model: nn.Module) -> List[str]:
    """Top-level module names owning parameters, in registration order (valid ``--ft_begin_module`` values)."""
    names = []
    for name, _ in model.named_parameters():
        m = _module_name(name)
        if m not in names:
            names.append(m)
    return names


def head_name(model: nn.Module) -> str:
    """Name of the classification layer: ``classifier`` for DenseNet, ``fc`` otherwise."""
    model = _unwrap(model)
    if isinstance(getattr(model, "classifier", None), nn.Linear):
        return "classifier"
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc"
    raise ValueError(f"{type(model).__name__} has neither an 'fc' nor a 'classifier' nn.Linear head")


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def replace_head(model: nn.Module, n_classes: int) -> nn.Module:
    """Swap the head for a fresh ``nn.Linear(in_features, n_classes)`` (fine-tuning to new classes)."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    name = head_name(model)
    old = getattr(model, name)
    new = nn.Linear(old.in_features, n_classes).to(device=old.weight.device, dtype=old.weight.dtype)
    setattr(model, name, new)
    return model


def select_fine_tuning(model: nn.Module, ft_begin_module: str) -> Tuple[List[nn.Parameter], List[str]]:
    """Apply ``--ft_begin_module`` (see the module docstring): freeze the parameters before the module.

    Returns ``(trainable parameters, names of the frozen top-level modules)``. ``""`` trains everything.
    Raises ValueError naming the valid choices when the module does not exist.
    """
    params = list(model.named_parameters())
    if not ft_begin_module:
        return [p for _, p in params if p.requires_grad], []
    order = module_order(model)
    if ft_begin_module not in order:
        raise ValueError(f"--ft_begin_module {ft_begin_module!r} is not a module of this model; choose one of {order}")
    trainable, frozen, started = [], [], False
    for name, p in params:
        module = _module_name(name)
        started = started or module == ft_begin_module
        if started:
            trainable.append(p)
        else:
            p.requires_grad_(False)
            if module not in frozen:
                frozen.append(module)
    return trainable, frozen


def frozen_batchnorms(model: nn.Module) -> List[nn.Module]:
    """BatchNorm modules whose affine parameters are all frozen (their statistics must stay fixed)."""
    out = []
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            ps = [p for p in (m.weight, m.bias) if p is not None]
            if ps and not any(p.requires_grad for p in ps):
                out.append(m)
    return out


def train_mode(model: nn.Module, frozen_bn: Optional[List[nn.Module]] = None) -> None:
    """``model.train()`` with the frozen BatchNorms back in eval mode (statistics fixed)."""
    model.train()
    for m in frozen_bn or ():
        m.eval()


def build_model(cfg, device: torch.device, dist_enabled: bool = False) -> nn.Module:
    """The model of a run: ``generate_model`` with the run's options and backend, then
    ``--pretrain_path`` (strict load of a model with ``--n_pretrain_classes``, then a new head of
    ``--n_classes``), SyncBatchNorm if asked under DDP, device and memory format.
    """
    from .. import models  # imported here: the data tools do not need the model zoo
    from .checkpoint import load_weights

    n_out = cfg.n_pretrain_classes if cfg.pretrain_path else cfg.n_classes
    model = models.generate_model(
        model=cfg.model,
        model_depth=cfg.model_depth,
        n_classes=n_out,
        n_input_channels=cfg.n_input_channels,
        resnet_shortcut=cfg.resnet_shortcut,
        conv1_t_size=cfg.conv1_t_size,
        conv1_t_stride=cfg.conv1_t_stride,
        no_max_pool=cfg.no_max_pool,
        resnet_widen_factor=cfg.resnet_widen_factor,
        wide_resnet_k=cfg.wide_resnet_k,
        resnext_cardinality=cfg.resnext_cardinality,
        backend=cfg.backend,
    )
    if cfg.pretrain_path:
        load_weights(model, cfg.resolved_path("pretrain_path"), cfg.arch, allow_unsafe_pickle=cfg.allow_unsafe_pickle,
                     what="--pretrain_path")
        replace_head(model, cfg.n_classes)  # always a fresh head, as the authors (even for equal class counts)
    if cfg.batchnorm_sync:
        if dist_enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            warnings.warn("--batchnorm_sync has no effect without DDP (torchrun)", stacklevel=2)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model
