"""Helpers shared by the op tests: random problems, tolerances, error metrics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

# ‖out − ref‖ / ‖ref‖ bounds per dtype: fp32 arithmetic (oneDNN/cuDNN may reorder sums), fp64 tight,
# half-precision outputs rounded once (the reference rounds at the same points).
REL_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.detach().double(), ref.detach().double()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out64).all(), "non-finite values (unwritten output?)"
    denom = ref64.norm().item()
    return (out64 - ref64).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str, factor: float = 1.0) -> None:
    err = rel_err(out, ref)
    assert err <= REL_TOL[dtype] * factor, f"{what}: relative error {err:.3g} > {REL_TOL[dtype] * factor:.3g}"


@dataclass
class ConvProblem:
    n: int = 2
    c: int = 8
    k: int = 12
    size: Tuple[int, int, int] = (5, 6, 7)
    kernel: Tuple[int, int, int] = (3, 3, 3)
    stride: Tuple[int, int, int] = (1, 1, 1)
    padding: Tuple[int, int, int] = (1, 1, 1)
    dilation: Tuple[int, int, int] = (1, 1, 1)
    groups: int = 1
    dtype: torch.dtype = torch.float32
    layout: str = "ncdhw"  # "ncdhw", "ndhwc" (channels_last_3d) or "strided" (a non-dense view)
    residual: bool = False

    @property
    def conv_kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def out_size(self):
        return tuple(
            (self.size[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1) // self.stride[i] + 1
            for i in range(3)
        )

    def make(self, generator: Optional[torch.Generator] = None, device="cpu"):
        """Fresh random input, weight, per-channel vectors and residual (never zeros), on ``device``
        and in the problem's layout."""
        g = generator
        x = torch.randn(self.n, self.c, *self.size, generator=g, dtype=torch.float64)
        fan_in = (self.c // self.groups) * self.kernel[0] * self.kernel[1] * self.kernel[2]
        w = torch.randn(self.k, self.c // self.groups, *self.kernel, generator=g, dtype=torch.float64) / fan_in**0.5
        vec_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        scale = (torch.rand(self.k, generator=g, dtype=torch.float64) + 0.5).to(vec_dtype)
        shift = torch.randn(self.k, generator=g, dtype=torch.float64).to(vec_dtype) * 0.5
        res = None
        if self.residual:
            res = torch.randn(self.n, self.k, *self.out_size(), generator=g, dtype=torch.float64)
        x = apply_layout(x.to(device=device, dtype=self.dtype), self.layout)
        w = w.to(device=device, dtype=self.dtype)
        if res is not None:
            res = apply_layout(res.to(device=device, dtype=self.dtype), self.layout)
        return [x, w, scale.to(device), shift.to(device), res]


def apply_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "ndhwc":
        return t.contiguous(memory_format=torch.channels_last_3d)
    if layout == "strided":
        # Same values, non-dense memory: every other element along W of a twice-as-wide buffer.
        wide = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device).normal_()
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


def leaf(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A fresh autograd leaf with the same values *and strides* (clone() would densify strided views)."""
    return None if t is None else t.detach().requires_grad_(True)
