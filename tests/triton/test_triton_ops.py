"""The ``triton`` backend of every op equals the reference (interpreter on CPU, compiled on a GPU).

Forward values, memory formats, running statistics and all gradients, on fresh random data with outputs
poisoned (NaN) before the kernels run, over every problem class of cases.SMALL, fp32/fp16/bf16 (bf16
through the interpreter's fp32-upcast dot), NCDHW / channels_last_3d / non-dense inputs.
"""
from __future__ import annotations

import pytest
import torch

from tests.ops.helpers import ConvProblem, assert_close, leaf
from video3d_fast import ops
from video3d_fast.ops import reference
from video3d_fast.ops.debug import poison_outputs

from .cases import SMALL, check_affine_act, check_batchnorm_act, check_conv3d, variant

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module", autouse=True)
def _triton_runs_here():
    status = ops.available_backends()["triton"]
    if not status.available:
        pytest.skip(f"triton backend unavailable: {status.reason}")
    why = ops.backends._device_reason("triton", torch.device(DEVICE))
    if why is not None:
        pytest.skip(why)


@pytest.fixture(autouse=True)
def _strict_fp32():
    """fp32 tests compare against fp32 references: no TF32 on either side (TF32 has its own GPU test)."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("name", list(SMALL))
def test_conv3d_matches_reference_values_and_grads(name):
    check_conv3d(SMALL[name], seed=1, device=DEVICE)


@pytest.mark.parametrize("name", ["dense3x3x3", "stem_c3", "resnext_g8", "odd_groups"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv3d_half_precision_matches_reference(name, dtype):
    check_conv3d(variant(SMALL[name], dtype=dtype), seed=2, device=DEVICE)


@pytest.mark.parametrize("layout", ["ndhwc", "strided"])
@pytest.mark.parametrize("name", ["dense3x3x3", "stride2_dilated", "depthwise"])
def test_conv3d_any_input_layout_gives_reference_values_in_input_format(name, layout):
    check_conv3d(variant(SMALL[name], layout=layout), seed=3, device=DEVICE, bias=False)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("name", ["dense3x3x3", "stem_c3", "downsample1x1", "resnext_g8"])
def test_affine_act_matches_reference(name, residual, relu):
    check_affine_act(variant(SMALL[name], residual=residual), relu, seed=4, device=DEVICE)


@pytest.mark.parametrize("name", ["stride2_dilated", "depthwise", "odd_groups", "wide_groups"])
def test_affine_act_other_problem_classes_match_reference(name):
    check_affine_act(variant(SMALL[name], residual=True), True, seed=5, device=DEVICE)


@pytest.mark.parametrize(
    "dtype,layout", [(torch.float16, "ndhwc"), (torch.bfloat16, "ndhwc"), (torch.bfloat16, "strided")]
)
def test_affine_act_half_precision_and_layouts_match_reference(dtype, layout):
    p = variant(SMALL["resnext_g8"], dtype=dtype, layout=layout, residual=True)
    check_affine_act(p, True, seed=6, device=DEVICE)


def test_affine_act_frozen_scale_saves_no_conv_output_and_matches_reference():
    check_affine_act(variant(SMALL["dense3x3x3"], residual=True), True, seed=7, device=DEVICE, train_scale=False)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("name", ["dense3x3x3", "stem_c3", "resnext_g8"])
def test_batchnorm_act_matches_reference_incl_running_stats(name, residual, relu):
    check_batchnorm_act(variant(SMALL[name], residual=residual), relu, seed=8, device=DEVICE)


@pytest.mark.parametrize("name", ["stride2_dilated", "downsample1x1", "depthwise", "odd_groups", "wide_groups"])
def test_batchnorm_act_other_problem_classes_match_reference(name):
    check_batchnorm_act(variant(SMALL[name], residual=True), True, seed=9, device=DEVICE)


@pytest.mark.parametrize(
    "dtype,layout", [(torch.float16, "ncdhw"), (torch.bfloat16, "ndhwc"), (torch.float32, "strided")]
)
def test_batchnorm_act_dtypes_and_layouts_match_reference(dtype, layout):
    p = variant(SMALL["resnext_g8"], dtype=dtype, layout=layout, residual=True)
    check_batchnorm_act(p, True, seed=10, device=DEVICE)


def test_batchnorm_act_cumulative_momentum_matches_reference():
    check_batchnorm_act(SMALL["odd_groups"], True, seed=11, device=DEVICE, momentum=None, backward=False)


def test_batchnorm_statistics_survive_a_large_mean_offset():
    """Per-tile (sum, M2) combination keeps the variance to ~1e-4 where E[x^2] - E[x]^2 in fp32 would
    lose it entirely (values 1e4 +- 1: fp32 E[x^2] has an ulp of ~8)."""
    n, c, size = 2, 16, (2, 8, 9)  # 288 rows per channel: several row tiles
    x = (torch.randn(n, c, *size, generator=torch.Generator().manual_seed(12)) + 1e4).to(DEVICE)
    w = torch.eye(c, device=DEVICE).view(c, c, 1, 1, 1)  # identity conv: its output is x, exactly
    running_mean, running_var = torch.zeros(c, device=DEVICE), torch.ones(c, device=DEVICE)
    ops.conv3d_batchnorm_act(x, w, None, None, running_mean, running_var, momentum=1.0, backend="triton")
    x64 = x.double()
    assert_close(running_mean, x64.mean(dim=(0, 2, 3, 4)), torch.float32, "mean")
    assert_close(running_var, x64.var(dim=(0, 2, 3, 4)), torch.float32, "unbiased var", 50.0)


def test_batchnorm_act_is_deterministic():
    p = variant(SMALL["resnext_g8"], residual=True)
    x, w, gamma, beta, res = p.make(torch.Generator().manual_seed(13), device=DEVICE)
    outs = []
    for _ in range(2):
        xs, ws, gs = leaf(x), leaf(w), leaf(gamma)
        y = ops.conv3d_batchnorm_act(xs, ws, gs, beta, None, None, residual=res, backend="triton",
                                     **p.conv_kwargs)
        y.backward(torch.ones_like(y))
        outs.append((y.detach(), xs.grad, ws.grad, gs.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_triton_grads_match_gradchecked_float64_reference():
    """The float64 reference passes gradcheck; fp32 Triton gradients agree with its gradients."""
    p = ConvProblem(n=1, c=4, k=6, size=(2, 3, 3), stride=(1, 2, 1), groups=2, residual=True, dtype=torch.float64)
    x, w, gamma, beta, res = p.make(torch.Generator().manual_seed(14))
    inputs = [leaf(t) for t in (x, w, gamma, beta, res)]

    def ref(*args):
        return reference.conv3d_batchnorm_act(args[0], args[1], args[2], args[3], None, None, residual=args[4],
                                              **p.conv_kwargs)

    assert torch.autograd.gradcheck(ref, inputs)
    ref(*inputs).backward(torch.ones(p.n, p.k, *p.out_size(), dtype=torch.float64))
    ours = [leaf(t.float().to(DEVICE)) for t in (x, w, gamma, beta, res)]
    y = ops.conv3d_batchnorm_act(ours[0], ours[1], ours[2], ours[3], None, None, residual=ours[4],
                                 backend="triton", **p.conv_kwargs)
    y.backward(torch.ones_like(y))
    for name, a, b in zip(("input", "weight", "bn_weight", "bn_bias", "residual"), ours, inputs):
        assert_close(a.grad.cpu(), b.grad, torch.float32, f"grad {name}", 50.0)


def test_float64_runs_the_aten_composite_and_matches_reference():
    p = variant(SMALL["resnext_g8"], dtype=torch.float64, residual=True)
    check_affine_act(p, True, seed=15, device=DEVICE)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("name", ["dense3x3x3", "stem_c3", "resnext_g8"])
def test_batchnorm_act_separate_finalize_and_three_launch_backward_match_reference(name, relu, monkeypatch):
    """The long-reduction paths (separate finalize launch; grad_sums + grad_prologue), which real layers
    with many row tiles take and the small problems here would not."""
    from video3d_fast.ops.backends.triton import bn

    monkeypatch.setattr(bn, "FUSED_FINALIZE_MAX_TILES", 0)
    monkeypatch.setattr(bn, "FUSED_BACKWARD_MAX_ROWS", 0)
    check_batchnorm_act(variant(SMALL[name], residual=True), relu, seed=14, device=DEVICE)
    check_batchnorm_act(SMALL[name], relu, seed=15, device=DEVICE, momentum=None, backward=False)


def test_batchnorm_act_half_precision_running_buffers_get_torchs_update():
    """Running statistics the kernels cannot update in fp32 (a model converted with .half()) are updated by
    torch's lerp_ after the op, with the same values as nn.BatchNorm3d."""
    p = variant(SMALL["dense3x3x3"], dtype=torch.float16)
    gen = torch.Generator().manual_seed(16)
    x, w, gamma, beta, _ = p.make(gen, device=DEVICE)
    gamma, beta = gamma.half(), beta.half()
    running = [torch.randn(p.k, generator=gen).half().to(DEVICE), (torch.rand(p.k, generator=gen) + 0.5).half().to(DEVICE)]
    running_ref = [t.clone() for t in running]
    y = ops.conv3d_batchnorm_act(leaf(x), leaf(w), leaf(gamma), leaf(beta), *running, backend="triton",
                                 **p.conv_kwargs)
    y_ref = reference.conv3d_batchnorm_act(x, w, gamma, beta, *running_ref, **p.conv_kwargs)
    assert_close(y, y_ref, p.dtype, "output", 2.0)
    for a, b, what in zip(running, running_ref, ("running_mean", "running_var")):
        assert a.dtype == torch.float16
        assert_close(a, b, torch.float16, what, 2.0)


