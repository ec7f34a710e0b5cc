"""torch.library registration of the ops: custom ops in the ``video3d_fast`` namespace, their fake
(meta) implementations and their autograd formulas.

Each forward and each backward is its own functional custom op carrying a ``backend`` string, so eager
autograd, ``torch.compile(fullgraph=True)`` (which traces forward and backward through them) and
``torch.library.opcheck`` all see real ops. The op bodies hand over to the named backend
(``backends/``). Gradients nobody asked for travel as empty tensors, since op outputs cannot be None.

Running BatchNorm statistics: torch.library forbids autograd on ops that mutate their inputs, so the
custom op returns (mean, var) and :func:`conv3d_batchnorm_act` updates the running buffers after it; the
eager path lets a backend update them inside its kernels instead (``Backend.fuses_running_stats``).

Eager fast path: a call through a Python custom op costs ~0.1 ms of host time (several Python <-> C++
dispatcher crossings), more than many GPU layers take. Outside torch.compile, :func:`conv3d`,
:func:`conv3d_affine_act` and :func:`conv3d_batchnorm_act` therefore run each op's *same* forward and
backward implementations through an ``autograd.Function`` twin with the *same* setup/backward code;
under torch.compile (and with ``VIDEO3D_FAST_EAGER_CUSTOM_OPS=1``) they call the custom ops.
"""
from __future__ import annotations

import os
import weakref
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .backends import get_backend
from .backends.base import RunningStats, update_running_stats
from .params import Conv3dParams, memory_format_of, params_from_lists
from .reference import opmath_dtype

NAMESPACE = "video3d_fast"


def _params(x: Tensor, w: Tensor, stride, padding, dilation, groups) -> Conv3dParams:
    return params_from_lists(x.shape, w.shape, stride, padding, dilation, groups)


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    return _empty(like) if t is None else t


def _unaliased(outputs, inputs) -> tuple:
    """Custom ops may not return (views of) their inputs or outputs sharing memory with each other: a
    backend may legitimately hand back e.g. the incoming gradient as the residual's gradient, or batch
    mean and variance as two rows of one buffer, so copy such outputs."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, Tensor) and t.numel()}
    result = []
    for o in outputs:
        if o.numel():
            storage = o.untyped_storage().data_ptr()
            if storage in seen:
                o = o.clone()
            seen.update((storage, o.untyped_storage().data_ptr()))
        result.append(o)
    return tuple(result)


def _backward_call(ctx, op, grads_fn, *args):
    """The backward custom op (empty tensors for gradients not asked for), or for an eager twin the
    backend's gradients directly (None there; aliasing an input is fine outside a custom op)."""
    return grads_fn(*args) if getattr(ctx, "eager", False) else op(*args)


def _grads_or_none(ctx, grads, mask) -> tuple:
    if getattr(ctx, "eager", False):
        return tuple(grads)
    return tuple(g if wanted else None for g, wanted in zip(grads, mask))


def _relu_mask_source(out: Tensor, relu: bool) -> Tensor:
    """What backward keeps of the output: the output itself for the ReLU mask, nothing without a ReLU (a
    downsample unit's output is the residual, which no later op keeps: keeping it cost an activation)."""
    return out if relu else _empty(out)


def _fake_out(x: Tensor, p: Conv3dParams, dtype=None) -> Tensor:
    return torch.empty(
        p.out_shape, dtype=dtype or x.dtype, device=x.device, memory_format=memory_format_of(x)
    )


def _fake_grad_like(t: Tensor, wanted: bool) -> Tensor:
    if not wanted:
        return _empty(t)
    return torch.empty_like(t, memory_format=memory_format_of(t))


# ------------------------------------------------------------------------------------------------
# conv3d
# ------------------------------------------------------------------------------------------------
def _conv3d_impl(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    backend: str,
) -> Tensor:
    p = _params(input, weight, stride, padding, dilation, groups)
    return _unaliased((get_backend(backend).conv3d_forward(input, weight, bias, p),), (input, weight, bias))[0]


conv3d_op = torch.library.custom_op(f"{NAMESPACE}::conv3d", _conv3d_impl, mutates_args=())


