"""The ops are real PyTorch ops: torch.library.opcheck passes, gradcheck in float64 passes through the
custom ops, and torch.compile(fullgraph=True) traces forward and backward through them."""
from __future__ import annotations

import pytest
import torch

from video3d_fast import ops
from video3d_fast.ops import functional, library, reference

from .helpers import ConvProblem, assert_close, leaf

pytestmark = pytest.mark.usefixtures("cpu_extension")

PROBLEMS = {
    "grouped-strided-residual": ConvProblem(n=2, c=4, k=6, size=(3, 4, 5), stride=(1, 2, 1), groups=2, residual=True,
                                            dtype=torch.float64),
    "dilated-channels-last": ConvProblem(n=1, c=3, k=4, size=(4, 5, 4), dilation=(2, 1, 1), padding=(2, 1, 1),
                                         layout="ndhwc", dtype=torch.float64),
}


def _conv_args(p):
    return [list(p.stride), list(p.padding), list(p.dilation), p.groups]


@pytest.mark.parametrize("backend", ["cpu", "aten"])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_opcheck_passes_for_every_custom_op(backend, name):
    p = PROBLEMS[name]
    x, w, scale, shift, res = p.make(torch.Generator().manual_seed(0))
    grads = [leaf(t) for t in (x, w, scale, shift, res)]
    args = _conv_args(p)
    torch.library.opcheck(library.conv3d_op, (grads[0], grads[1], None, *args, backend))
    torch.library.opcheck(library.conv3d_affine_act_op, (*grads, *args, True, True, backend))
    torch.library.opcheck(library.conv3d_affine_act_op, (x, w, scale, shift, None, *args, False, False, backend))
    torch.library.opcheck(library.conv3d_batchnorm_act_op, (*grads, *args, 1e-5, True, True, backend))
    torch.library.opcheck(library.conv3d_batchnorm_act_op, (*grads, *args, 1e-5, True, False, backend))
    # The backward ops directly, with a partial output mask; with the conv output kept and recomputed.
    out, conv_out, mean, var = library.conv3d_batchnorm_act_op(x, w, scale, shift, res, *args, 1e-5, True, True,
                                                               backend)
    g = torch.randn_like(out)
    mask = [True, False, True, False, res is not None]
    for kept in (conv_out, conv_out.new_empty(0)):
        torch.library.opcheck(library.conv3d_batchnorm_act_backward_op,
                              (g, out, kept, mean, var, x, w, scale, *args, 1e-5, True, mask, backend))
    # without a ReLU the forward keeps no output (an empty tensor reaches backward)
    torch.library.opcheck(library.conv3d_batchnorm_act_backward_op,
                          (g, out.new_empty(0), conv_out, mean, var, x, w, scale, *args, 1e-5, False, mask, backend))
    out, conv_out = library.conv3d_affine_act_op(x, w, scale, shift, res, *args, True, True, backend)
    torch.library.opcheck(library.conv3d_affine_act_backward_op,
                          (g, out, conv_out, x, w, scale, *args, True, [False, True, True, True, False], backend))
    torch.library.opcheck(library.conv3d_affine_act_backward_op,
                          (g, out.new_empty(0), conv_out, x, w, scale, *args, False, [True, True, True, True, True],
                           backend))
    torch.library.opcheck(library.conv3d_backward_op, (g, x, w, *args, [True, True, True], backend))


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_gradcheck_float64_through_cpu_custom_ops(name):
    p = PROBLEMS[name]
    x, w, scale, shift, res = [leaf(t) for t in p.make(torch.Generator().manual_seed(1))]
    kw = p.conv_kwargs

    def affine(x, w, scale, shift, res):
        return ops.conv3d_affine_act(x, w, scale, shift, res, backend="cpu", **kw)

    def batchnorm(x, w, gamma, beta, res):
        return ops.conv3d_batchnorm_act(x, w, gamma, beta, None, None, None, res, backend="cpu", **kw)

    inputs = tuple(t for t in (x, w, scale, shift, res))
    # ReLU kinks: the random data keeps pre-activations away from 0 with overwhelming probability.
    assert torch.autograd.gradcheck(affine, inputs, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(batchnorm, inputs, eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda x, w: ops.conv3d(x, w, backend="cpu", **kw), (x, w))


def _fused_block(x, w1, w2, bn_w, bn_b, rm, rv, nbt, scale, shift, backend):
    """A residual block mixing all three ops, as a model would."""
    y = ops.conv3d_batchnorm_act(x, w1, bn_w, bn_b, rm, rv, nbt, padding=1, backend=backend)
    y = ops.conv3d(y, w2, padding=1, groups=2, backend=backend)
    return ops.conv3d_affine_act(y, w1, scale, shift, residual=x, padding=1, backend=backend)


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_torch_compile_fullgraph_traces_forward_and_backward(backend):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 3, 4, 4, generator=gen)
    w1 = torch.randn(4, 4, 3, 3, 3, generator=gen) * 0.2
    w2 = torch.randn(4, 2, 3, 3, 3, generator=gen) * 0.2
    bn_w, bn_b = torch.rand(4, generator=gen) + 0.5, torch.randn(4, generator=gen)
    scale, shift = torch.rand(4, generator=gen) + 0.5, torch.randn(4, generator=gen)
    params_eager = [leaf(t) for t in (x, w1, w2, bn_w, bn_b, scale, shift)]
    params_comp = [leaf(t) for t in (x, w1, w2, bn_w, bn_b, scale, shift)]
    stats_eager = [torch.zeros(4), torch.ones(4), torch.tensor(0)]
    stats_comp = [torch.zeros(4), torch.ones(4), torch.tensor(0)]

    def run(params, stats, fn):
        x, w1, w2, bn_w, bn_b, scale, shift = params
        return fn(x, w1, w2, bn_w, bn_b, *stats, scale, shift, backend)

    compiled = torch.compile(_fused_block, fullgraph=True)
    y_eager = run(params_eager, stats_eager, _fused_block)
    y_comp = run(params_comp, stats_comp, compiled)
    assert_close(y_comp, y_eager, torch.float32, "compiled forward")
    y_eager.square().sum().backward()
    y_comp.square().sum().backward()
    for a, b in zip(params_comp, params_eager):
        assert_close(a.grad, b.grad, torch.float32, "compiled grad", 5.0)
    for a, b in zip(stats_comp, stats_eager):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), "running stats under compile"


