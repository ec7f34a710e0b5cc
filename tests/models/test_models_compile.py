"""torch.compile(fullgraph=True) runs a fused model (cpu backend): same outputs, gradients and BatchNorm
statistics as eager fused execution, and as the plain modules."""
from __future__ import annotations

import copy

import pytest
import torch

from video3d_fast.models import generate_model, set_backend

pytestmark = pytest.mark.usefixtures("cpu_extension")


def test_compiled_fused_model_matches_eager_in_train_and_eval():
    torch.manual_seed(0)
    model = generate_model("resnet", 10, n_classes=3, block_inplanes=(4, 8, 8, 16), conv1_t_size=3, no_max_pool=True,
                           backend="cpu")
    eager = copy.deepcopy(model)
    plain = set_backend(copy.deepcopy(model), "torch")
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 8, 32, 32)
    for mode in ("train", "eval"):
        for net in (compiled, eager, plain):
            net.train(mode == "train")
        y, ye, yp = compiled(x), eager(x), plain(x)
        torch.testing.assert_close(y, ye, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(y, yp, rtol=1e-4, atol=1e-4)
        if mode == "train":
            y.square().sum().backward()
            ye.square().sum().backward()
            for (name, p), q in zip(model.named_parameters(), eager.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6,
                                           msg=lambda m, name=name: f"{name}: {m}")
            assert model.bn1.num_batches_tracked.item() == eager.bn1.num_batches_tracked.item() == 1
            torch.testing.assert_close(model.layer4[0].bn2.running_var, eager.layer4[0].bn2.running_var)