@conv3d_op.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, backend):
    return _fake_out(input, _params(input, weight, stride, padding, dilation, groups))


def _conv3d_grads(grad_output, input, weight, stride, padding, dilation, groups, output_mask, backend):
    """The backend's (grad_input, grad_weight, grad_bias), None where not asked for."""
    p = _params(input, weight, stride, padding, dilation, groups)
    return get_backend(backend).conv3d_backward(grad_output.contiguous(
        memory_format=memory_format_of(input)), input, weight, p, output_mask)


def _conv3d_backward_impl(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    output_mask: List[bool],
    backend: str,
) -> Tuple[Tensor, Tensor, Tensor]:
    gx, gw, gb = _conv3d_grads(grad_output, input, weight, stride, padding, dilation, groups, output_mask, backend)
    return _unaliased((_or_empty(gx, input), _or_empty(gw, weight), _or_empty(gb, weight)),
                      (grad_output, input, weight))


conv3d_backward_op = torch.library.custom_op(f"{NAMESPACE}::conv3d_backward", _conv3d_backward_impl, mutates_args=())


@conv3d_backward_op.register_fake
def _(grad_output, input, weight, stride, padding, dilation, groups, output_mask, backend):
    gb = weight.new_empty(weight.shape[0]) if output_mask[2] else _empty(weight)
    return _fake_grad_like(input, output_mask[0]), _fake_grad_like(weight, output_mask[1]), gb


def _conv3d_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, backend = inputs
    ctx.save_for_backward(input, weight)
    ctx.conv = (stride, padding, dilation, groups, backend)


def _conv3d_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups, backend = ctx.conv
    mask = [bool(m) for m in ctx.needs_input_grad[:3]]
    grads = _backward_call(ctx, conv3d_backward_op, _conv3d_grads,
                           grad, input, weight, stride, padding, dilation, groups, mask, backend)
    return _grads_or_none(ctx, grads, mask) + (None,) * 5


conv3d_op.register_autograd(_conv3d_backward, setup_context=_conv3d_setup)


