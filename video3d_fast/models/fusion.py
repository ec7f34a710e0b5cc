"""Fused execution of Conv3d -> BatchNorm -> (+ residual) -> ReLU units, and the backend switch.

A *unit* is one convolution with what directly follows it: an optional BatchNorm, an optional residual
add (a tensor of the conv output's shape) and an optional ReLU. :func:`conv_bn_act` runs one unit:

* ``backend="torch"``: the plain modules, in the authors' order (``conv(x)``, ``bn(.)``, ``+= residual``,
  ``relu(.)``), so forward hooks, autograd and numerics are those of the original code;
* any other backend ("auto", "cpu", "cuda", "triton"): one op of :mod:`video3d_fast.ops`:

  - BN in training mode (or without running statistics) -> ``ops.conv3d_batchnorm_act`` with the BN
    module's own weight, bias, running buffers, ``num_batches_tracked``, momentum and eps, which it
    updates in place exactly like ``nn.BatchNorm3d``;
  - BN in eval mode -> ``ops.conv3d_affine_act`` with ``ops.fold_batchnorm(bn)`` (recomputed per call
    from the live parameters, so the state_dict and fine-tuning of BN affine parameters are unchanged);
  - no BN -> ``ops.conv3d`` (with the conv bias), or ``ops.conv3d_affine_act`` with scale 1 when a
    residual or a ReLU follows.

Two ways lead models to :func:`conv_bn_act`:

1. The models of this package (``video3d_fast.models``) call it for every convolution. Their modules
   derive from :class:`BackendMixin` and carry a ``backend`` attribute; :func:`set_backend` switches
   every such module of a model at once.
2. :func:`fuse` converts other modules (torchvision's video ResNets, the authors' own classes, your
   models) by **graph rewriting with torch.fx**: it traces the module, finds chains
   ``Conv3d -> [BatchNorm] -> [add(residual)] -> [ReLU]`` whose intermediate results have no other use,
   and replaces each chain with one call of :func:`conv_bn_act` that receives the original conv and BN
   modules (as ``get_attr`` nodes). No parameter or buffer is copied, created or renamed, so the
   state_dict is identical to the original's. Code that torch.fx cannot trace (data-dependent Python
   control flow, ``torch.zeros`` with traced sizes as in the authors' shortcut A) is handled per child
   module: the untraceable module keeps its own forward and its children are fused one by one.

What does not match stays as it was, e.g. pre-activation ``BN -> ReLU -> conv`` (the BN has no conv in
front of it), BatchNorm after something other than a Conv3d, SyncBatchNorm, convs with a bias followed by
a BatchNorm (the bias would shift the running mean), and non-``zeros`` padding modes.
"""
from __future__ import annotations

import contextlib
import operator
from typing import Callable, Dict, Iterator, List, Optional, Union

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .. import ops

__all__ = [
    "BACKEND_NAMES",
    "BackendMixin",
    "FusableSequential",
    "conv_bn_act",
    "fuse",
    "get_backend",
    "record_conv_units",
    "set_backend",
]

BACKEND_NAMES = ("auto",) + tuple(ops.BACKENDS)
ReluArg = Union[None, bool, nn.Module]

# Observers of conv units (conv_layer_shapes, fusion coverage); empty in normal use.
_unit_observers: List[Callable[[Dict], None]] = []


def check_backend_name(backend: str) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    return backend


@contextlib.contextmanager
def record_conv_units() -> Iterator[List[Dict]]:
    """Collect one dict per :func:`conv_bn_act` call made inside the ``with`` block.

    Each dict has ``conv`` and ``bn`` (the modules; ``bn`` may be None), ``residual`` and ``relu`` (bools)
    and ``input_shape``. Works on the meta device, which makes it a cheap shape tracer.
    """
    units: List[Dict] = []
    _unit_observers.append(units.append)
    try:
        yield units
    finally:
        _unit_observers.remove(units.append)