def test_torch_backend_is_plain_autograd_without_custom_ops():
    p = ConvProblem(dtype=torch.float64)
    x, w, scale, shift, _ = p.make(torch.Generator().manual_seed(3))
    y = ops.conv3d_affine_act(leaf(x), w, scale, shift, padding=1, backend="torch")
    assert "video3d_fast" not in type(y.grad_fn).__name__
    assert_close(y, reference.conv3d_affine_act(x, w, scale, shift, padding=1), torch.float64, "torch backend")


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_autocast_runs_fused_ops_in_bfloat16_like_f_conv3d(backend):
    p = ConvProblem(dtype=torch.float32, residual=True)
    x, w, scale, shift, res = p.make(torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.conv3d_affine_act(x, w, scale, shift, res, backend=backend, **p.conv_kwargs)
        plain = torch.nn.functional.conv3d(x, w, None, p.stride, p.padding)
    assert y.dtype == plain.dtype == torch.bfloat16
    expected = reference.conv3d_affine_act(x.bfloat16(), w.bfloat16(), scale, shift, res.bfloat16(), **p.conv_kwargs)
    assert_close(y, expected, torch.bfloat16, "autocast output")


def test_autocast_calls_use_the_memoised_plans_keyed_on_the_autocast_dtype():
    """Mixed-precision inference and training keep the memoised checks: the autocast dtype is part of the
    key, and the casts still happen on every call."""
    from video3d_fast.ops import functional

    p = ConvProblem(dtype=torch.float32, residual=True)
    x, w, scale, shift, res = p.make(torch.Generator().manual_seed(14))
    functional._AFFINE_PLANS.clear()
    functional._BN_CHECKS.clear()
    outs = []
    with torch.no_grad():
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outs.append(ops.conv3d_affine_act(x, w, scale, shift, res, backend="cpu", **p.conv_kwargs))
        plain = ops.conv3d_affine_act(x, w, scale, shift, res, backend="cpu", **p.conv_kwargs)
    assert len(functional._AFFINE_PLANS) == 2  # one autocast plan, one fp32 plan
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16 and plain.dtype == torch.float32
    assert torch.equal(outs[0], outs[1])
    stats = (torch.ones(p.k), torch.zeros(p.k), torch.zeros(p.k), torch.ones(p.k))
    ys = []
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ys.append(ops.conv3d_batchnorm_act(leaf(x), leaf(w), *stats, None, res, backend="cpu", **p.conv_kwargs))
    assert len(functional._BN_CHECKS) == 1
    assert ys[0].dtype == ys[1].dtype == torch.bfloat16
    assert ys[1].grad_fn is not None


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_eager_fast_path_and_custom_ops_give_identical_values_and_grads(backend, monkeypatch):
    """Eager calls run an autograd.Function twin of each custom op (same implementations): both routes
    must agree bit for bit, gradients and running statistics included."""
    p = ConvProblem(n=2, c=4, k=6, size=(3, 4, 5), groups=2, residual=True, layout="ndhwc")
    x, w, scale, shift, res = p.make(torch.Generator().manual_seed(5))
    results = []
    for custom_ops in (False, True):
        monkeypatch.setattr(library, "EAGER_CUSTOM_OPS", custom_ops)
        leaves = [leaf(t) for t in (x, w, scale, shift, res)]
        stats = [torch.zeros(6), torch.ones(6), torch.tensor(0)]
        y1 = ops.conv3d_affine_act(*leaves, backend=backend, **p.conv_kwargs)
        y2 = ops.conv3d_batchnorm_act(leaves[0], leaves[1], leaves[2], leaves[3], *stats, leaves[4], backend=backend,
                                      **p.conv_kwargs)
        y3 = ops.conv3d(leaves[0], leaves[1], leaves[3], backend=backend, **p.conv_kwargs)
        via_custom_ops = "video3d_fast" in type(y1.grad_fn).__name__
        assert via_custom_ops == custom_ops, type(y1.grad_fn).__name__
        (y1.square().sum() + y2.square().sum() + y3.square().sum()).backward()
        results.append([y1, y2, y3, *[t.grad for t in leaves], *stats])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_inference_calls_without_autograd_match_the_custom_op_bit_for_bit(backend, monkeypatch):
    """No-grad eager calls of the inference form go straight to the backend (validated arguments
    memoised): same values as the custom op, on repeated calls too."""
    p = ConvProblem(n=2, c=4, k=6, size=(3, 4, 5), groups=2, residual=True, layout="ndhwc")
    x, w, scale, shift, res = p.make(torch.Generator().manual_seed(6))
    monkeypatch.setattr(library, "EAGER_CUSTOM_OPS", True)
    expected = ops.conv3d_affine_act(x, w, scale, shift, res, backend=backend, **p.conv_kwargs)
    monkeypatch.setattr(library, "EAGER_CUSTOM_OPS", False)
    monkeypatch.setattr(functional, "_AFFINE_PLANS", {})
    with torch.no_grad():
        y = ops.conv3d_affine_act(x, w, scale, shift, res, backend=backend, **p.conv_kwargs)
        assert torch.equal(y, expected)
        (plan,) = functional._AFFINE_PLANS.values()
        runs = []
        run = plan.run
        plan.run = lambda *a: runs.append(1) or run(*a)
        y = ops.conv3d_affine_act(x, w, scale, shift, res, backend=backend, **p.conv_kwargs)
    assert runs == [1], "the second no-grad call did not take the memoised plan"
    assert torch.equal(y, expected)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    # With autograd needed, the memoised checks still lead to the differentiable op.
    leaves = [leaf(t) for t in (x, w, scale, shift, res)]
    y = ops.conv3d_affine_act(*leaves, backend=backend, **p.conv_kwargs)
    assert y.grad_fn is not None and torch.equal(y.detach(), expected) and runs == [1]