# ------------------------------------------------------------------------------------------------
# inference form: act(conv3d(x, w) * scale + shift [+ residual])
# ------------------------------------------------------------------------------------------------
def _affine_impl(
    input: Tensor,
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Optional[Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    relu: bool,
    save_conv_out: bool,
    backend: str,
) -> Tuple[Tensor, Tensor]:
    """Returns (out, conv_out); conv_out is empty unless save_conv_out (needed for d/d scale)."""
    p = _params(input, weight, stride, padding, dilation, groups)
    out, conv_out = get_backend(backend).affine_act_forward(
        input, weight, scale, shift, residual, p, relu, save_conv_out
    )
    return _unaliased((out, _or_empty(conv_out if save_conv_out else None, input)),
                      (input, weight, scale, shift, residual))


conv3d_affine_act_op = torch.library.custom_op(f"{NAMESPACE}::conv3d_affine_act", _affine_impl, mutates_args=())


@conv3d_affine_act_op.register_fake
def _(input, weight, scale, shift, residual, stride, padding, dilation, groups, relu, save_conv_out, backend):
    p = _params(input, weight, stride, padding, dilation, groups)
    return _fake_out(input, p), (_fake_out(input, p) if save_conv_out else _empty(input))


def _affine_grads(grad_output, out, conv_out, input, weight, scale, stride, padding, dilation, groups, relu,
                  output_mask, backend):
    """The backend's gradients of (input, weight, scale, shift, residual), None where not asked for."""
    out = out if relu else grad_output  # not kept without a ReLU (see _relu_mask_source); never read then
    p = _params(input, weight, stride, padding, dilation, groups)
    return get_backend(backend).affine_act_backward(
        grad_output.contiguous(memory_format=memory_format_of(input)), out,
        conv_out if conv_out.numel() else None, input, weight, scale, p, relu, output_mask,
    )


def _affine_backward_impl(
    grad_output: Tensor,
    out: Tensor,
    conv_out: Tensor,
    input: Tensor,
    weight: Tensor,
    scale: Tensor,
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    relu: bool,
    output_mask: List[bool],
    backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (input, weight, scale, shift, residual)."""
    grads = _affine_grads(grad_output, out, conv_out, input, weight, scale, stride, padding, dilation, groups,
                          relu, output_mask, backend)
    likes = (input, weight, scale, scale, input)
    return _unaliased((_or_empty(g, like) for g, like in zip(grads, likes)),
                      (grad_output, out, conv_out, input, weight, scale))


conv3d_affine_act_backward_op = torch.library.custom_op(f"{NAMESPACE}::conv3d_affine_act_backward", _affine_backward_impl, mutates_args=())


@conv3d_affine_act_backward_op.register_fake
def _(grad_output, out, conv_out, input, weight, scale, stride, padding, dilation, groups, relu,
      output_mask, backend):
    return (
        _fake_grad_like(input, output_mask[0]),
        _fake_grad_like(weight, output_mask[1]),
        _fake_grad_like(scale, output_mask[2]),
        _fake_grad_like(scale, output_mask[3]),
        torch.empty_like(grad_output, memory_format=memory_format_of(input)) if output_mask[4] else _empty(input),
    )


def _affine_setup(ctx, inputs, output):
    (input, weight, scale, shift, residual, stride, padding, dilation, groups, relu, save_conv_out,
     backend) = inputs
    out, conv_out = output
    ctx.mark_non_differentiable(conv_out)
    ctx.save_for_backward(_relu_mask_source(out, relu), conv_out, input, weight, scale)
    ctx.conv = (stride, padding, dilation, groups, relu, backend)


def _affine_backward(ctx, grad_out, _grad_conv_out):
    out, conv_out, input, weight, scale = ctx.saved_tensors
    stride, padding, dilation, groups, relu, backend = ctx.conv
    mask = [bool(m) for m in ctx.needs_input_grad[:5]]
    grads = _backward_call(ctx, conv3d_affine_act_backward_op, _affine_grads,
                           grad_out, out, conv_out, input, weight, scale, stride, padding, dilation, groups,
                           relu, mask, backend)
    return _grads_or_none(ctx, grads, mask) + (None,) * 7


conv3d_affine_act_op.register_autograd(_affine_backward, setup_context=_affine_setup)


# ------------------------------------------------------------------------------------------------
# training form: act(batchnorm_train(conv3d(x, w)) [+ residual])
# ------------------------------------------------------------------------------------------------
def _bn_impl(
    input: Tensor,
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    residual: Optional[Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    eps: float,
    relu: bool,
    save_conv_out: bool,
    backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (out, conv_out, batch mean, biased batch var); mean/var in fp32 (fp64 for fp64). conv_out is
    empty unless save_conv_out (then backward computes the conv again from input and weight)."""
    p = _params(input, weight, stride, padding, dilation, groups)
    out, conv_out, mean, var = get_backend(backend).batchnorm_act_forward(
        input, weight, bn_weight, bn_bias, residual, p, eps, relu)
    return _unaliased((out, conv_out if save_conv_out else _empty(input), mean, var),
                      (input, weight, bn_weight, bn_bias, residual))


def _bn_eager_forward(input, weight, bn_weight, bn_bias, residual, stride, padding, dilation, groups, eps, relu,
                      save_conv_out, backend, running: Optional[RunningStats]):
    """_bn_impl plus the running-statistics update, for eager calls, and the backend's output rebuilder
    (see _OutputRecipe) or None. A backend that can updates the running statistics inside its kernels (the
    triton finalize step), which saves ~7 small torch ops of host time per layer."""
    p = _params(input, weight, stride, padding, dilation, groups)
    impl = get_backend(backend)
    if running is not None and impl.fuses_running_stats(input, running):
        out, conv_out, mean, var = impl.batchnorm_act_forward(
            input, weight, bn_weight, bn_bias, residual, p, eps, relu, running=running)
    else:
        out, conv_out, mean, var = impl.batchnorm_act_forward(
            input, weight, bn_weight, bn_bias, residual, p, eps, relu)
        if running is not None:
            update_running_stats(running, mean, var, p.gemm_m)
    rebuild = None
    if REBUILD_OUTPUTS and residual is None and save_conv_out:
        rebuild = impl.batchnorm_act_rebuilder(input, mean, relu)
    return (out, (conv_out if save_conv_out else _empty(input)), mean, var), rebuild


def _bn_eager_impl(*args):
    """The eager implementation without autograd (no_grad calls)."""
    return _bn_eager_forward(*args)[0]


# Outputs rebuilt instead of kept: VIDEO3D_FAST_REBUILD_BN_OUTPUTS=0 turns it off (read at import).
REBUILD_OUTPUTS = os.environ.get("VIDEO3D_FAST_REBUILD_BN_OUTPUTS", "1") != "0"


class _OutputRecipe:
    """How to rebuild a training-form output ``y = act(BN(c))`` (no residual) bit-exactly from the conv
    output ``c``, which the op keeps for its BN backward anyway, so that nobody keeps ``y`` itself.

    The producing op keeps only a weak reference to ``y`` (its ReLU mask) and this recipe, registered for
    ``y`` in ``_RECIPES``; the next training-form op that receives ``y`` unchanged (same tensor, same
    version) keeps the recipe instead of ``y`` as its saved input. Inside a bottleneck this drops the
    outputs of the first two units from the memory held for backward (~17-25 % of a ResNet/ResNeXt's
    activation memory) for one elementwise pass per such unit in backward: the consumer's backward rebuilds
    ``y``, and the producer's backward, which runs next, takes the same tensor.
    """

    __slots__ = ("conv_out", "rebuild", "version", "cached")

    def __init__(self, conv_out: Tensor, rebuild, version: int):
        self.conv_out, self.rebuild, self.version, self.cached = conv_out, rebuild, version, None

    def value(self) -> Tensor:
        if self.cached is None:
            self.cached = self.rebuild(self.conv_out)
        return self.cached

    def release(self) -> None:
        self.cached = None


# Outputs with a recipe: id(tensor) -> (weak reference, recipe), the entry dropped when the tensor dies.
# A side table rather than a tensor attribute: attributes travel with torch.save / deepcopy of the tensor.
_RECIPES: dict = {}


def _attach_recipe(out: Tensor, recipe: _OutputRecipe) -> "weakref.ref":
    key = id(out)
    ref = weakref.ref(out, lambda _, key=key: _RECIPES.pop(key, None))
    _RECIPES[key] = (ref, recipe)
    return ref


def _recipe_of(t: Optional[Tensor]) -> Optional[_OutputRecipe]:
    """The recipe of an unmodified output of an earlier training-form op, else None."""
    entry = _RECIPES.get(id(t))
    if entry is None or entry[0]() is not t:
        return None
    recipe = entry[1]
    return recipe if recipe.version == t._version else None


conv3d_batchnorm_act_op = torch.library.custom_op(f"{NAMESPACE}::conv3d_batchnorm_act", _bn_impl, mutates_args=())


@conv3d_batchnorm_act_op.register_fake
def _(input, weight, bn_weight, bn_bias, residual, stride, padding, dilation, groups, eps, relu, save_conv_out,
      backend):
    p = _params(input, weight, stride, padding, dilation, groups)
    stats = input.new_empty(p.out_channels, dtype=opmath_dtype(input.dtype))
    return _fake_out(input, p), (_fake_out(input, p) if save_conv_out else _empty(input)), stats, torch.empty_like(stats)


def _bn_grads(grad_output, out, conv_out, mean, var, input, weight, bn_weight, stride, padding, dilation, groups,
              eps, relu, output_mask, backend):
    """The backend's gradients of (input, weight, bn_weight, bn_bias, residual), None where not asked for.
    An empty conv_out was not kept by the forward (save_conv_out=False): the conv runs again here."""
    out = out if relu else grad_output  # not kept without a ReLU (see _relu_mask_source); never read then
    p = _params(input, weight, stride, padding, dilation, groups)
    impl = get_backend(backend)
    if not conv_out.numel():
        conv_out = impl.conv3d_forward(input, weight, None, p)
    return impl.batchnorm_act_backward(
        grad_output.contiguous(memory_format=memory_format_of(input)), out, conv_out, mean, var, input, weight,
        bn_weight, p, eps, relu, output_mask,
    )


def _bn_backward_impl(
    grad_output: Tensor,
    out: Tensor,
    conv_out: Tensor,
    mean: Tensor,
    var: Tensor,
    input: Tensor,
    weight: Tensor,
    bn_weight: Tensor,
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    eps: float,
    relu: bool,
    output_mask: List[bool],
    backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (input, weight, bn_weight, bn_bias, residual)."""
    grads = _bn_grads(grad_output, out, conv_out, mean, var, input, weight, bn_weight, stride, padding, dilation,
                      groups, eps, relu, output_mask, backend)
    likes = (input, weight, bn_weight, bn_weight, input)
    return _unaliased((_or_empty(g, like) for g, like in zip(grads, likes)),
                      (grad_output, out, conv_out, mean, var, input, weight, bn_weight))


conv3d_batchnorm_act_backward_op = torch.library.custom_op(f"{NAMESPACE}::conv3d_batchnorm_act_backward", _bn_backward_impl, mutates_args=())


@conv3d_batchnorm_act_backward_op.register_fake
def _(grad_output, out, conv_out, mean, var, input, weight, bn_weight, stride, padding, dilation, groups,
      eps, relu, output_mask, backend):
    return (
        _fake_grad_like(input, output_mask[0]),
        _fake_grad_like(weight, output_mask[1]),
        _fake_grad_like(bn_weight, output_mask[2]),
        _fake_grad_like(bn_weight, output_mask[3]),
        torch.empty_like(grad_output, memory_format=memory_format_of(input)) if output_mask[4] else _empty(input),
    )


def _bn_setup(ctx, inputs, output, kept_out: Optional[Tensor] = None, kept_input: Optional[Tensor] = None):
    """What backward keeps; the eager twin passes placeholders for an output / input it can rebuild."""
    (input, weight, bn_weight, bn_bias, residual, stride, padding, dilation, groups, eps, relu, _save_conv_out,
     backend) = inputs
    out, conv_out, mean, var = output
    ctx.mark_non_differentiable(conv_out, mean, var)
    ctx.save_for_backward(_relu_mask_source(out, relu) if kept_out is None else kept_out, conv_out, mean, var,
                          input if kept_input is None else kept_input, weight, bn_weight)
    ctx.conv = (stride, padding, dilation, groups, eps, relu, backend)


def _bn_backward(ctx, grad_out, _g_conv_out, _g_mean, _g_var):
    out, conv_out, mean, var, input, weight, bn_weight = ctx.saved_tensors
    stride, padding, dilation, groups, eps, relu, backend = ctx.conv
    input_recipe = getattr(ctx, "input_recipe", None)
    if input_recipe is not None:  # the previous op's output, rebuilt (and left for that op's backward)
        input = input_recipe.value()
    out_recipe = getattr(ctx, "out_recipe", None)
    if out_recipe is not None:
        if relu:  # the ReLU mask: the output if it is still around unchanged, else rebuilt
            alive = ctx.out_ref()
            out = alive if alive is not None and alive._version == out_recipe.version else out_recipe.value()
        out_recipe.release()
    mask = [bool(m) for m in ctx.needs_input_grad[:5]]
    grads = _backward_call(ctx, conv3d_batchnorm_act_backward_op, _bn_grads,
                           grad_out, out, conv_out, mean, var, input, weight, bn_weight, stride, padding,
                           dilation, groups, eps, relu, mask, backend)
    return _grads_or_none(ctx, grads, mask) + (None,) * 8


conv3d_batchnorm_act_op.register_autograd(_bn_backward, setup_context=_bn_setup)


# ------------------------------------------------------------------------------------------------
# eager fast path: autograd.Function twins of the forward ops, and the entry points functional.py calls
# ------------------------------------------------------------------------------------------------
def _eager_twin(name: str, forward_impl, setup, backward) -> type:
    """An autograd.Function running the op's implementation, setup and backward."""
    # forward(ctx, ...) rather than setup_context: the latter binds inspect.signature on every call.
    def forward(ctx, *args):
        output = forward_impl(*args)
        ctx.eager = True
        # The side outputs (conv output, batch statistics) never receive gradients; materialising zeros
        # for them cost an activation-sized fill per layer and step.
        ctx.set_materialize_grads(False)
        ctx.num_args = len(args)
        setup(ctx, args, output)
        return output

    def backward_or_nothing(ctx, grad_out, *side_grads):
        if grad_out is None:  # nothing reached the main output
            return (None,) * ctx.num_args
        return backward(ctx, grad_out, *side_grads)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward_or_nothing),
        "__doc__": f"Eager twin of the {name} custom op (same implementation, no dispatcher round trips).",
    })


