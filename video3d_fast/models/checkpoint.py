"""Reading and converting checkpoints: the authors' 2020 (master) and 2018 (CVPR-era) files, DataParallel
``module.`` prefixes, and torchvision's ``r3d_18`` layout.

A checkpoint is untrusted input. Files are read with ``torch.load(weights_only=True)``, which the authors'
files pass (tensors, dicts, lists, numbers, strings; the scheduler's ``Counter``). Anything that needs full
unpickling (arbitrary Python objects, i.e. arbitrary code) is refused unless ``allow_unsafe_pickle=True``
is passed, which warns.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    "convert_cvpr2018_state_dict",
    "detect_checkpoint_format",
    "load_checkpoint",
    "read_checkpoint",
    "state_dict_from_torchvision",
    "state_dict_to_torchvision",
    "strip_module_prefix",
]

PathLike = Union[str, os.PathLike]

_DENSENET_CVPR_STEM = re.compile(r"^features\.(conv|norm|relu|pool)0(\.|$)")
_DENSENET_CVPR_LAYER = re.compile(r"\.(norm|relu|conv)\.([12])\.")


def read_checkpoint(path: PathLike, allow_unsafe_pickle: bool = False, map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``).

    ``allow_unsafe_pickle=True`` permits full unpickling, which can run arbitrary code from the file; it
    warns and should only be used for files you trust. Raises ``pickle.UnpicklingError`` (with the reason)
    when a file needs full unpickling and the flag is not set, FileNotFoundError when it does not exist.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {os.fspath(path)!r}")
    if allow_unsafe_pickle:
        warnings.warn(
            f"loading {os.fspath(path)!r} with full unpickling (allow_unsafe_pickle=True): a malicious file can "
            "run arbitrary code; only do this for files you trust", UserWarning, stacklevel=3,
        )
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise pickle.UnpicklingError(
            f"{os.fspath(path)!r} contains objects beyond tensors and plain containers, which would need full "
            f"unpickling (able to run arbitrary code). If you trust the file, pass allow_unsafe_pickle=True. "
            f"torch.load said: {first_line}"
        ) from exc


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> "OrderedDict[str, Any]":
    """Remove ``prefix`` (DataParallel/DDP's ``module.``) from the keys if every key carries it."""
    keys = list(state_dict)
    if keys and all(k.startswith(prefix) for k in keys):
        return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items())
    return OrderedDict(state_dict)


def _bn_prefixes(state_dict: Mapping[str, Any]) -> List[str]:
    return [k[: -len("running_var")] for k in state_dict if k.endswith(".running_var") or k == "running_var"]


def detect_checkpoint_format(state_dict: Mapping[str, Any]) -> str:
    """"torchvision" (``stem.0.weight``), "cvpr2018" (old DenseNet names, or BatchNorms without
    ``num_batches_tracked``) or "master"; a DataParallel ``module.`` prefix is ignored."""
    state_dict = strip_module_prefix(state_dict)
    keys = list(state_dict)
    if "stem.0.weight" in state_dict:
        return "torchvision"
    if any(_DENSENET_CVPR_STEM.match(k) or _DENSENET_CVPR_LAYER.search(k) for k in keys):
        return "cvpr2018"
    if any(p + "num_batches_tracked" not in state_dict for p in _bn_prefixes(state_dict)):
        return "cvpr2018"
    return "master"


