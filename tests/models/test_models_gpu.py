"""Models on a CUDA device with the GPU backends (run by benchmarks/gpu_suite.sh): fused execution is as
accurate as the plain modules (both judged against a float64 run) in train and eval mode, and close under
bf16 autocast. TF32 is switched off for the float32 comparison: with it (PyTorch's default for cuDNN convs)
every path's float32 error is dominated by TF32 rounding."""
from __future__ import annotations

import functools

import pytest
import torch

from video3d_fast import ops
from video3d_fast.models import generate_model, set_backend

from .helpers import clip_for, compare_float32_accuracy, narrow_options

pytestmark = pytest.mark.gpu

# ResNeXt-50 covers bottlenecks, grouped convs, projection shortcuts; PreAct-10 the conv-only units and shortcut A.
MODELS = [("resnext", 50, {}), ("preresnet", 10, {"resnet_shortcut": "A"})]


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("model,depth,options", MODELS, ids=lambda v: str(v))
def test_fused_models_on_cuda_are_as_accurate_as_unfused(no_tf32, backend, model, depth, options):
    status = ops.available_backends()[backend]
    if not status.available:
        pytest.skip(f"{backend} backend unavailable: {status.reason}")
    make = functools.partial(generate_model, model, depth, n_classes=4, **narrow_options(model), **options)
    # measured on an H200: per-tensor fused/unfused error ratios up to 4.1x (one tensor of 163) and down to
    # 1/4; see compare_float32_accuracy for why the median and an outlier bound are what is checked
    compare_float32_accuracy(make, clip_for(model), backend=backend, device="cuda", factor=2.0, slack=1e-4)


def test_auto_picks_a_gpu_backend_and_bf16_autocast_is_close_to_float32(no_tf32):
    assert ops.resolve_backend("auto", torch.device("cuda")) in ("triton", "cuda", "torch")
    torch.manual_seed(0)
    net = generate_model("resnext", 50, n_classes=4, **narrow_options("resnext")).cuda().eval()
    x = clip_for("resnext", dtype=torch.float32).cuda()
    with torch.no_grad():
        reference = set_backend(net, "torch")(x)
        set_backend(net, "auto")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fused = net(x)
    assert ((fused.float() - reference).norm() / reference.norm()).item() < 5e-2
