"""The direct launch of compiled Triton kernels (``backends/triton/common.launch``), on a stand-in kernel.

On a GPU every kernel test goes through it; here (interpreter, where it is off) a stand-in JIT function
pins the caching rules: the JIT compiles once per specialisation, later calls go to the compiled kernel
with the constexprs in parameter order, and anything the JIT specialises on makes a new entry.
"""
from __future__ import annotations

import pytest
import torch

from video3d_fast.ops.backends.triton import common


class _Compiled:
    """What Triton's JIT returns: a launcher taking grid, stream, function, metadata, hooks, args."""

    def __init__(self, calls):
        self.calls, self.function, self.packed_metadata = calls, "fn", "meta"

    def run(self, gx, gy, gz, stream, function, metadata, launch_metadata, enter, exit_, *args):
        self.calls.append(("direct", (gx, gy, gz), stream, args))


class _Kernel:
    """Stand-in for a JITFunction with parameters (x_ptr, y_ptr, n, BLOCK, FLAG), or with a float parameter
    before the constexprs when made with ``with_float=True``."""

    def __init__(self, with_float: bool = False):
        self.calls = []
        self.arg_names = ["x_ptr", "y_ptr", "n"] + (["eps"] if with_float else []) + ["BLOCK", "FLAG"]

    def __getitem__(self, grid):
        def jit(*args, **kwargs):
            self.calls.append(("jit", grid, args, kwargs))
            return _Compiled(self.calls)
        return jit


@pytest.fixture
def direct(monkeypatch):
    monkeypatch.setattr(common, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(common, "_compiled", {})
    monkeypatch.setattr(common, "_launch_hooks_set", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1234, raising=False)


def test_second_call_launches_the_compiled_kernel_with_constexprs_in_parameter_order(direct):
    k = _Kernel()
    x, y = torch.randn(64), torch.randn(64)
    consts = dict(FLAG=True, BLOCK=32, num_warps=4)  # kwargs order differs from the parameter order
    common.launch(k, (3,), (x, y), (64,), consts)
    common.launch(k, (3,), (x, y), (64,), consts)
    assert [c[0] for c in k.calls] == ["jit", "direct"]
    assert k.calls[0][2] == (x, y, 64) and k.calls[0][3] == consts
    _, grid, stream, args = k.calls[1]
    assert grid == (3, 1, 1) and stream == 1234
    assert args[:2] == (x, y) and args[2:] == (64, 32, True)  # n, BLOCK, FLAG; num_warps is an option


@pytest.mark.parametrize("change", ["dtype", "alignment", "int_arg", "constexpr"])
def test_anything_the_jit_specialises_on_takes_the_jit_again(direct, change):
    k = _Kernel()
    base = torch.randn(65)
    x, y, n, consts = base[:64], torch.randn(64), 64, dict(BLOCK=32, FLAG=False)
    common.launch(k, (1,), (x, y), (n,), consts)
    if change == "dtype":
        x = x.double()
    elif change == "alignment":
        x = base[1:]  # 4 bytes past a 16-byte boundary
        assert x.data_ptr() % 16
    elif change == "int_arg":
        n = 1
    else:
        consts = dict(BLOCK=64, FLAG=False)
    common.launch(k, (1,), (x, y), (n,), consts)
    assert [c[0] for c in k.calls] == ["jit", "jit"]


def test_a_launch_hook_or_the_switch_keeps_every_call_on_the_jit(direct, monkeypatch):
    k = _Kernel()
    x = torch.randn(16)
    monkeypatch.setattr(common, "_launch_hooks_set", lambda: True)
    for _ in range(2):
        common.launch(k, (1,), (x, x), (16,), dict(BLOCK=16, FLAG=True))
    monkeypatch.setattr(common, "_launch_hooks_set", lambda: False)
    monkeypatch.setattr(common, "DIRECT_LAUNCH", False)
    for _ in range(2):
        common.launch(k, (1,), (x, x), (16,), dict(BLOCK=16, FLAG=True))
    assert [c[0] for c in k.calls] == ["jit"] * 4


def test_float_arguments_are_not_specialised_and_reach_the_compiled_kernel(direct):
    """A float argument (a momentum factor that changes every step) neither makes a new JIT call and cache
    entry per value nor gets frozen at its first value."""
    k = _Kernel(with_float=True)
    x = torch.randn(16)
    consts = dict(BLOCK=16, FLAG=True)
    for factor in (0.5, 1 / 3, 0.25):
        common.launch(k, (1,), (x, x), (16,), consts, floats=(factor,))
    assert [c[0] for c in k.calls] == ["jit", "direct", "direct"]
    assert k.calls[0][2] == (x, x, 16, 0.5)
    assert [c[3][2:] for c in k.calls[1:]] == [(16, 1 / 3, 16, True), (16, 0.25, 16, True)]
    assert len(common._compiled) == 1


def test_a_float_among_the_integer_arguments_is_refused(direct):
    """Integer arguments are part of the cache key as they are: a float there would make one entry per value."""
    k = _Kernel(with_float=True)
    x = torch.randn(16)
    with pytest.raises(TypeError, match="floats="):
        common.launch(k, (1,), (x, x), (16, 0.5), dict(BLOCK=16, FLAG=True))
    assert k.calls == []


def test_a_plan_token_stands_for_its_arguments_in_the_key(direct):
    """Launches of a LaunchPlan key on its token: the same plan goes direct from its second launch, another
    plan with the same arguments takes the JIT once (tokens are unique), and tensors still count."""
    k = _Kernel()
    x, y = torch.randn(64), torch.randn(64)
    plans = [common.LaunchPlan(None, (2,), (64,), dict(BLOCK=32, FLAG=False)) for _ in range(2)]
    assert plans[0].token != plans[1].token and plans[0] == plans[1]
    for plan in (plans[0], plans[0], plans[1], plans[1]):
        common.launch(k, plan.grid, (x, y), plan.args, plan.constexprs, plan_token=plan.token)
    common.launch(k, plans[0].grid, (x.double(), y), plans[0].args, plans[0].constexprs, plan_token=plans[0].token)
    assert [c[0] for c in k.calls] == ["jit", "direct", "jit", "direct", "jit"]
    assert k.calls[1][3] == (x, y, 64, 32, False)