_Conv3dEager = _eager_twin("Conv3dEager", _conv3d_impl, _conv3d_setup, _conv3d_backward)
_AffineActEager = _eager_twin("Conv3dAffineActEager", _affine_impl, _affine_setup, _affine_backward)
class _BatchNormActEager(torch.autograd.Function):
    """Eager twin of the conv3d_batchnorm_act custom op (same implementation, no dispatcher round trips),
    which also keeps output recipes instead of outputs where it can (see _OutputRecipe)."""

    @staticmethod
    def forward(ctx, *args):  # the op's arguments, then RunningStats or None
        op_args = args[:-1]
        (out, conv_out, mean, var), rebuild = _bn_eager_forward(*args)
        ctx.eager = True
        ctx.set_materialize_grads(False)  # no zero gradients for the side outputs
        ctx.num_args = len(args)
        ctx.input_recipe = _recipe_of(op_args[0])
        kept_out = None
        if rebuild is not None:
            recipe = _OutputRecipe(conv_out, rebuild, out._version)
            ctx.out_recipe, ctx.out_ref = recipe, _attach_recipe(out, recipe)
            kept_out = _empty(out)
        _bn_setup(ctx, op_args, (out, conv_out, mean, var), kept_out=kept_out,
                  kept_input=None if ctx.input_recipe is None else _empty(op_args[0]))
        return out, conv_out, mean, var

    @staticmethod
    def backward(ctx, grad_out, *side_grads):
        if grad_out is None:  # nothing reached the main output
            return (None,) * ctx.num_args
        return _bn_backward(ctx, grad_out, *side_grads) + (None,)


