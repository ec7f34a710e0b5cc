"""Bad input gets a clear Python error naming the problem, never a crash or silent garbage."""
from __future__ import annotations

import pytest
import torch

from video3d_fast import ops
from video3d_fast._extension import KERNEL_NAMESPACE

X = torch.randn(2, 4, 5, 6, 7)
W = torch.randn(8, 4, 3, 3, 3)
V = torch.ones(8)


def affine(**overrides):
    args = dict(input=X, weight=W, scale=V, shift=V, residual=None, padding=1, backend="torch")
    args.update(overrides)
    return ops.conv3d_affine_act(**args)


def batchnorm(**overrides):
    args = dict(input=X, weight=W, bn_weight=V, bn_bias=V, running_mean=torch.zeros(8), running_var=torch.ones(8),
                padding=1, backend="torch")
    args.update(overrides)
    return ops.conv3d_batchnorm_act(**args)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(input=torch.randn(2, 4, 5, 6)), ValueError, "input must be 5-D"),
        (dict(weight=torch.randn(8, 4, 3, 3)), ValueError, "weight must be 5-D"),
        (dict(weight=torch.randn(8, 3, 3, 3, 3)), ValueError, "input has 4 channels"),
        (dict(weight=torch.randn(8, 2, 3, 3, 3), groups=3), ValueError, "divisible by groups"),
        (dict(weight=torch.randn(6, 1, 3, 3, 3), groups=4), ValueError, "divisible by groups"),
        (dict(groups=0), ValueError, "groups must be a positive int"),
        (dict(weight=W.double()), TypeError, "does not match input dtype"),
        (dict(input=X.long(), weight=W.long()), TypeError, "input dtype must be"),
        (dict(input=X.to(torch.bfloat16)), TypeError, "does not match input dtype"),
        (dict(scale=V.double()), TypeError, "scale dtype"),
        (dict(scale=torch.ones(7)), ValueError, "scale must have shape (8,)"),
        (dict(shift=torch.ones(8, 1)), ValueError, "shift must have shape (8,)"),
        (dict(residual=torch.randn(2, 8, 5, 6, 6)), ValueError, "residual must have the output shape"),
        (dict(residual=torch.randn(2, 8, 5, 6, 7).double()), TypeError, "residual dtype"),
        (dict(input=torch.randn(0, 4, 5, 6, 7)), ValueError, "zero-size"),
        (dict(input=torch.randn(2, 4, 0, 6, 7)), ValueError, "zero-size"),
        (dict(padding=-1), ValueError, "padding must be >= 0"),
        (dict(padding=(1, 1)), ValueError, "padding must have 3 elements"),
        (dict(padding="same", stride=2), ValueError, "not supported for strided"),
        (dict(padding="full"), ValueError, "padding must be"),
        (dict(stride=0), ValueError, "stride must be >= 1"),
        (dict(dilation=(1, 0, 1)), ValueError, "dilation must be >= 1"),
        (dict(input=torch.randn(2, 4, 1, 1, 1), padding=0), ValueError, "output size"),
        (dict(activation="gelu"), ValueError, "activation must be one of"),
        (dict(backend="fastest"), ValueError, "unknown backend"),
        (dict(backend=3), TypeError, "backend must be a string"),
        (dict(input=X.numpy()), TypeError, "input must be a torch.Tensor"),
    ],
)
def test_affine_act_rejects_bad_input_with_clear_error(overrides, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        affine(**overrides)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_memoised_validation_of_a_good_call_lets_no_bad_call_through(backend):
    """Eager calls skip the checks for argument signatures that passed them before: a call differing
    in any checked property must still be checked."""
    affine(backend=backend)  # validated and memoised
    with pytest.raises(ValueError, match="scale must have shape"):
        affine(scale=torch.ones(7), backend=backend)
    with pytest.raises(TypeError, match="residual dtype"):
        affine(residual=torch.randn(2, 8, 5, 6, 7).double(), backend=backend)
    with pytest.raises(ValueError, match="output size"):
        affine(input=torch.randn(2, 4, 1, 1, 1), padding=0, backend=backend)
    with pytest.raises(ValueError, match="activation must be one of"):
        affine(activation="gelu", backend=backend)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        affine(input=X.numpy(), backend=backend)
    for _ in range(2):  # list arguments cannot key a memo: they are checked every time
        with pytest.raises(ValueError, match="padding must be >= 0"):
            affine(padding=[1, -1, 1], backend=backend)


BATCHNORM_BAD = [
    (dict(running_var=None), ValueError, "both be given or both be None"),
    (dict(running_mean=torch.zeros(7)), ValueError, "running_mean must have shape"),
    (dict(bn_weight=torch.ones(8, dtype=torch.float16)), TypeError, "bn_weight dtype"),
    (dict(eps=0.0), ValueError, "eps must be a positive number"),
    (dict(momentum=1.5), ValueError, "momentum must be in"),
    (dict(input=torch.randn(1, 4, 3, 3, 3), padding=0), ValueError, "more than 1 value per channel"),
]


@pytest.mark.parametrize("overrides, error, message", BATCHNORM_BAD)
def test_batchnorm_act_rejects_bad_input_with_clear_error(overrides, error, message):
    with pytest.raises(error, match=message):
        batchnorm(**overrides)


def test_memoised_training_form_checks_let_no_bad_call_through():
    """The training form memoises its checks per argument signature too: every checked property of every
    argument is part of the key."""
    from video3d_fast.ops import functional

    functional._BN_CHECKS.clear()
    batchnorm()  # validated and memoised
    assert len(functional._BN_CHECKS) == 1
    batchnorm()
    for overrides, error, message in BATCHNORM_BAD + [
        (dict(activation="gelu"), ValueError, "activation must be one of"),
        (dict(residual=torch.randn(2, 8, 5, 6, 7).double()), TypeError, "residual dtype"),
    ]:
        with pytest.raises(error, match=message):
            batchnorm(**overrides)


def test_padding_same_resolves_like_nn_conv3d():
    y = affine(padding="same")
    assert y.shape == (2, 8, 5, 6, 7)
    with pytest.raises(ValueError, match="symmetric"):
        affine(weight=torch.randn(8, 4, 2, 3, 3), padding="same")


def test_explicit_backend_that_cannot_run_explains_why():
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        affine(backend="cuda")


def test_available_backends_reports_every_backend_with_a_reason():
    status = ops.available_backends()
    assert set(status) == {"torch", "triton", "cuda", "cpu"}
    assert status["torch"].available and status["torch"].reason == ""
    for s in status.values():
        assert s.available or s.reason, f"{s.name} is unavailable without a reason"
    if not torch.cuda.is_available():
        assert not status["cuda"].available


@pytest.mark.usefixtures("cpu_extension")
def test_cpp_kernels_reject_bad_input_with_runtime_error_not_a_crash():
    kernels = getattr(torch.ops, KERNEL_NAMESPACE)
    conv = ([1, 1, 1], [1, 1, 1], [1, 1, 1], 1)
    with pytest.raises(RuntimeError, match="input must be 5-D"):
        kernels.affine_act_forward(torch.randn(2, 4, 5, 6), W, V, V, None, *conv, True, False)
    with pytest.raises(RuntimeError, match="channels do not match groups"):
        kernels.affine_act_forward(X, torch.randn(8, 3, 3, 3, 3), V, V, None, *conv, True, False)
    with pytest.raises(RuntimeError, match="scale must have shape"):
        kernels.affine_act_forward(X, W, torch.ones(3), V, None, *conv, True, False)
    with pytest.raises(RuntimeError, match="dtype"):
        kernels.batchnorm_act_forward(X, W.double(), V, V, None, *conv, 1e-5, True)
    with pytest.raises(RuntimeError, match="residual has shape"):
        kernels.affine_act_forward(X, W, V, V, torch.randn(2, 8, 5, 6, 6), *conv, True, False)
    with pytest.raises(RuntimeError, match="output size < 1"):
        kernels.affine_act_forward(torch.randn(2, 4, 1, 1, 1), W, V, V, None, [1, 1, 1], [0, 0, 0], [1, 1, 1], 1,
                                   True, False)


@pytest.mark.usefixtures("cpu_extension")
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_bad_input_is_caught_before_any_backend_runs(backend):
    with pytest.raises(ValueError, match="input has 4 channels"):
        affine(weight=torch.randn(8, 3, 3, 3, 3), backend=backend)