def conv_bn_act(
    x: torch.Tensor,
    conv: nn.Conv3d,
    bn: Optional[_BatchNorm] = None,
    residual: Optional[torch.Tensor] = None,
    relu: ReluArg = None,
    backend: str = "torch",
) -> torch.Tensor:
    """``relu(bn(conv(x)) + residual)`` with each part optional, fused unless ``backend == "torch"``.

    Args:
        x: (N, C, D, H, W) input of ``conv``, any float dtype the ops accept, NCDHW or channels_last_3d.
        conv: an ``nn.Conv3d`` with ``padding_mode="zeros"`` (bias allowed only without ``bn``).
        bn: a BatchNorm over ``conv.out_channels`` or None. Training mode (and eval without running
            statistics) uses batch statistics and updates the running buffers in place like the module.
        residual: None or a tensor of the conv output's shape and dtype, added before the activation.
        relu: None/False for no activation; True or an ``nn.ReLU`` module for a ReLU (the unfused path
            calls the module, so its hooks and ``inplace`` behave as in the original model).
        backend: "torch" runs the modules; "auto", "cpu", "cuda", "triton" run ``video3d_fast.ops``.
    Returns:
        (N, K, Do, Ho, Wo), same dtype (and memory format, for the fused ops) as ``x``.
    """
    has_relu = relu is not None and relu is not False
    if _unit_observers:
        info = dict(conv=conv, bn=bn, residual=residual is not None, relu=has_relu, input_shape=tuple(x.shape))
        for observe in _unit_observers:
            observe(info)
    if backend == "torch":
        out = conv(x)
        if bn is not None:
            out = bn(out)
        if residual is not None:
            out += residual
        if isinstance(relu, nn.Module):
            out = relu(out)
        elif relu:
            out = torch.relu(out)
        return out
    return _fused_unit(x, conv, bn, residual, has_relu, backend)


def _fused_unit(
    x: torch.Tensor, conv: nn.Conv3d, bn: Optional[_BatchNorm], residual: Optional[torch.Tensor], relu: bool,
    backend: str,
) -> torch.Tensor:
    if conv.padding_mode != "zeros":
        raise ValueError(f"fused units need padding_mode='zeros', got {conv.padding_mode!r}")
    activation = "relu" if relu else "none"
    geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    weight = conv.weight
    if bn is None:
        if residual is None and not relu:
            return ops.conv3d(x, weight, conv.bias, **geometry, backend=backend)
        scale = torch.ones(conv.out_channels, dtype=weight.dtype, device=weight.device)
        shift = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        return ops.conv3d_affine_act(x, weight, scale, shift, residual, **geometry, activation=activation,
                                     backend=backend)
    if conv.bias is not None:
        raise ValueError("a conv with a bias followed by a BatchNorm is not fused (the bias would shift the "
                         "running mean); use bias=False as the models of the paper do")
    uses_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    if uses_batch_stats:
        # Same buffer rules as nn.BatchNorm: running stats are updated only when training and tracking.
        tracks = not bn.training or bn.track_running_stats
        return ops.conv3d_batchnorm_act(
            x, weight, bn.weight, bn.bias,
            bn.running_mean if tracks else None,
            bn.running_var if tracks else None,
            bn.num_batches_tracked if (bn.training and bn.track_running_stats) else None,
            residual, **geometry, momentum=bn.momentum, eps=bn.eps, activation=activation, backend=backend,
        )
    scale, shift = ops.fold_batchnorm(bn)
    return ops.conv3d_affine_act(x, weight, scale, shift, residual, **geometry, activation=activation,
                                 backend=backend)


class BackendMixin:
    """Mixin of every module of this package that runs conv units through :func:`conv_bn_act`.

    ``backend`` ("torch" by default) selects the implementation; change it for a whole model with
    :func:`set_backend` (or ``generate_model(..., backend=...)``). It is not part of the state_dict.
    """

    backend: str = "torch"

    def conv_unit(self, x, conv, bn=None, residual=None, relu: ReluArg = None) -> torch.Tensor:
        return conv_bn_act(x, conv, bn, residual, relu, self.backend)