EAGER_CUSTOM_OPS = os.environ.get("VIDEO3D_FAST_EAGER_CUSTOM_OPS", "0") == "1"


def use_custom_ops() -> bool:
    """True under torch.compile (the ops must be traceable) or with VIDEO3D_FAST_EAGER_CUSTOM_OPS=1
    (read at import; tests flip ``library.EAGER_CUSTOM_OPS``)."""
    return EAGER_CUSTOM_OPS or torch.compiler.is_compiling()


def needs_autograd(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def conv3d(*args) -> Tensor:
    """Same arguments as the ``video3d_fast::conv3d`` custom op."""
    if use_custom_ops():
        return conv3d_op(*args)
    if not needs_autograd(*args[:3]):  # inference: no graph to record, call the implementation
        return _conv3d_impl(*args)
    return _Conv3dEager.apply(*args)


def conv3d_affine_act(*args) -> Tuple[Tensor, Tensor]:
    """Same arguments and outputs as the ``video3d_fast::conv3d_affine_act`` custom op."""
    if use_custom_ops():
        return conv3d_affine_act_op(*args)
    if not needs_autograd(*args[:5]):
        return _affine_impl(*args)
    return _AffineActEager.apply(*args)


def conv3d_batchnorm_act(*args, running: Optional[RunningStats] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same arguments and outputs as the ``video3d_fast::conv3d_batchnorm_act`` custom op; ``running``
    (when given) is updated in place from the batch statistics, like nn.BatchNorm3d in training mode."""
    if use_custom_ops():
        outputs = conv3d_batchnorm_act_op(*args)
        if running is not None:  # a custom op with autograd may not mutate its inputs: update outside it
            update_running_stats(running, outputs[2], outputs[3], outputs[0].numel() // outputs[0].shape[1])
        return outputs
    if not needs_autograd(*args[:5]):
        return _bn_eager_impl(*args, running)
    return _BatchNormActEager.apply(*args, running)


def op_overloads() -> Sequence:
    """Every custom op of the library (for opcheck and docs)."""
    return (
        conv3d_op, conv3d_backward_op, conv3d_affine_act_op, conv3d_affine_act_backward_op,
        conv3d_batchnorm_act_op, conv3d_batchnorm_act_backward_op,
    )
