"""Spatial transforms (the authors' set) on uint8 clips, and the batched normalisation.

A clip is a uint8 tensor ``[T, C, H, W]`` (the frames of one sample; contiguous or channels-last). Every
transform draws its random parameters **once per clip** from the ``random.Random`` it is given (the
authors' ``randomize_parameters``) and applies them to all frames at once: crops are slices, resizes one
uint8 ``F.interpolate`` over the T frames (bilinear with antialiasing, like PIL's), flips one ``flip``.
Results stay uint8 (rounded once per resize, as PIL does), so batches cross the DataLoader and the
host-to-device copy at a quarter of float's size;
the conversion to float and the mean/std normalisation happen once per batch, on the device, in
:class:`Normalize`.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "CenterCrop",
    "ColorJitter",
    "Compose",
    "CornerCrop",
    "MultiScaleCornerCrop",
    "Normalize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "MEAN_STD",
    "get_mean_std",
    "resize_clip",
]

Size = Union[int, Tuple[int, int]]


def _check_clip(clip: torch.Tensor) -> None:
    if not isinstance(clip, torch.Tensor):
        raise TypeError(f"clip must be a torch.Tensor, got {type(clip).__name__}")
    if clip.dim() != 4:
        raise ValueError(f"clip must be [T, C, H, W], got shape {tuple(clip.shape)}")
    if clip.dtype != torch.uint8:
        raise TypeError(f"clip must be uint8 (0-255), got {clip.dtype}")


def _pair(size: Size, name: str = "size") -> Tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        out = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        out = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"{name} must be an int or an (h, w) pair, got {size!r}")
    if min(out) < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return out


def resize_clip(clip: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of a uint8 ``[T, C, H, W]`` clip to ``size = (h, w)``; returns uint8.

    Uses torch's uint8 kernel (vectorised, ~10x faster than converting to float on the CPU; fastest on
    channels-last frames, which is how decoded video frames arrive); devices without it take the float path.
    """
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    try:
        return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)
    except (RuntimeError, NotImplementedError):
        out = F.interpolate(clip.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        return out.round_().clamp_(0, 255).to(torch.uint8)


def _crop(clip: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    H, W = clip.shape[-2:]
    if top < 0 or left < 0 or top + h > H or left + w > W:  # crop larger than the frame: zero padding
        pad = (max(0, -left), max(0, left + w - W), max(0, -top), max(0, top + h - H))
        clip = F.pad(clip, pad)
        top, left = top + pad[2], left + pad[0]
    return clip[..., top : top + h, left : left + w]


class Compose:
    """Apply spatial transforms in order to one clip with one random generator."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, clip: torch.Tensor, rng: random.Random) -> torch.Tensor:
        _check_clip(clip)
        for t in self.transforms:
            clip = t(clip, rng)
        return clip

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class Resize:
    """Resize to ``(h, w)``, or with an int, the shorter side to ``size`` keeping the aspect ratio
    (long side ``int(size * long / short)``, as torchvision)."""

    def __init__(self, size: Size):
        self.size = size if isinstance(size, int) else _pair(size)
        _pair(size)

    def __call__(self, clip: torch.Tensor, rng: random.Random = None) -> torch.Tensor:
        H, W = clip.shape[-2:]
        if isinstance(self.size, int):
            if H <= W:
                target = (self.size, int(self.size * W / H))
            else:
                target = (int(self.size * H / W), self.size)
        else:
            target = self.size
        return resize_clip(clip, target)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class CenterCrop:
    """Central ``size`` crop; offsets ``round((H - h) / 2)``, ``round((W - w) / 2)``."""

    def __init__(self, size: Size):
        self.size = _pair(size)

    def __call__(self, clip: torch.Tensor, rng: random.Random = None) -> torch.Tensor:
        h, w = self.size
        H, W = clip.shape[-2:]
        return _crop(clip, int(round((H - h) / 2.0)), int(round((W - w) / 2.0)), h, w)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


_CORNERS = ("c", "tl", "tr", "bl", "br")


def _corner_offsets(H: int, W: int, h: int, w: int, position: str) -> Tuple[int, int]:
    if position == "c":
        return int(round((H - h) / 2.0)), int(round((W - w) / 2.0))
    return {"tl": (0, 0), "tr": (0, W - w), "bl": (H - h, 0), "br": (H - h, W - w)}[position]


class CornerCrop:
    """Square-or-rectangular crop at a fixed position: ``c`` (centre), ``tl``, ``tr``, ``bl``, ``br``."""

    def __init__(self, size: Size, position: str = "c"):
        if position not in _CORNERS:
            raise ValueError(f"position must be one of {_CORNERS}, got {position!r}")
        self.size = _pair(size)
        self.position = position

    def __call__(self, clip: torch.Tensor, rng: random.Random = None) -> torch.Tensor:
        h, w = self.size
        top, left = _corner_offsets(*clip.shape[-2:], h, w, self.position)
        return _crop(clip, top, left, h, w)

    def __repr__(self) -> str:
        return f"CornerCrop({self.size}, {self.position!r})"


class MultiScaleCornerCrop:
    """The CVPR training crop (``--train_crop corner``): a square of side ``int(short_side * scale)``, scale
    drawn from ``scales`` and position from ``crop_positions``, resized to ``size x size``.

    The default scales are ``[1, 2^-1/4, 2^-1/2, 2^-3/4, 2^-1]`` (the authors' 5 scales).
    """

    DEFAULT_SCALES = tuple(2.0 ** (-i / 4) for i in range(5))

    def __init__(self, size: int, scales: Sequence[float] = DEFAULT_SCALES, crop_positions: Sequence[str] = _CORNERS):
        self.size = _pair(size)
        if not scales or any(not (0 < s <= 1) for s in scales):
            raise ValueError(f"scales must be in (0, 1], got {scales!r}")
        bad = [p for p in crop_positions if p not in _CORNERS]
        if bad or not crop_positions:
            raise ValueError(f"crop_positions must be a non-empty subset of {_CORNERS}, got {crop_positions!r}")
        self.scales = tuple(scales)
        self.crop_positions = tuple(crop_positions)

    def __call__(self, clip: torch.Tensor, rng: random.Random) -> torch.Tensor:
        H, W = clip.shape[-2:]
        scale = self.scales[rng.randint(0, len(self.scales) - 1)]
        position = self.crop_positions[rng.randint(0, len(self.crop_positions) - 1)]
        side = max(1, int(min(H, W) * scale))
        top, left = _corner_offsets(H, W, side, side, position)
        return resize_clip(_crop(clip, top, left, side, side), self.size)

    def __repr__(self) -> str:
        return f"MultiScaleCornerCrop({self.size}, scales={[round(s, 4) for s in self.scales]})"


class RandomResizedCrop:
    """The master training crop (``--train_crop random``): a box of area fraction in ``scale`` and aspect
    ratio in ``ratio`` (log-uniform), drawn as torchvision does (10 tries, then a centre fallback), resized
    to ``size``. Defaults are the authors': scale (0.25, 1), ratio (3/4, 4/3)."""

    def __init__(self, size: Size, scale: Tuple[float, float] = (0.25, 1.0), ratio: Tuple[float, float] = (3 / 4, 4 / 3)):
        self.size = _pair(size)
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale!r}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio!r}")
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)

    def box(self, H: int, W: int, rng: random.Random) -> Tuple[int, int, int, int]:
        """(top, left, h, w) of the crop for an ``H x W`` frame."""
        area = H * W
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= W and 0 < h <= H:
                return rng.randint(0, H - h), rng.randint(0, W - w), h, w
        in_ratio = W / H
        if in_ratio < self.ratio[0]:
            w, h = W, int(round(W / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = H, int(round(H * self.ratio[1]))
        else:
            h, w = H, W
        return (H - h) // 2, (W - w) // 2, h, w

    def __call__(self, clip: torch.Tensor, rng: random.Random) -> torch.Tensor:
        top, left, h, w = self.box(*clip.shape[-2:], rng)
        return resize_clip(_crop(clip, top, left, h, w), self.size)

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)})"