def test_small_training_layer_is_two_launches_forward_and_three_backward(monkeypatch):
    """Launch-bound layers (few row tiles, short reductions): BN finalize and the running-statistics update
    happen inside BN-apply, the BN backward is one kernel; no torch op touches the running buffers."""
    from video3d_fast.ops.backends.triton import bn, common, conv3d_dgrad, conv3d_fwd, conv3d_wgrad

    launched = []

    def counting(kernel, *args, **kwargs):
        launched.append(kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__)
        return common.launch(kernel, *args, **kwargs)

    for module in (bn, conv3d_fwd, conv3d_dgrad, conv3d_wgrad):
        monkeypatch.setattr(module, "launch", counting)
    p = SMALL["dense3x3x3"]
    x, w, gamma, beta, _ = p.make(torch.Generator().manual_seed(17), device=DEVICE)
    running_mean, running_var = torch.zeros(p.k, device=DEVICE), torch.ones(p.k, device=DEVICE)
    xs, ws, gs, bs = leaf(x), leaf(w), leaf(gamma), leaf(beta)
    real_lerp = torch.Tensor.lerp_
    monkeypatch.setattr(torch.Tensor, "lerp_", lambda *a, **k: pytest.fail("running stats updated by a torch op"))
    with poison_outputs():
        y = ops.conv3d_batchnorm_act(xs, ws, gs, bs, running_mean, running_var, backend="triton", **p.conv_kwargs)
    monkeypatch.setattr(torch.Tensor, "lerp_", real_lerp)
    assert launched == ["conv3d_fwd_kernel", "channel_affine_act_kernel"]
    launched.clear()
    y.backward(torch.randn_like(y))
    assert sorted(launched) == sorted(["bn_backward_kernel", "conv3d_dgrad_kernel", "conv3d_wgrad_kernel"])
    running_ref = [torch.zeros(p.k, device=DEVICE), torch.ones(p.k, device=DEVICE)]
    reference.conv3d_batchnorm_act(x, w, gamma, beta, *running_ref, **p.conv_kwargs)
    assert_close(running_mean, running_ref[0], torch.float32, "running_mean", 50.0)
    assert_close(running_var, running_ref[1], torch.float32, "running_var", 50.0)