class FusableSequential(BackendMixin, nn.Sequential):
    """``nn.Sequential`` that runs each ``Conv3d [-> BatchNorm] [-> ReLU]`` run of children as one unit.

    With ``backend="torch"`` this calls the children one after the other, exactly as ``nn.Sequential``.
    Used where the authors' layout is a Sequential whose children (and state_dict keys) must stay as they
    are: DenseNet's ``features``, dense layers and transitions, and the type-B shortcut ``(conv, bn)``.
    """

    def forward(self, x):
        children = list(self._modules.values())
        i = 0
        while i < len(children):
            module = children[i]
            if _is_plain_conv3d(module):
                bn = relu = None
                j = i + 1
                if j < len(children) and _is_plain_batchnorm(children[j]):
                    bn = children[j]
                    j += 1
                if j < len(children) and _is_relu_module(children[j]):
                    relu = children[j]
                    j += 1
                if bn is not None and module.bias is not None:
                    x = module(x)  # see _fused_unit: conv bias + BN is left unfused
                    j = i + 1
                else:
                    x = conv_bn_act(x, module, bn, None, relu, self.backend)
                i = j
            else:
                x = module(x)
                i += 1
        return x


# ------------------------------------------------------------------------------------------------
# backend switch
# ------------------------------------------------------------------------------------------------
def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every fusable unit of ``model`` to ``backend`` ("auto", "torch", "cpu", "cuda", "triton").

    Applies to the modules of this package and to graphs produced by :func:`fuse`. The state_dict does not
    change. Returns ``model``. Raises ValueError if ``model`` has nothing to switch (call :func:`fuse`
    first for models from elsewhere).
    """
    check_backend_name(backend)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found = False
    for module in model.modules():
        if isinstance(module, BackendMixin):
            module.backend = backend
            found = True
        elif isinstance(module, fx.GraphModule):
            changed = False
            for node in module.graph.nodes:
                if node.op == "call_function" and node.target is _fx_unit:
                    node.update_kwarg("backend", backend)
                    changed = True
            if changed:
                module.recompile()
                found = True
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no fusable units to switch; call video3d_fast.fuse(model) first"
        )
    return model


def get_backend(model: nn.Module) -> str:
    """The backend of ``model``'s fusable units ("mixed" if they differ); ValueError if it has none."""
    names = set()
    for module in model.modules():
        if isinstance(module, BackendMixin):
            names.add(module.backend)
        elif isinstance(module, fx.GraphModule):
            names.update(n.kwargs["backend"] for n in module.graph.nodes
                         if n.op == "call_function" and n.target is _fx_unit)
    if not names:
        raise ValueError(f"{type(model).__name__} has no fusable units")
    return names.pop() if len(names) == 1 else "mixed"


# ------------------------------------------------------------------------------------------------
# fuse(): torch.fx rewriting of foreign modules
# ------------------------------------------------------------------------------------------------
def _is_plain_conv3d(m) -> bool:
    return isinstance(m, nn.Conv3d) and type(m).forward is nn.Conv3d.forward and m.padding_mode == "zeros"


def _is_plain_batchnorm(m) -> bool:
    # SyncBatchNorm and other subclasses overriding forward are excluded on purpose.
    return isinstance(m, _BatchNorm) and type(m).forward is _BatchNorm.forward


def _is_relu_module(m) -> bool:
    return isinstance(m, nn.ReLU) and type(m).forward is nn.ReLU.forward


_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu, F.relu_)


def _residual_fits(x: torch.Tensor, conv: nn.Conv3d, residual: torch.Tensor) -> bool:
    expected = ops.make_params(x, conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups).out_shape
    return tuple(residual.shape) == expected and residual.dtype == x.dtype


def _fx_unit(x, conv, bn=None, residual=None, relu=False, backend="auto"):
    """Target of the graph nodes :func:`fuse` creates. The traced code added out-of-place (and may have
    broadcast), so with backend "torch", or a residual not of the output's shape and dtype, the add
    stays outside the unit."""
    if residual is not None and (backend == "torch" or not _residual_fits(x, conv, residual)):
        out = conv_bn_act(x, conv, bn, None, None, backend) + residual
        return torch.relu(out) if relu else out
    return conv_bn_act(x, conv, bn, residual, relu, backend)