class RandomHorizontalFlip:
    """Mirror the whole clip left-right with probability ``p`` (one decision per clip)."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, clip: torch.Tensor, rng: random.Random) -> torch.Tensor:
        return clip.flip(-1) if rng.random() < self.p else clip

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(-3)
    minc, _ = x.min(-3)
    delta = maxc - minc
    v = maxc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, v), dim=-3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [torch.zeros_like(v) for _ in range(3)]
    for k, (rr, gg, bb) in enumerate(choices):
        m = i == k
        out[0] = torch.where(m, rr, out[0])
        out[1] = torch.where(m, gg, out[1])
        out[2] = torch.where(m, bb, out[2])
    return torch.stack(out, dim=-3)


class ColorJitter:
    """Random brightness / contrast / saturation / hue, one draw per clip, in a random order (torchvision's
    semantics: factors uniform in ``[max(0, 1 - a), 1 + a]``, hue shift uniform in ``[-hue, hue]`` turns).
    Contrast blends each frame with its mean grey level. Expects RGB clips (C = 3).

    The authors' ``--colorjitter`` built ``ColorJitter(0, 0, 0, 0)``, a no-op; ours defaults to
    ``(0.4, 0.4, 0.4, 0.1)`` when the flag is given.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1):
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, clip: torch.Tensor, rng: random.Random) -> torch.Tensor:
        if clip.shape[-3] != 3:
            raise ValueError(f"ColorJitter needs RGB clips (3 channels), got {clip.shape[-3]}")
        order = [0, 1, 2, 3]
        rng.shuffle(order)
        factors = [rng.uniform(max(0.0, 1 - a), 1 + a) for a in (self.brightness, self.contrast, self.saturation)]
        hue_shift = rng.uniform(-self.hue, self.hue)
        x = clip.float() / 255.0
        for op in order:
            if op == 0 and self.brightness > 0:
                x = (x * factors[0]).clamp_(0, 1)
            elif op == 1 and self.contrast > 0:
                mean = _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
                x = (factors[1] * x + (1 - factors[1]) * mean).clamp_(0, 1)
            elif op == 2 and self.saturation > 0:
                x = (factors[2] * x + (1 - factors[2]) * _grayscale(x)).clamp_(0, 1)
            elif op == 3 and self.hue > 0:
                hsv = _rgb_to_hsv(x)
                hsv[..., 0, :, :] = (hsv[..., 0, :, :] + hue_shift) % 1.0
                x = _hsv_to_rgb(hsv)
        return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)

    def __repr__(self) -> str:
        return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation}, {self.hue})"


