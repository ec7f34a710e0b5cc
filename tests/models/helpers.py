"""Shared helpers of the model tests: the state_dict layout written out from the spec (seed_repo.md section 1,
independently of the model code), the spec's parameter table, narrow model variants and the
fused-vs-unfused comparison."""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import pytest
import torch
import torch.nn as nn

from video3d_fast.models import set_backend

def slow(test):
    """``@pytest.mark.slow``: skipped unless VIDEO3D_FAST_RUN_SLOW=1 (tests/conftest.py)."""
    return pytest.mark.slow(test)

Shape = Tuple[int, ...]
RESNET_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
DENSENET_BLOCKS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32), 264: (6, 12, 64, 48)}

# seed_repo.md section 1.9: (model, depth, options) -> (params in M to 0.01, state_dict entries); 400 classes.
SPEC_PARAMS = [
    ("resnet", 10, {"resnet_shortcut": "A"}, 14.43, 56),
    ("resnet", 10, {}, 14.60, 74),
    ("resnet", 18, {"resnet_shortcut": "A"}, 33.24, 104),
    ("resnet", 18, {}, 33.41, 122),
    ("resnet", 34, {"resnet_shortcut": "A"}, 63.54, 200),
    ("resnet", 34, {}, 63.72, 218),
    ("resnet", 50, {}, 47.02, 320),
    ("resnet", 101, {}, 86.06, 626),
    ("resnet", 152, {}, 118.22, 932),
    ("resnet", 200, {}, 127.42, 1220),
    ("preresnet", 200, {}, 127.42, 1220),
    ("wideresnet", 50, {"legacy_stem": True}, 158.25, 320),
    ("wideresnet", 50, {}, 158.34, 320),
    ("resnext", 101, {"legacy_stem": True}, 48.34, 626),
    ("resnext", 101, {}, 48.43, 626),
    ("densenet", 121, {}, 11.70, 727),
    ("densenet", 201, {}, 26.14, 1207),
    ("resnet2p1d", 18, {}, 33.42, 224),
    ("resnet2p1d", 34, {}, 63.75, 416),
    ("resnet2p1d", 50, {}, 47.04, 422),
]


