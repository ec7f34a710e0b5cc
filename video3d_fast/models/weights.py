"""The authors' published checkpoints (and torchvision's r3d_18) as weight enums in the style of torchvision's
multi-weight API: each entry carries the file name, where to get it, the model options it needs, the
number of classes, the input normalisation, a preprocessing preset and the accuracy reported for it.

    from video3d_fast.models import r3d_50, R3D_50_Weights
    w = R3D_50_Weights.KINETICS700_200EP
    model = r3d_50(weights=w, weights_path="~/Downloads/r3d50_K_200ep.pth")   # 700 classes, hash-checked
    clip = w.transforms()(uint8_frames)        # (T, C, H, W) uint8 -> (C, T, 112, 112) normalised

The authors' files live in Google Drive folders (no direct URLs): download them by hand and pass the
file (or its folder) as ``weights_path``, or put them in ``$VIDEO3D_FAST_WEIGHTS`` or
``<torch.hub.get_dir()>/checkpoints``. Entries with a URL (torchvision's) download there on first use.
Checksums: checked whenever one is known (``sha256`` of the entry, or the one you pass); the authors never
published checksums, so their entries have none until you record one (``sha256=`` argument).
Class order: the authors' Kinetics labels are in order of first appearance in the training CSV (their
``kinetics_json.py``); torchvision's are alphabetical. ``meta["categories"]`` is None where the names are
not shipped here.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import normalise_state_dict, read_checkpoint, _split_checkpoint

__all__ = [
    "ACTIVITYNET_MEAN_0_255",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "ClipPreprocess",
    "Weights",
    "WeightsEnum",
    "R3D_18_Weights",
    "R3D_34_Weights",
    "R3D_50_Weights",
    "R3D_101_Weights",
    "R3D_152_Weights",
    "R3D_200_Weights",
    "PreActR3D_200_Weights",
    "WideR3D_50_Weights",
    "ResNeXt3D_101_Weights",
    "DenseNet3D_121_Weights",
    "DenseNet3D_201_Weights",
    "R2Plus1D_18_Weights",
    "R2Plus1D_34_Weights",
    "R2Plus1D_50_Weights",
    "TorchvisionR3D_18_Weights",
    "sha256_of_file",
]

# Normalisation constants (seed_repo.md section 4.5; ecosystem.md section 1.2).
KINETICS_MEAN = (0.4345, 0.4051, 0.3775)  # master, [0, 1] inputs
KINETICS_STD = (0.2768, 0.2713, 0.2737)
ACTIVITYNET_MEAN_0_255 = (114.7748, 107.7354, 99.4750)  # CVPR-era weights: 0-255 inputs, no std
TORCHVISION_MEAN = (0.43216, 0.394666, 0.37645)
TORCHVISION_STD = (0.22803, 0.22145, 0.216989)

CVPR2018_DRIVE = "https://drive.google.com/drive/folders/1zvl89AgFAApbH0At-gMuZSeQB_LpNP-M"
MASTER2020_DRIVE = "https://drive.google.com/drive/folders/1xbYbZ7rpyjftI_KCk6YuL-XrfQDz7Yd4"


class ClipPreprocess(nn.Module):
    """Clip preprocessing preset: resize, centre crop, value scaling, normalisation, layout.

    Input: a video tensor (..., T, C, H, W) (torchvision's layout; leading batch dims allowed), uint8 (0-255)
    or float in [0, 1]. Output: float32 (..., C, T, crop_h, crop_w) = ``(x * value_scale - mean) / std``.
    ``resize_size``: an int resizes the shorter side (the authors' ``Resize(112)``), a pair gives (H, W).
    Bilinear with antialiasing, close to the authors' PIL resize (not bit-identical).
    """

    def __init__(self, crop_size: Union[int, Tuple[int, int]] = 112, resize_size: Union[int, Tuple[int, int]] = 112,
                 mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD, value_scale: float = 1.0,
                 antialias: bool = True):
        super().__init__()
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.resize_size = resize_size if isinstance(resize_size, int) else tuple(resize_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need the same length, got {len(self.mean)} and {len(self.std)}")
        self.value_scale = float(value_scale)
        self.antialias = antialias

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if not isinstance(video, torch.Tensor) or video.dim() < 4:
            raise ValueError("video must be a tensor (..., T, C, H, W)")
        if video.shape[-3] != len(self.mean):
            raise ValueError(f"video has {video.shape[-3]} channels (dim -3), mean/std have {len(self.mean)}")
        lead, (t, c, h, w) = video.shape[:-4], video.shape[-4:]
        x = video.reshape(-1, c, h, w)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if isinstance(self.resize_size, int):
            scale = self.resize_size / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
        else:
            size = self.resize_size
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias)
        ch, cw = self.crop_size
        top, left = int(round((x.shape[-2] - ch) / 2.0)), int(round((x.shape[-1] - cw) / 2.0))
        if top < 0 or left < 0:
            raise ValueError(f"resized frames {tuple(x.shape[-2:])} are smaller than the crop {self.crop_size}")
        x = x[..., top:top + ch, left:left + cw]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x * self.value_scale - mean) / std
        x = x.reshape(*lead, t, c, ch, cw)
        return x.transpose(-4, -3)  # (..., C, T, H, W)

    def extra_repr(self) -> str:
        return (f"crop_size={self.crop_size}, resize_size={self.resize_size}, mean={self.mean}, std={self.std}, "
                f"value_scale={self.value_scale}")


_MASTER_PRESET = partial(ClipPreprocess, crop_size=112, resize_size=112, mean=KINETICS_MEAN, std=KINETICS_STD)
_CVPR_PRESET = partial(ClipPreprocess, crop_size=112, resize_size=112, mean=ACTIVITYNET_MEAN_0_255,
                       std=(1.0, 1.0, 1.0), value_scale=255.0)
_TORCHVISION_PRESET = partial(ClipPreprocess, crop_size=112, resize_size=(128, 171), mean=TORCHVISION_MEAN,
                              std=TORCHVISION_STD, antialias=False)


@dataclass(frozen=True)
class Weights:
    """One checkpoint. ``model_kwargs``: the ``generate_model`` options it needs (model, depth, classes, ...).
    ``checkpoint_format``: "master", "cvpr2018" or "torchvision" (conversion applied on load)."""

    file_name: str
    url: Optional[str]
    sha256: Optional[str]
    transforms: Callable[..., nn.Module]
    model_kwargs: Dict[str, Any]
    checkpoint_format: str
    meta: Dict[str, Any] = field(default_factory=dict)


def sha256_of_file(path: Union[str, os.PathLike]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(path: Path, expected: str) -> None:
    actual = sha256_of_file(path)
    if not actual.startswith(expected):
        raise RuntimeError(f"invalid hash for {path}: sha256 {actual} does not start with {expected}; the file "
                           "is corrupt or not the published checkpoint")


def weights_search_dirs() -> Tuple[Path, ...]:
    """Folders searched for checkpoint files: ``$VIDEO3D_FAST_WEIGHTS`` and torch.hub's checkpoints folder."""
    dirs = []
    if os.environ.get("VIDEO3D_FAST_WEIGHTS"):
        dirs.append(Path(os.environ["VIDEO3D_FAST_WEIGHTS"]).expanduser())
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return tuple(dirs)


class WeightsEnum(Enum):
    """Base of the weight enums; members' values are :class:`Weights` (their fields read as attributes)."""

    @classmethod
    def verify(cls, obj: Any) -> Optional["WeightsEnum"]:
        """None, a member, or a member name ("KINETICS700_200EP" or "R3D_50_Weights.KINETICS700_200EP")."""
        if obj is None or isinstance(obj, cls):
            return obj
        if isinstance(obj, str):
            name = obj[len(cls.__name__) + 1:] if obj.startswith(cls.__name__ + ".") else obj
            try:
                return cls[name]
            except KeyError:
                raise ValueError(f"{obj!r} is not a member of {cls.__name__}: {[m.name for m in cls]}") from None
        raise TypeError(f"weights must be None, a {cls.__name__} member or its name, got {type(obj).__name__}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("name", "value"):
            raise AttributeError(name)
        return getattr(self.value, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def resolve_file(self, path: Optional[Union[str, os.PathLike]] = None, progress: bool = True,
                     hash_prefix: Optional[str] = None) -> Path:
        """The local checkpoint file: ``path`` (a file, or a folder holding ``file_name``), else the search
        folders, else a download of ``url`` into torch.hub's checkpoints folder (verified against
        ``hash_prefix`` before it is kept). FileNotFoundError otherwise."""
        w: Weights = self.value
        if path is not None:
            p = Path(os.fspath(path)).expanduser()
            p = p / w.file_name if p.is_dir() else p
            if not p.is_file():
                raise FileNotFoundError(f"checkpoint for {self!r} not found at {p}")
            return p
        for folder in weights_search_dirs():
            if (folder / w.file_name).is_file():
                return folder / w.file_name
        if w.url is None:
            raise FileNotFoundError(
                f"{w.file_name} not found in {[str(d) for d in weights_search_dirs()]}; download it from "
                f"{w.meta.get('source', 'the authors')} and pass weights_path=<file or folder>"
            )
        target = weights_search_dirs()[-1] / w.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(w.url, str(target), hash_prefix=hash_prefix, progress=progress)
        return target

    def get_state_dict(self, path: Optional[Union[str, os.PathLike]] = None, *, progress: bool = True,
                       check_hash: bool = True, sha256: Optional[str] = None) -> "Dict[str, torch.Tensor]":
        """The checkpoint's state_dict in this package's key layout (CVPR-era and torchvision files converted).

        ``path``/``progress``: see :meth:`resolve_file`. ``sha256``: expected digest (or a prefix of >= 8 hex
        digits), default the entry's; checked when known and ``check_hash``. Read with weights_only=True.
        """
        expected = (sha256 or self.value.sha256) if check_hash else None
        if expected is not None:
            expected = expected.lower()
            if len(expected) < 8 or any(ch not in "0123456789abcdef" for ch in expected):
                raise ValueError(f"sha256 must be at least 8 hex digits, got {expected!r}")
        file = self.resolve_file(path, progress, hash_prefix=expected)
        if expected is not None:
            _check_hash(file, expected)
        state_dict, _ = _split_checkpoint(read_checkpoint(file))
        converted, fmt = normalise_state_dict(state_dict)
        if (fmt == "torchvision") != (self.value.checkpoint_format == "torchvision"):
            raise ValueError(f"{file} looks like a {fmt} checkpoint, but {self!r} is a "
                             f"{self.value.checkpoint_format} one")
        return converted


def _cvpr(file_name: str, model_kwargs: Dict[str, Any], metrics: Dict[str, float], **meta) -> Weights:
    kwargs = {"n_classes": 400, **model_kwargs}
    return Weights(
        file_name=file_name, url=None, sha256=None, transforms=_CVPR_PRESET, model_kwargs=kwargs,
        checkpoint_format="cvpr2018",
        meta={
            "num_classes": kwargs["n_classes"], "categories": None, "dataset": "Kinetics-400",
            "source": CVPR2018_DRIVE, "recipe": "CVPR 2018 paper (branch CVPR2018)", "sample_duration": 16,
            "sample_size": 112, "input": "RGB 0-255 minus the ActivityNet mean, no std division", "metrics": metrics,
            "metrics_note": "Kinetics-400 val, video level (softmax averaged over non-overlapping 16-frame "
                            "centre-cropped clips); top-1/top-5 from the paper's table, their average from the "
                            "authors' README",
            **meta,
        },
    )


_DATASETS_2020 = {
    "K": ("Kinetics-700", 700), "KM": ("Kinetics-700 + Moments in Time", 1039),
    "KMS": ("Kinetics-700 + Moments in Time + STAIR-Actions", 1139), "KS": ("Kinetics-700 + STAIR-Actions", 800),
    "M": ("Moments in Time", 339), "MS": ("Moments in Time + STAIR-Actions", 439), "S": ("STAIR-Actions", 100),
}


def _master(file_stem: str, model: str, depth: int, data: str) -> Weights:
    dataset, classes = _DATASETS_2020[data]
    return Weights(
        file_name=f"{file_stem}_{data}_200ep.pth", url=None, sha256=None, transforms=_MASTER_PRESET,
        model_kwargs=dict(model=model, model_depth=depth, n_classes=classes), checkpoint_format="master",
        meta=dict(num_classes=classes, categories=None, dataset=dataset, source=MASTER2020_DRIVE,
                  recipe="master defaults, 200 epochs (Kataoka et al., arXiv 2004.04968)", sample_duration=16,
                  sample_size=112, input="RGB in [0, 1] normalised with the Kinetics mean/std", metrics={},
                  metrics_note="the authors report no accuracy for these pre-training checkpoints"),
    )


def _paper_kinetics(top1: float, top5: float, average: float) -> Dict[str, float]:
    return {"kinetics400_val_top1": top1, "kinetics400_val_top5": top5, "kinetics400_val_top1_top5_average": average}


class R3D_18_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("resnet-18-kinetics.pth", dict(model="resnet", model_depth=18, resnet_shortcut="A"),
                                 _paper_kinetics(54.2, 78.1, 66.1))
    KINETICS700_200EP = _master("r3d18", "resnet", 18, "K")
    KINETICS700_MIT_200EP = _master("r3d18", "resnet", 18, "KM")
    DEFAULT = KINETICS700_200EP


class R3D_34_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("resnet-34-kinetics.pth", dict(model="resnet", model_depth=34, resnet_shortcut="A"),
                                 _paper_kinetics(60.1, 81.9, 71.0))
    KINETICS700_200EP = _master("r3d34", "resnet", 34, "K")
    KINETICS700_MIT_200EP = _master("r3d34", "resnet", 34, "KM")
    DEFAULT = KINETICS700_200EP


class R3D_50_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("resnet-50-kinetics.pth", dict(model="resnet", model_depth=50),
                                 _paper_kinetics(61.3, 83.1, 72.2))
    KINETICS700_200EP = _master("r3d50", "resnet", 50, "K")
    KINETICS700_MIT_200EP = _master("r3d50", "resnet", 50, "KM")
    KINETICS700_MIT_STAIR_200EP = _master("r3d50", "resnet", 50, "KMS")
    KINETICS700_STAIR_200EP = _master("r3d50", "resnet", 50, "KS")
    MIT_200EP = _master("r3d50", "resnet", 50, "M")
    MIT_STAIR_200EP = _master("r3d50", "resnet", 50, "MS")
    STAIR_200EP = _master("r3d50", "resnet", 50, "S")
    DEFAULT = KINETICS700_200EP


class R3D_101_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("resnet-101-kinetics.pth", dict(model="resnet", model_depth=101),
                                 _paper_kinetics(62.8, 83.9, 73.3))
    KINETICS700_200EP = _master("r3d101", "resnet", 101, "K")
    KINETICS700_MIT_200EP = _master("r3d101", "resnet", 101, "KM")
    DEFAULT = KINETICS700_200EP


class R3D_152_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("resnet-152-kinetics.pth", dict(model="resnet", model_depth=152),
                                 _paper_kinetics(63.0, 84.4, 73.7))
    KINETICS700_200EP = _master("r3d152", "resnet", 152, "K")
    KINETICS700_MIT_200EP = _master("r3d152", "resnet", 152, "KM")
    DEFAULT = KINETICS700_200EP


class R3D_200_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("resnet-200-kinetics.pth", dict(model="resnet", model_depth=200),
                                 _paper_kinetics(63.1, 84.4, 73.7))
    KINETICS700_200EP = _master("r3d200", "resnet", 200, "K")
    KINETICS700_MIT_200EP = _master("r3d200", "resnet", 200, "KM")
    DEFAULT = KINETICS700_200EP


class PreActR3D_200_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("preresnet-200-kinetics.pth", dict(model="preresnet", model_depth=200),
                                 {"kinetics400_val_top1_top5_average": 73.4},
                                 metrics_note="Kinetics-400 val, video level; average of top-1 and top-5 from the "
                                              "authors' README (the paper gives about 63/84)")
    DEFAULT = KINETICS400_CVPR2018


class WideR3D_50_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("wideresnet-50-kinetics.pth",
                                 dict(model="wideresnet", model_depth=50, wide_resnet_k=2, legacy_stem=True),
                                 _paper_kinetics(64.1, 85.3, 74.7))
    DEFAULT = KINETICS400_CVPR2018


_FINETUNE_NOTE = ("fine-tuned from Kinetics (conv5_x + fc) on split 1; the paper's accuracy is the top-1 video "
                  "accuracy averaged over the 3 splits")


class ResNeXt3D_101_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("resnext-101-kinetics.pth",
                                 dict(model="resnext", model_depth=101, resnext_cardinality=32, legacy_stem=True),
                                 _paper_kinetics(65.1, 85.7, 75.4))
    KINETICS400_64F_CVPR2018 = _cvpr("resnext-101-64f-kinetics.pth",
                                     dict(model="resnext", model_depth=101, resnext_cardinality=32, legacy_stem=True),
                                     {}, sample_duration=64,
                                     metrics_note="64-frame input; the paper's Kinetics numbers for it are not "
                                                  "reproduced here")
    UCF101_SPLIT1_CVPR2018 = _cvpr("resnext-101-kinetics-ucf101_split1.pth",
                                   dict(model="resnext", model_depth=101, legacy_stem=True, n_classes=101),
                                   {"ucf101_top1_3split_average": 90.7}, dataset="UCF-101 split 1",
                                   metrics_note=_FINETUNE_NOTE)
    HMDB51_SPLIT1_CVPR2018 = _cvpr("resnext-101-kinetics-hmdb51_split1.pth",
                                   dict(model="resnext", model_depth=101, legacy_stem=True, n_classes=51),
                                   {"hmdb51_top1_3split_average": 63.8}, dataset="HMDB-51 split 1",
                                   metrics_note=_FINETUNE_NOTE)
    UCF101_64F_SPLIT1_CVPR2018 = _cvpr("resnext-101-64f-kinetics-ucf101_split1.pth",
                                       dict(model="resnext", model_depth=101, legacy_stem=True, n_classes=101),
                                       {"ucf101_top1_3split_average": 94.5}, dataset="UCF-101 split 1",
                                       sample_duration=64, metrics_note=_FINETUNE_NOTE)
    HMDB51_64F_SPLIT1_CVPR2018 = _cvpr("resnext-101-64f-kinetics-hmdb51_split1.pth",
                                       dict(model="resnext", model_depth=101, legacy_stem=True, n_classes=51),
                                       {"hmdb51_top1_3split_average": 70.2}, dataset="HMDB-51 split 1",
                                       sample_duration=64, metrics_note=_FINETUNE_NOTE)
    DEFAULT = KINETICS400_CVPR2018


class DenseNet3D_121_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("densenet-121-kinetics.pth", dict(model="densenet", model_depth=121),
                                 _paper_kinetics(59.7, 81.9, 70.8))
    DEFAULT = KINETICS400_CVPR2018


class DenseNet3D_201_Weights(WeightsEnum):
    KINETICS400_CVPR2018 = _cvpr("densenet-201-kinetics.pth", dict(model="densenet", model_depth=201),
                                 _paper_kinetics(61.3, 83.3, 72.3))
    DEFAULT = KINETICS400_CVPR2018


class R2Plus1D_18_Weights(WeightsEnum):
    KINETICS700_200EP = _master("r2p1d18", "resnet2p1d", 18, "K")
    DEFAULT = KINETICS700_200EP


class R2Plus1D_34_Weights(WeightsEnum):
    KINETICS700_200EP = _master("r2p1d34", "resnet2p1d", 34, "K")
    DEFAULT = KINETICS700_200EP


class R2Plus1D_50_Weights(WeightsEnum):
    KINETICS700_200EP = _master("r2p1d50", "resnet2p1d", 50, "K")
    KINETICS700_MIT_200EP = _master("r2p1d50", "resnet2p1d", 50, "KM")
    DEFAULT = KINETICS700_200EP


class TorchvisionR3D_18_Weights(WeightsEnum):
    """torchvision's ``R3D_18_Weights.KINETICS400_V1`` for the equivalent ``torchvision_r3d_18`` model."""

    KINETICS400_V1 = Weights(
        file_name="r3d_18-b3b3357e.pth", url="https://download.pytorch.org/models/r3d_18-b3b3357e.pth",
        sha256="b3b3357e", transforms=_TORCHVISION_PRESET, checkpoint_format="torchvision",
        model_kwargs=dict(model="resnet", model_depth=18, conv1_t_size=3, no_max_pool=True, n_classes=400),
        meta=dict(num_classes=400, categories=None, dataset="Kinetics-400",
                  source="torchvision.models.video.R3D_18_Weights.KINETICS400_V1",
                  recipe="torchvision references/video_classification", sample_duration=16, sample_size=112,
                  input="RGB in [0, 1], resize (128, 171) without antialiasing, centre crop 112, torchvision's "
                        "Kinetics mean/std; class order alphabetical",
                  metrics={"kinetics400_val_top1": 63.200, "kinetics400_val_top5": 83.479},
                  metrics_note="torchvision: video level, 15 fps, 5 clips per video, clip length 16",
                  gmacs=40.697),
    )
    DEFAULT = KINETICS400_V1