def convert_cvpr2018_state_dict(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A CVPR-2018-era state_dict (e.g. ``resnext-101-kinetics.pth['state_dict']``) in master key layout.

    * strips the DataParallel ``module.`` prefix;
    * renames DenseNet's ``features.conv0/norm0/relu0/pool0`` to ``conv1/norm1/relu1/pool1`` and the dense
      layers' ``norm.1, conv.1, norm.2, conv.2`` to ``norm1, conv1, norm2, conv2``;
    * adds ``num_batches_tracked = 0`` (int64 scalar) after each BatchNorm's ``running_var`` where missing
      (files from PyTorch <= 0.4.0 lack it).
    Idempotent: a master state_dict comes back unchanged. The tensors are not copied.

    The models must be built as those files were trained: ResNet-18/34 with ``resnet_shortcut="A"``,
    ResNeXt-101 and WRN-50 with ``legacy_stem=True`` (64-wide stem), inputs 0-255 RGB minus the
    ActivityNet mean (see ``video3d_fast.models.weights``).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in strip_module_prefix(state_dict).items():
        key = _DENSENET_CVPR_STEM.sub(lambda m: f"features.{m.group(1)}1{m.group(2)}", key)
        key = _DENSENET_CVPR_LAYER.sub(lambda m: f".{m.group(1)}{m.group(2)}.", key)
        out[key] = value
        if key.endswith("running_var"):
            tracked = key[: -len("running_var")] + "num_batches_tracked"
            if tracked not in state_dict and "module." + tracked not in state_dict:
                out[tracked] = torch.tensor(0, dtype=torch.long)
    return out


# torchvision VideoResNet <-> authors' ResNet (ecosystem.md section 1.3)
_TV_BLOCK = re.compile(r"^(layer\d+\.\d+)\.conv(\d)\.([01])\.(.+)$")
_OURS_BLOCK = re.compile(r"^(layer\d+\.\d+)\.(conv|bn)(\d)\.(.+)$")


def state_dict_from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """torchvision ``r3d_18`` (VideoResNet with Conv3DSimple) keys -> this package's ResNet keys.

    ``stem.0`` -> ``conv1``, ``stem.1`` -> ``bn1``, ``layerX.i.convK.0`` -> ``layerX.i.convK``,
    ``layerX.i.convK.1`` -> ``layerX.i.bnK``; ``downsample.*`` and ``fc.*`` unchanged. Load the result into
    ``torchvision_r3d_18()`` (ResNet-18, ``conv1_t_size=3, no_max_pool=True``, shortcut B). ValueError for
    ``mc3_18`` / ``r2plus1d_18`` state_dicts, which have no equivalent model here.
    """
    sd = strip_module_prefix(state_dict)
    if "stem.0.weight" not in sd:
        raise ValueError("not a torchvision VideoResNet state_dict (no 'stem.0.weight' key)")
    if "stem.3.weight" in sd:
        raise ValueError("this is r2plus1d_18's (2+1)D stem; only torchvision's r3d_18 maps onto the authors' ResNet")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in sd.items():
        if key.startswith("stem.0."):
            new = "conv1." + key[len("stem.0."):]
        elif key.startswith("stem.1."):
            new = "bn1." + key[len("stem.1."):]
        elif key.startswith("layer") and ".downsample." not in key:
            m = _TV_BLOCK.match(key)
            if m is None:
                raise ValueError(f"unexpected torchvision key {key!r} (only r3d_18-style blocks are supported)")
            block, k, which, rest = m.groups()
            if which == "0" and value.dim() == 5 and tuple(value.shape[2:]) not in ((3, 3, 3), (1, 1, 1)):
                raise ValueError(f"{key} has kernel {tuple(value.shape[2:])}: mc3_18-style (1,3,3) convs have no "
                                 "equivalent here; only torchvision's r3d_18 maps onto the authors' ResNet")
            new = f"{block}.{'conv' if which == '0' else 'bn'}{k}.{rest}"
        else:
            new = key
        out[new] = value
    return out


def state_dict_to_torchvision(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Inverse of :func:`state_dict_from_torchvision`: a ResNet state_dict of this package (e.g. of
    ``torchvision_r3d_18()``) in torchvision's VideoResNet layout, loadable into ``torchvision.models.video.
    r3d_18()`` (the stem must be (3,7,7) and max-pool-free for the shapes and the computation to match)."""
    sd = strip_module_prefix(state_dict)
    if "conv1.weight" not in sd or "bn1.weight" not in sd:
        raise ValueError("not a ResNet state_dict of this package (no 'conv1.weight'/'bn1.weight'); "
                         "R(2+1)D and DenseNet have no torchvision r3d layout")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in sd.items():
        if key.startswith("conv1."):
            new = "stem.0." + key[len("conv1."):]
        elif key.startswith("bn1."):
            new = "stem.1." + key[len("bn1."):]
        elif key.startswith("layer") and ".downsample." not in key:
            m = _OURS_BLOCK.match(key)
            if m is None:
                raise ValueError(f"unexpected key {key!r} for a ResNet with post-activation blocks")
            block, kind, k, rest = m.groups()
            new = f"{block}.conv{k}.{'0' if kind == 'conv' else '1'}.{rest}"
        else:
            new = key
        out[new] = value
    return out


# ------------------------------------------------------------------------------------------------
# load_checkpoint
# ------------------------------------------------------------------------------------------------
def _split_checkpoint(obj: Any) -> Tuple[Mapping[str, torch.Tensor], Dict[str, Any]]:
    """(state_dict, other entries) of a checkpoint dict or a bare state_dict."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"checkpoint must be a dict (a state_dict or {{'state_dict': ...}}), got {type(obj).__name__}")
    for key in ("state_dict", "model"):  # authors' files / torchvision reference scripts
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key], {k: v for k, v in obj.items() if k != key}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ValueError(f"no state_dict found in checkpoint with keys {sorted(map(str, obj))[:10]}")


def normalise_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Tuple["OrderedDict[str, torch.Tensor]", str]:
    """(state_dict in this package's key layout, detected source format)."""
    state_dict = strip_module_prefix(state_dict)
    fmt = detect_checkpoint_format(state_dict)
    if fmt == "torchvision":
        return state_dict_from_torchvision(state_dict), fmt
    if fmt == "cvpr2018":
        return convert_cvpr2018_state_dict(state_dict), fmt
    return state_dict, fmt


def _mismatch_hints(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """Likely causes of a failed strict load, in the authors' vocabulary (their issues #32, #206, #250, #256)."""
    own = model.state_dict()
    hints = []
    stem = next((k for k in ("conv1.weight", "features.conv1.weight", "conv1_s.weight") if k in own), None)
    if stem and stem in state_dict and own[stem].shape != state_dict[stem].shape:
        a, b = tuple(state_dict[stem].shape), tuple(own[stem].shape)
        if a[0] != b[0]:
            hints.append(f"stem width differs (checkpoint {a[0]}, model {b[0]}): the CVPR-era ResNeXt-101 and "
                         "WRN-50 files have a 64-wide stem, build those models with legacy_stem=True")
        elif a[2] != b[2]:
            hints.append(f"stem temporal kernel differs (checkpoint {a[2]}, model {b[2]}): set conv1_t_size={a[2]}")
        else:
            hints.append(f"stem shape differs: checkpoint {a}, model {b}")
    if ("conv1_s.weight" in state_dict) != ("conv1_s.weight" in own):
        hints.append("R(2+1)D keys (conv1_s/conv1_t) on one side only: use model='resnet2p1d' for r2p1d* files")
    down_ckpt = any(".downsample." in k for k in state_dict)
    down_model = any(".downsample." in k for k in own)
    if down_ckpt != down_model:
        hints.append("shortcut type differs: use resnet_shortcut='%s'" % ("B" if down_ckpt else "A"))
    for head in ("fc.weight", "classifier.weight"):
        if head in own and head in state_dict and own[head].shape[0] != state_dict[head].shape[0]:
            hints.append(f"the checkpoint has {state_dict[head].shape[0]} classes, the model {own[head].shape[0]}: "
                         f"build with n_classes={state_dict[head].shape[0]} and replace the head afterwards")
    return hints


def _unwrap(model: nn.Module) -> nn.Module:
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, parallel) else model


def load_checkpoint(
    path_or_dict: Union[PathLike, Mapping[str, Any]],
    model: Optional[nn.Module] = None,
    strict: bool = True,
    allow_unsafe_pickle: bool = False,
    map_location: Any = "cpu",
) -> Dict[str, Any]:
    """Read a checkpoint, convert it to this package's key layout and optionally load it into ``model``.

    Args:
        path_or_dict: a file path, or an already loaded object: the authors' ``{epoch, arch, state_dict,
            optimizer[, scheduler]}`` dict, torchvision's reference ``{model, ...}`` dict, or a bare
            state_dict. Handles ``module.`` prefixes, CVPR-era files (see :func:`convert_cvpr2018_state_dict`)
            and torchvision ``r3d_18`` state_dicts.
        model: if given, ``model.load_state_dict(state_dict, strict=strict)`` (DataParallel/DDP wrappers are
            unwrapped). A failed strict load raises RuntimeError with hints (stem width, shortcut type,
            number of classes, R(2+1)D vs ResNet).
        strict: as in ``load_state_dict``.
        allow_unsafe_pickle: permit full unpickling of the file (warns; see :func:`read_checkpoint`).
        map_location: as in ``torch.load`` (default "cpu").
    Returns:
        dict with ``state_dict`` (converted), ``format`` ("master", "cvpr2018" or "torchvision"), every other
        entry of the checkpoint unchanged (``epoch``, ``arch``, ``optimizer``, ``scheduler``, ...), and when
        a model was given, ``missing_keys`` / ``unexpected_keys``.
    """
    if isinstance(path_or_dict, Mapping):
        obj = path_or_dict
    else:
        obj = read_checkpoint(path_or_dict, allow_unsafe_pickle=allow_unsafe_pickle, map_location=map_location)
    raw, extras = _split_checkpoint(obj)
    state_dict, fmt = normalise_state_dict(raw)
    result: Dict[str, Any] = dict(extras)
    result["state_dict"] = state_dict
    result["format"] = fmt
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        target = _unwrap(model)
        try:
            missing, unexpected = target.load_state_dict(state_dict, strict=strict)
        except RuntimeError as exc:
            hints = _mismatch_hints(target, state_dict)
            if not hints:
                raise
            raise RuntimeError("checkpoint does not fit the model; likely: " + "; ".join(hints) + f"\n{exc}") from exc
        result["missing_keys"], result["unexpected_keys"] = list(missing), list(unexpected)
    return result