def _bn(keys: List, prefix: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        keys.append((f"{prefix}.{name}", (c,)))
    keys.append((f"{prefix}.num_batches_tracked", ()))


def expected_state_dict(model: str, depth: int, n_classes: int = 400, shortcut: str = "B", n_input_channels: int = 3,
                        conv1_t_size: int = 7, k: int = 2, cardinality: int = 32,
                        legacy_stem: bool = False) -> List[Tuple[str, Shape]]:
    """(key, shape) in order, as the spec describes the authors' master models."""
    keys: List[Tuple[str, Shape]] = []
    if model == "densenet":
        nf = 64
        keys.append(("features.conv1.weight", (64, n_input_channels, conv1_t_size, 7, 7)))
        _bn(keys, "features.norm1", 64)
        for i, n in enumerate(DENSENET_BLOCKS[depth]):
            for j in range(n):
                p = f"features.denseblock{i + 1}.denselayer{j + 1}"
                _bn(keys, f"{p}.norm1", nf + 32 * j)
                keys.append((f"{p}.conv1.weight", (128, nf + 32 * j, 1, 1, 1)))
                _bn(keys, f"{p}.norm2", 128)
                keys.append((f"{p}.conv2.weight", (32, 128, 3, 3, 3)))
            nf += 32 * n
            if i < 3:
                _bn(keys, f"features.transition{i + 1}.norm", nf)
                keys.append((f"features.transition{i + 1}.conv.weight", (nf // 2, nf, 1, 1, 1)))
                nf //= 2
        _bn(keys, "features.norm5", nf)
        keys += [("classifier.weight", (n_classes, nf)), ("classifier.bias", (n_classes,))]
        return keys

    bottleneck = depth >= 50
    widths, expansion, groups = [64, 128, 256, 512], (4 if bottleneck else 1), 1
    if model == "wideresnet":
        widths, expansion = [w * k for w in widths], 2
    elif model == "resnext":
        widths, expansion, groups = [128, 256, 512, 1024], 2, cardinality
    stem = 64 if legacy_stem else widths[0]
    if model == "resnet2p1d":
        mid = (3 * stem * conv1_t_size * 49) // (3 * 49 + conv1_t_size * stem)
        keys.append(("conv1_s.weight", (mid, n_input_channels, 1, 7, 7)))
        _bn(keys, "bn1_s", mid)
        keys.append(("conv1_t.weight", (stem, mid, conv1_t_size, 1, 1)))
        _bn(keys, "bn1_t", stem)
    else:
        keys.append(("conv1.weight", (stem, n_input_channels, conv1_t_size, 7, 7)))
        _bn(keys, "bn1", stem)
    in_planes = stem
    for s, n_blocks in enumerate(RESNET_BLOCKS[depth]):
        planes = widths[s]
        out = planes * expansion
        for b in range(n_blocks):
            p = f"layer{s + 1}.{b}"
            stride = 2 if s > 0 and b == 0 else 1
            mid = cardinality * planes // 32 if model == "resnext" else planes
            if model == "preresnet":
                _bn(keys, f"{p}.bn1", in_planes)
                if bottleneck:
                    keys.append((f"{p}.conv1.weight", (planes, in_planes, 1, 1, 1)))
                    _bn(keys, f"{p}.bn2", planes)
                    keys.append((f"{p}.conv2.weight", (planes, planes, 3, 3, 3)))
                    _bn(keys, f"{p}.bn3", planes)
                    keys.append((f"{p}.conv3.weight", (out, planes, 1, 1, 1)))
                else:
                    keys.append((f"{p}.conv1.weight", (planes, in_planes, 3, 3, 3)))
                    _bn(keys, f"{p}.bn2", planes)
                    keys.append((f"{p}.conv2.weight", (planes, planes, 3, 3, 3)))
            elif model == "resnet2p1d":
                if bottleneck:
                    keys.append((f"{p}.conv1.weight", (planes, in_planes, 1, 1, 1)))
                    _bn(keys, f"{p}.bn1", planes)
                    m = (planes * planes * 27) // (planes * 9 + 3 * planes)
                    keys.append((f"{p}.conv2_s.weight", (m, planes, 1, 3, 3)))
                    _bn(keys, f"{p}.bn2_s", m)
                    keys.append((f"{p}.conv2_t.weight", (planes, m, 3, 1, 1)))
                    _bn(keys, f"{p}.bn2_t", planes)
                    keys.append((f"{p}.conv3.weight", (out, planes, 1, 1, 1)))
                    _bn(keys, f"{p}.bn3", out)
                else:
                    m1 = (in_planes * planes * 27) // (in_planes * 9 + 3 * planes)
                    keys.append((f"{p}.conv1_s.weight", (m1, in_planes, 1, 3, 3)))
                    _bn(keys, f"{p}.bn1_s", m1)
                    keys.append((f"{p}.conv1_t.weight", (planes, m1, 3, 1, 1)))
                    _bn(keys, f"{p}.bn1_t", planes)
                    m2 = (planes * planes * 27) // (planes * 9 + 3 * planes)
                    keys.append((f"{p}.conv2_s.weight", (m2, planes, 1, 3, 3)))
                    _bn(keys, f"{p}.bn2_s", m2)
                    keys.append((f"{p}.conv2_t.weight", (planes, m2, 3, 1, 1)))
                    _bn(keys, f"{p}.bn2_t", planes)
            elif bottleneck:
                keys.append((f"{p}.conv1.weight", (mid, in_planes, 1, 1, 1)))
                _bn(keys, f"{p}.bn1", mid)
                keys.append((f"{p}.conv2.weight", (mid, mid // groups, 3, 3, 3)))
                _bn(keys, f"{p}.bn2", mid)
                keys.append((f"{p}.conv3.weight", (out, mid, 1, 1, 1)))
                _bn(keys, f"{p}.bn3", out)
            else:
                keys.append((f"{p}.conv1.weight", (planes, in_planes, 3, 3, 3)))
                _bn(keys, f"{p}.bn1", planes)
                keys.append((f"{p}.conv2.weight", (planes, planes, 3, 3, 3)))
                _bn(keys, f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or in_planes != out) and shortcut == "B":
                keys.append((f"{p}.downsample.0.weight", (out, in_planes, 1, 1, 1)))
                _bn(keys, f"{p}.downsample.1", out)
            in_planes = out
    keys += [("fc.weight", (n_classes, in_planes)), ("fc.bias", (n_classes,))]
    return keys


def all_model_depths() -> List[Tuple[str, int]]:
    from video3d_fast.models import MODEL_DEPTHS

    return [(name, depth) for name, depths in MODEL_DEPTHS.items() for depth in depths]


def narrow_options(model: str) -> Dict:
    """generate_model options giving the real depth/topology of ``model`` at a few channels."""
    if model == "densenet":
        return dict(growth_rate=4, num_init_features=8, bn_size=2)
    if model == "resnext":
        return dict(block_inplanes=(32, 64, 64, 128), resnext_cardinality=4)
    return dict(block_inplanes=(4, 8, 8, 16))


def clip_for(model: str, batch: int = 4, dtype=torch.float64) -> torch.Tensor:
    """Small odd-sized clip (float64 convs are slow on CPU); with batch 4 the last stage's BatchNorm still
    sees >= 4 values per channel. DenseNet's three 2x2x2 transitions need T = 16 and H, W >= 32."""
    if model == "densenet":
        return torch.randn(batch, 3, 16, 33, 31, dtype=dtype)
    return torch.randn(batch, 3, 9, 25, 23, dtype=dtype)


def randomize_batchnorm(model: nn.Module, generator: Optional[torch.Generator] = None) -> None:
    """Non-trivial BN affine parameters and running statistics, so eval-mode folding is exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.3, 0.3, generator=generator)
                if m.running_mean is not None:
                    m.running_mean.uniform_(-0.3, 0.3, generator=generator)
                    m.running_var.uniform_(0.5, 2.0, generator=generator)
                    m.num_batches_tracked.fill_(3)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str) -> None:
    """assert_close with ``atol`` relative to the largest magnitude of ``expected`` (gradients of train-mode
    BatchNorm nets reach large magnitudes; tiny elements then only carry absolute rounding)."""
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def compare_fused_unfused(make: Callable[[], nn.Module], x: torch.Tensor, backend: str = "cpu",
                          modes: Sequence[str] = ("train", "eval"), rtol: float = 1e-6, atol: float = 1e-8,
                          fuse_fn: Optional[Callable[[nn.Module, str], nn.Module]] = None) -> None:
    """Outputs, input and parameter gradients and the state_dict after one step agree between the plain
    modules (backend "torch") and the fused ops, in each mode; the state_dict keys are identical."""
    torch.manual_seed(0)
    base = make().to(x.dtype)
    randomize_batchnorm(base)
    for mode in modes:
        ref = copy.deepcopy(base)
        fused = copy.deepcopy(base)
        if fuse_fn is None:
            set_backend(ref, "torch")
            set_backend(fused, backend)
        else:
            fused = fuse_fn(fused, backend)
        assert list(fused.state_dict()) == list(ref.state_dict())
        ref.train(mode == "train")
        fused.train(mode == "train")
        xr = x.clone().requires_grad_(True)
        xf = x.clone().requires_grad_(True)
        yr, yf = ref(xr), fused(xf)
        assert_close_scaled(yf, yr, rtol, atol, f"{mode} output")
        grad = torch.randn_like(yr)
        yr.backward(grad)
        yf.backward(grad)
        assert_close_scaled(xf.grad, xr.grad, rtol, atol, f"{mode} input grad")
        fused_params = dict(fused.named_parameters())
        for name, p in ref.named_parameters():
            assert_close_scaled(fused_params[name].grad, p.grad, rtol, atol, f"{mode} grad of {name}")
        fused_state = fused.state_dict()
        for name, value in ref.state_dict().items():
            assert_close_scaled(fused_state[name], value, rtol, atol, f"{mode} state {name}")


def outputs_and_grads(net: nn.Module, x: torch.Tensor, grad_seed: int = 5) -> List[torch.Tensor]:
    """[output, input grad, parameter grads...] for a fixed output gradient (drawn in float64)."""
    x = x.clone().requires_grad_(True)
    y = net(x)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    y.backward(grad.to(device=y.device, dtype=y.dtype))
    return [y.detach(), x.grad] + [p.grad for p in net.parameters()]


def compare_float32_accuracy(make: Callable[[], nn.Module], x: torch.Tensor, backend: str = "cpu",
                             modes: Sequence[str] = ("train", "eval"),
                             fuse_fn: Optional[Callable[[nn.Module, str], nn.Module]] = None,
                             device: Union[str, torch.device] = "cpu", factor: float = 2.0,
                             slack: float = 1e-5, outlier_factor: float = 10.0) -> None:
    """float32 fused vs float32 unfused, both measured against a float64 run.

    Train-mode BatchNorm backward through a deep narrow net amplifies float32 rounding chaotically, for
    both paths alike, so elementwise fused-vs-unfused tolerances would be meaningless, and the per-tensor
    error ratio fused/unfused is heavy-tailed: on one GPU run a single tensor of 163 reached 4.1x while
    the same kernels on the CPU were 4x *more* accurate than the unfused path on that tensor. Hence two
    checks: the median ratio over all tensors stays within ``factor`` (a systematic precision loss moves
    the whole distribution), and no tensor exceeds ``outlier_factor`` x its unfused error + ``slack`` (a
    wrong kernel gives O(1) errors). The output and input gradient must also stay within 5 % (sanity)."""
    torch.manual_seed(0)
    base = make().double()
    randomize_batchnorm(base)
    base.to(device)
    x64 = x.double().to(device)
    for mode in modes:
        base.train(mode == "train")
        gold = outputs_and_grads(copy.deepcopy(base), x64)
        errors = {}
        for name in ("torch", backend):
            net = copy.deepcopy(base).float()
            net = set_backend(net, name) if fuse_fn is None else fuse_fn(net, name)
            got = outputs_and_grads(net, x64.float())
            errors[name] = [((g.double() - r).norm() / r.norm().clamp_min(1e-30)).item() for g, r in zip(got, gold)]
        pairs = list(zip(errors[backend], errors["torch"]))
        for i, (fused, unfused) in enumerate(pairs):
            assert fused <= outlier_factor * unfused + slack, (mode, i, fused, unfused)
        ratios = sorted((fused + slack) / (unfused + slack) for fused, unfused in pairs)
        assert ratios[len(ratios) // 2] <= factor, (mode, "median fused/unfused error ratio", ratios)
        assert max(errors[backend][:2]) < 0.05, (mode, errors[backend][:2])

