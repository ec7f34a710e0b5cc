"""Training form without the saved conv output (``save_conv_out=False`` / ``ops.recompute_conv_outputs``):
backward computes the conv again, with the same values and gradients, and autograd holds one activation
less per call."""
from __future__ import annotations

import pytest
import torch

from video3d_fast import ops
from video3d_fast.ops import functional
from video3d_fast.ops.debug import poison_outputs

from .helpers import ConvProblem, leaf

pytestmark = pytest.mark.usefixtures("cpu_extension")

PROBLEM = ConvProblem(n=2, c=8, k=12, size=(3, 5, 6), stride=(1, 2, 1), groups=2, residual=True)


def _backends():
    names = ["cpu", "aten"]
    status = ops.available_backends()["triton"]
    if status.available and ops.backends._device_reason("triton", torch.device("cpu")) is None:
        names.append("triton")
    return names


class SavedBytes:
    """Bytes of the distinct storages autograd keeps for backward while this is active."""

    def __init__(self):
        self.storages = {}

    def pack(self, t):
        self.storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def _train_call(p, tensors, running, backend, save_conv_out, saved=None):
    x, w, gamma, beta, res = tensors
    hooks = torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t) if saved else None
    if hooks:
        hooks.__enter__()
    try:
        with poison_outputs():
            y = ops.conv3d_batchnorm_act(x, w, gamma, beta, *running, None, res, backend=backend,
                                         save_conv_out=save_conv_out, **p.conv_kwargs)
    finally:
        if hooks:
            hooks.__exit__(None, None, None)
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", _backends())
def test_recomputed_conv_output_gives_the_same_values_gradients_and_running_stats(backend, dtype):
    p = ConvProblem(**{**PROBLEM.__dict__, "dtype": dtype})
    base = p.make(torch.Generator().manual_seed(0))
    grad = None
    results = []
    for save in (True, False):
        tensors = [leaf(t) for t in base]
        running = [torch.zeros(p.k), torch.ones(p.k)]
        y = _train_call(p, tensors, running, backend, save)
        grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype) if grad is None else grad
        with poison_outputs():
            y.backward(grad)
        results.append([y.detach(), *running, *(t.grad for t in tensors)])
    for kept, recomputed in zip(*results):
        # the same kernels on the same data: identical bits, not just close values
        assert torch.equal(kept, recomputed)


@pytest.mark.parametrize("backend", _backends())
def test_recompute_keeps_one_activation_less(backend):
    p = PROBLEM
    tensors = [leaf(t) for t in p.make(torch.Generator().manual_seed(2))]
    sizes = {}
    for save in (True, False):
        saved = SavedBytes()
        y = _train_call(p, tensors, [torch.zeros(p.k), torch.ones(p.k)], backend, save, saved)
        sizes[save] = saved.total
        del y
    conv_out_bytes = y_bytes = torch.Size((p.n, p.k, *p.out_size())).numel() * 4
    assert sizes[True] - sizes[False] == conv_out_bytes
    assert sizes[False] >= y_bytes  # the output itself (ReLU mask) is still kept


def test_recompute_context_sets_the_default_and_an_explicit_argument_wins():
    assert functional._RECOMPUTE_CONV_OUTPUTS is False
    p = PROBLEM
    tensors = [leaf(t) for t in p.make(torch.Generator().manual_seed(3))]
    sizes = []
    for ctx_on, explicit in ((False, None), (True, None), (True, True)):
        saved = SavedBytes()
        with ops.recompute_conv_outputs(ctx_on):
            with ops.recompute_conv_outputs(False):  # nesting restores the outer value
                pass
            assert functional._RECOMPUTE_CONV_OUTPUTS is ctx_on
            _train_call(p, tensors, [None, None], "cpu", explicit, saved)
        sizes.append(saved.total)
    assert functional._RECOMPUTE_CONV_OUTPUTS is False
    assert sizes[1] < sizes[0] == sizes[2]


def test_gradcheck_float64_through_the_recomputing_custom_ops():
    p = ConvProblem(**{**PROBLEM.__dict__, "dtype": torch.float64})
    inputs = tuple(leaf(t) for t in p.make(torch.Generator().manual_seed(4)))

    def fn(x, w, gamma, beta, res):
        return ops.conv3d_batchnorm_act(x, w, gamma, beta, None, None, None, res, backend="cpu",
                                        save_conv_out=False, **p.conv_kwargs)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_recompute_under_torch_compile_fullgraph():
    torch._dynamo.reset()
    p = PROBLEM
    base = p.make(torch.Generator().manual_seed(5))

    def fn(x, w, gamma, beta, res, rm, rv):
        with ops.recompute_conv_outputs():
            return ops.conv3d_batchnorm_act(x, w, gamma, beta, rm, rv, None, res, backend="aten", **p.conv_kwargs)

    grads = []
    for f in (fn, torch.compile(fn, fullgraph=True)):
        tensors = [leaf(t) for t in base]
        running = [torch.zeros(p.k), torch.ones(p.k)]
        y = f(*tensors, *running)
        y.square().sum().backward()
        grads.append([y.detach(), *running, *(t.grad for t in tensors)])
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_name", ["resnet", "resnext"])
def test_whole_network_keeps_no_more_than_torch_modules_and_recompute_about_half(model_name):
    """Activation memory of a training forward through a whole 3D ResNet/ResNeXt (narrow channels): the
    fused units keep exactly what the torch modules keep (the conv output and the ReLU output per unit;
    nothing for the ReLU-less downsample units), and with recompute_conv_outputs about half of it."""
    from benchmarks.activation_memory import SavedActivations
    from tests.models.helpers import narrow_options
    from video3d_fast.models import generate_model, set_backend

    torch.manual_seed(6)
    model = generate_model(model_name, 50, n_classes=5, **narrow_options(model_name)).train()
    x = torch.randn(2, 3, 4, 32, 32)
    saved = {}
    for mode in ("torch", "fused", "recompute"):
        set_backend(model, "torch" if mode == "torch" else "cpu")
        counter = SavedActivations(model)
        with counter.hooks(), ops.recompute_conv_outputs(mode == "recompute"):
            model(x).sum().backward()
        saved[mode] = sum(counter.storages.values())
    assert saved["fused"] <= saved["torch"]
    assert saved["recompute"] < 0.65 * saved["torch"]