class _Tracer(fx.Tracer):
    """Keeps convs, BNs and ReLUs as leaves even when subclassed outside torch.nn (torchvision's
    Conv3DSimple), and modules of this package (already fusable) too."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (BackendMixin, nn.Conv3d, _BatchNorm, nn.ReLU)) or super().is_leaf_module(m, qualname)


def _sole_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _only_arg_is(node: fx.Node, value: fx.Node) -> bool:
    return len(node.args) >= 1 and node.args[0] is value and not any(
        isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())
    )


def _residual_of_add(node: fx.Node, value: fx.Node) -> Optional[fx.Node]:
    """The other operand if ``node`` is ``value + other`` (other a graph value, no alpha), else None."""
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_") and node.args and node.args[0] is value
    )
    if not is_add or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if a is value and isinstance(b, fx.Node) and b is not value:
        return b
    if b is value and isinstance(a, fx.Node) and a is not value:
        return a
    return None


def _is_relu_node(node: fx.Node, value: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return _is_relu_module(modules.get(node.target)) and node.args == (value,) and not node.kwargs
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return _only_arg_is(node, value)
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return node.args == (value,) and not node.kwargs
    return False


def _rewrite_graph(gm: fx.GraphModule, backend: str) -> int:
    """Replace every matching chain in ``gm.graph``; returns the number of units created."""
    modules = dict(gm.named_modules())
    graph = gm.graph
    erased = set()
    count = 0
    for node in list(graph.nodes):
        if node in erased or node.op != "call_module" or not _is_plain_conv3d(modules.get(node.target)):
            continue
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            continue
        conv = modules[node.target]
        chain = [node]
        bn_node = residual = None
        relu = False
        nxt = _sole_user(node)
        if (nxt is not None and nxt.op == "call_module" and _is_plain_batchnorm(modules.get(nxt.target))
                and nxt.args == (node,) and not nxt.kwargs and conv.bias is None):
            bn_node = nxt
            chain.append(nxt)
            nxt = _sole_user(nxt)
        if nxt is not None:
            other = _residual_of_add(nxt, chain[-1])
            if other is not None:
                residual = other
                chain.append(nxt)
                nxt = _sole_user(nxt)
        if nxt is not None and _is_relu_node(nxt, chain[-1], modules):
            relu = True
            chain.append(nxt)
        last = chain[-1]
        with graph.inserting_before(last.next):
            conv_ref = graph.get_attr(node.target)
            bn_ref = graph.get_attr(bn_node.target) if bn_node is not None else None
            unit = graph.call_function(
                _fx_unit, args=(node.args[0], conv_ref),
                kwargs=dict(bn=bn_ref, residual=residual, relu=relu, backend=backend),
            )
        last.replace_all_uses_with(unit)
        for old in reversed(chain):
            graph.erase_node(old)
            erased.add(old)
        count += 1
    if count:
        graph.lint()
        gm.recompile()
    return count


def _fuse_module(module: nn.Module, backend: str) -> nn.Module:
    if isinstance(module, BackendMixin):
        set_backend(module, backend)
        return module
    tracer = _Tracer()
    try:
        graph = tracer.trace(module)
    except Exception:  # untraceable forward: fuse the children instead
        graph = None
    if graph is not None:
        gm = fx.GraphModule(tracer.root, graph, type(module).__name__)
        for sub in gm.modules():
            if isinstance(sub, BackendMixin):
                sub.backend = backend
        if _rewrite_graph(gm, backend) or any(isinstance(s, BackendMixin) for s in gm.modules()):
            return gm
        return module
    for name, child in list(module.named_children()):
        fused = _fuse_module(child, backend)
        if fused is not child:
            setattr(module, name, fused)
    return module


def fuse(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Run ``model``'s Conv3d -> BatchNorm -> (+ residual) -> ReLU units through ``video3d_fast.ops``.

    * Models of this package: sets their backend (same object returned).
    * Any other ``nn.Module`` (torchvision's ``r3d_18``, the authors' classes, ...): traced with torch.fx
      and rewritten as described in this module's docstring; returns a ``torch.fx.GraphModule`` (class name
      kept) that **shares** the parameters and buffers of ``model`` and has the same state_dict keys. When
      the whole model cannot be traced, its traceable children are replaced inside ``model`` (which is then
      returned). Deep-copy the model first if you need the original untouched.

    ``backend``: "auto" (best available for the input's device at call time), "cpu", "cuda", "triton", or
    "torch" (the matched units run unfused; useful for checking). Switch later with :func:`set_backend`.
    Training and eval mode both work after fusion (``model.train()``/``model.eval()`` as usual).
    """
    check_backend_name(backend)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return _fuse_module(model, backend)