# Normalisation constants, at value scale 1 (inputs in [0, 1]). The "_2018" entries are the CVPR-era
# 0-255 constants divided by 255: use them with value_scale=255 and no std to feed 2018 checkpoints exactly
# "RGB in 0-255 minus [114.7748, 107.7354, 99.4750]".
MEAN_STD = {
    "kinetics": ((0.4345, 0.4051, 0.3775), (0.2768, 0.2713, 0.2737)),
    "activitynet": ((0.4477, 0.4209, 0.3906), (0.2767, 0.2695, 0.2714)),
    "0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "activitynet_2018": (
        tuple(v / 255 for v in (114.7748, 107.7354, 99.4750)),
        tuple(v / 255 for v in (38.7568578, 37.88248729, 40.02898126)),
    ),
    "kinetics_2018": (
        tuple(v / 255 for v in (110.63666788, 103.16065604, 96.29023126)),
        tuple(v / 255 for v in (38.7568578, 37.88248729, 40.02898126)),
    ),
}


def get_mean_std(
    value_scale: float = 1.0, dataset: str = "kinetics", no_mean_norm: bool = False, no_std_norm: bool = False
) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Mean and std at ``value_scale`` (1: inputs in [0, 1]; 255: inputs in [0, 255]), like the authors'
    ``get_mean_std`` plus ``--no_mean_norm`` / ``--no_std_norm``.

    2020 checkpoints: ``value_scale=1, dataset="kinetics"``. 2018 (CVPR) checkpoints:
    ``value_scale=255, dataset="activitynet_2018", no_std_norm=True``.
    """
    if dataset not in MEAN_STD:
        raise ValueError(f"mean_dataset must be one of {sorted(MEAN_STD)}, got {dataset!r}")
    if value_scale <= 0:
        raise ValueError(f"value_scale must be positive, got {value_scale}")
    mean, std = MEAN_STD[dataset]
    mean = tuple(0.0 for _ in mean) if no_mean_norm else tuple(m * value_scale for m in mean)
    std = tuple(1.0 for _ in std) if no_std_norm else tuple(s * value_scale for s in std)
    return mean, std


class Normalize(torch.nn.Module):
    """uint8 (or float 0-255) clips -> float network input: ``(x / 255 * value_scale - mean) / std``.

    Works on one clip ``[C, T, H, W]`` or a batch ``[N, C, T, H, W]`` on any device, as one multiply-add
    per element. ``mean``/``std`` are at ``value_scale`` (see :func:`get_mean_std`); with 2 input channels
    (optical flow) the first 2 entries are used, as the authors do.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], value_scale: float = 1.0, n_channels: int = 3):
        super().__init__()
        mean = torch.tensor(list(mean)[:n_channels], dtype=torch.float32)
        std = torch.tensor(list(std)[:n_channels], dtype=torch.float32)
        if (std <= 0).any():
            raise ValueError(f"std must be positive, got {std.tolist()}")
        scale = value_scale / 255.0 / std
        self.register_buffer("scale", scale.view(-1, 1, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(-1, 1, 1, 1), persistent=False)
        self.value_scale = value_scale

    def forward(self, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        if x.dim() not in (4, 5):
            raise ValueError(f"expected [C, T, H, W] or [N, C, T, H, W], got shape {tuple(x.shape)}")
        if x.shape[-4] != self.scale.shape[0]:
            raise ValueError(f"expected {self.scale.shape[0]} channels, got {x.shape[-4]}")
        out = torch.addcmul(self.shift, x.float(), self.scale)
        return out if dtype is None else out.to(dtype)