def _two_unit_chain(p, seed, rebuild, monkeypatch, modify_between=False):
    """unit 1 (conv -> BN -> ReLU, no residual) feeding unit 2 (conv -> BN -> + residual -> ReLU), as in a
    bottleneck; returns (saved bytes of activations, output, running stats, gradients)."""
    from video3d_fast.ops import library

    monkeypatch.setattr(library, "REBUILD_OUTPUTS", rebuild)
    gen = torch.Generator().manual_seed(seed)
    x, w1, g1, b1, _ = p.make(gen, device=DEVICE)
    w2 = (torch.randn(p.k, p.k, 3, 3, 3, generator=gen, dtype=torch.float64) / (27 * p.k) ** 0.5).to(DEVICE, p.dtype)
    res = torch.randn(p.n, p.k, *p.out_size(), generator=gen).to(DEVICE, p.dtype)
    leaves = [leaf(t) for t in (x, w1, g1, b1, w2, g1.clone(), b1.clone())]
    running = [torch.zeros(p.k, device=DEVICE), torch.ones(p.k, device=DEVICE)] * 2
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() if t.numel() else 0
        return t

    params = {t.untyped_storage().data_ptr() for t in leaves[1:]}
    with poison_outputs(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y1 = ops.conv3d_batchnorm_act(leaves[0], leaves[1], leaves[2], leaves[3], *running[:2], backend="triton",
                                      **p.conv_kwargs)
        if modify_between:
            y1.mul_(1.0)  # same values, new version: the next unit must keep y1 itself
        y2 = ops.conv3d_batchnorm_act(y1, leaves[4], leaves[5], leaves[6], *running[2:], None, res,
                                      backend="triton", padding=1)
    activations = sum(n for ptr, n in saved.items() if ptr not in params)
    del y1
    with poison_outputs():
        y2.backward(torch.randn(y2.shape, generator=gen).to(DEVICE, p.dtype))
    return activations, [y2.detach(), *running, *(t.grad for t in leaves)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unit_outputs_are_rebuilt_not_kept_with_the_same_bits(dtype, monkeypatch):
    """A unit without residual keeps its conv output only; the next unit keeps the rebuild recipe instead of
    its input: one activation less, and values, running statistics and gradients bit-identical."""
    p = variant(SMALL["dense3x3x3"], dtype=dtype)
    kept, reference_run = _two_unit_chain(p, 18, False, monkeypatch)
    rebuilt, run = _two_unit_chain(p, 18, True, monkeypatch)
    y_bytes = p.n * p.k * torch.Size(p.out_size()).numel() * torch.tensor([], dtype=dtype).element_size()
    assert kept - rebuilt == y_bytes
    for a, b in zip(reference_run, run):
        assert torch.equal(a, b)


def test_an_output_changed_in_place_is_kept_by_the_next_unit(monkeypatch):
    p = SMALL["dense3x3x3"]
    _, clean = _two_unit_chain(p, 19, True, monkeypatch)
    kept, changed = _two_unit_chain(p, 19, True, monkeypatch, modify_between=True)
    rebuilt, _ = _two_unit_chain(p, 19, True, monkeypatch)
    assert kept > rebuilt  # the version check made unit 2 keep y1
    for a, b in zip(clean, changed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["resnet", "resnext"])
def test_whole_network_with_rebuilt_outputs_trains_identically_and_keeps_less(name, monkeypatch):
    """A 3D ResNet-18 / ResNeXt-50 (narrow) training step on the triton backend: rebuilding the outputs of
    units without residual changes no bit of the loss, the gradients or the running statistics, and the
    activations kept for backward shrink."""
    from benchmarks.activation_memory import SavedActivations
    from tests.models.helpers import narrow_options
    from video3d_fast.models import generate_model, set_backend
    from video3d_fast.ops import library

    depth = 18 if name == "resnet" else 50
    results = {}
    for rebuild in (False, True):
        monkeypatch.setattr(library, "REBUILD_OUTPUTS", rebuild)
        torch.manual_seed(20)
        model = generate_model(name, depth, n_classes=3, **narrow_options(name)).to(DEVICE).train()
        set_backend(model, "triton")
        x = torch.randn(2, 3, 2, 16, 16, device=DEVICE)
        counter = SavedActivations(model)
        with counter.hooks():
            loss = model(x).square().mean()
        loss.backward()
        state = [t.detach().clone() for t in model.state_dict().values()]
        results[rebuild] = (sum(counter.storages.values()), [loss.detach(), *state,
                                                              *(p.grad for p in model.parameters())])
    assert results[True][0] < results[False][0]
    for a, b in zip(results[False][1], results[True][1]):
        assert torch.equal(a, b)


def test_an_output_with_a_recipe_can_be_saved_and_copied(tmp_path):
    """The recipe is not attached to the tensor: saving, loading (weights_only) and copying an output are
    unaffected, and the registry entry goes when the output does."""
    import copy

    from video3d_fast.ops import library

    p = SMALL["dense3x3x3"]
    x, w, gamma, beta, _ = p.make(torch.Generator().manual_seed(21), device=DEVICE)
    y = ops.conv3d_batchnorm_act(x, leaf(w), gamma, beta, None, None, backend="triton", **p.conv_kwargs)
    assert library._recipe_of(y) is not None and library._recipe_of(y.detach()) is None
    torch.save(y.detach(), tmp_path / "y.pt")
    torch.save(y, tmp_path / "y_graph.pt")
    assert torch.equal(torch.load(tmp_path / "y_graph.pt"), y)
    assert torch.equal(copy.deepcopy(y.detach()), y.detach())
    before = len(library._RECIPES)
    del y
    assert len(library._RECIPES) == before - 1
