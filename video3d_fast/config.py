"""Run configuration: every option of a train/val/test run, with the authors' names and defaults.

One dataclass is the single source of the options: the CLI builds its flags from it, YAML files are
checked against it, and the resolved configuration is saved next to the results (``opts.json``) and in
every checkpoint. Option names and defaults follow the authors' master ``opts.py`` (their flag names
work unchanged); options they did not have are grouped at the end of :class:`Config`.

Precedence: dataclass defaults < YAML file (``--config``) < command-line flags.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["Config", "load_yaml_config", "config_from_dict"]


def _opt(default, help: str, choices=None, **kw):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    meta.update(kw)
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    """All options of a run (see the module docstring). Field names are the CLI flags without ``--``."""

    # ---- paths (the authors' options) ----
    root_path: Optional[str] = _opt(None, "if set, prefixed to video_path, annotation_path, result_path, resume_path, pretrain_path")
    video_path: Optional[str] = _opt(None, "root of the videos: <video_path>/<label>/<video_id>[/image_00001.jpg|.hdf5|.mp4]")
    annotation_path: Optional[str] = _opt(None, "annotation JSON (the authors' layout, see video3d_fast.data.annotations)")
    result_path: Optional[str] = _opt(None, "output folder (created if missing): logs, checkpoints, opts.json, result JSON")
    dataset: str = _opt("kinetics", "dataset kind (ActivityNet uses flat v_<id> folders)", ["kinetics", "activitynet", "ucf101", "hmdb51", "mit"])
    n_classes: int = _opt(400, "number of classes of the trained model (the fine-tuning classes with --pretrain_path)")
    n_pretrain_classes: int = _opt(0, "classes of the --pretrain_path model (required with it)")
    pretrain_path: Optional[str] = _opt(None, "checkpoint to fine-tune from (its head is replaced)")
    ft_begin_module: str = _opt("", "first module trained when fine-tuning (conv1, layer1..layer4, fc, denseblock1.., classifier); '' = all")
    # ---- clips ----
    sample_size: int = _opt(112, "spatial size H = W of the clips")
    sample_duration: int = _opt(16, "frames per clip T")
    sample_t_stride: int = _opt(1, "temporal subsampling stride, in every phase")
    train_crop: str = _opt("random", "training crop", ["random", "corner", "center"])
    train_crop_min_scale: float = _opt(0.25, "RandomResizedCrop area lower bound")
    train_crop_min_ratio: float = _opt(0.75, "RandomResizedCrop aspect ratio range (r, 1/r)")
    no_hflip: bool = _opt(False, "no random horizontal flip in training")
    colorjitter: bool = _opt(False, "colour jitter in training (0.4, 0.4, 0.4, 0.1)")
    train_t_crop: str = _opt("random", "training temporal crop", ["random", "center"])
    # ---- optimisation ----
    learning_rate: float = _opt(0.1, "initial learning rate (after warm-up)")
    momentum: float = _opt(0.9, "SGD momentum")
    dampening: float = _opt(0.0, "SGD dampening (the CVPR-era code used 0.9; forced to 0 with --nesterov)")
    weight_decay: float = _opt(1e-3, "weight decay (SGD: L2 on all parameters as the authors; AdamW: decoupled)")
    mean_dataset: str = _opt("kinetics", "normalisation constants", ["kinetics", "activitynet", "0.5", "activitynet_2018", "kinetics_2018"])
    no_mean_norm: bool = _opt(False, "do not subtract the mean")
    no_std_norm: bool = _opt(False, "do not divide by the std")
    value_scale: float = _opt(1.0, "1: inputs in [0, 1]; 255: inputs in [0, 255] (2018 checkpoints: 255 + activitynet_2018 + --no_std_norm)")
    nesterov: bool = _opt(False, "Nesterov momentum")
    optimizer: str = _opt("sgd", "optimizer", ["sgd", "adamw"])
    lr_scheduler: str = _opt("multistep", "learning-rate schedule", ["multistep", "plateau", "cosine"])
    multistep_milestones: List[int] = _opt([50, 100, 150], "epochs at which multistep multiplies the lr by 0.1")
    overwrite_milestones: bool = _opt(False, "on --resume, use these milestones instead of the checkpoint's")
    plateau_patience: int = _opt(10, "plateau: epochs without val-loss improvement before lr x 0.1")
    batch_size: int = _opt(128, "clips per forward pass summed over DDP processes (each gets batch_size / world_size); x accumulation_steps per optimizer step")
    inference_batch_size: int = _opt(0, "videos per test batch (0: batch_size); every clip of a video goes in")
    batchnorm_sync: bool = _opt(False, "SyncBatchNorm under DDP (unfused BatchNorm)")
    n_epochs: int = _opt(200, "last epoch")
    n_val_samples: int = _opt(3, "clips per video in validation (clip accuracy)")
    resume_path: Optional[str] = _opt(None, "checkpoint to continue from (model, optimizer, scheduler, scaler, RNG, epoch)")
    no_train: bool = _opt(False, "skip training")
    no_val: bool = _opt(False, "skip validation")
    inference: bool = _opt(False, "run the video-level test after training (writes <result_path>/<subset>.json)")
    inference_subset: str = _opt("val", "subset tested", ["train", "val", "test"])
    inference_stride: int = _opt(16, "sliding-window stride (in subsampled frames) of the test clips")
    inference_crop: str = _opt("center", "test crop", ["center", "nocrop"])
    inference_no_average: bool = _opt(False, "write per-clip results instead of the video average")
    no_cuda: bool = _opt(False, "run on the CPU even if CUDA is available")
    n_threads: int = _opt(4, "DataLoader worker processes")
    checkpoint: int = _opt(10, "also keep save_<epoch>.pth every this many epochs (last.pth is written every epoch)")
    # ---- model (names as video3d_fast.models.generate_model) ----
    model: str = _opt("resnet", "architecture", ["resnet", "preresnet", "wideresnet", "resnext", "densenet", "resnet2p1d"])
    model_depth: int = _opt(18, "depth")
    conv1_t_size: int = _opt(7, "temporal kernel size of the stem")
    conv1_t_stride: int = _opt(1, "temporal stride of the stem")
    no_max_pool: bool = _opt(False, "no max-pool after the stem")
    resnet_shortcut: str = _opt("B", "shortcut type", ["A", "B"])
    resnet_widen_factor: float = _opt(1.0, "width multiplier of the plain ResNet")
    wide_resnet_k: int = _opt(2, "Wide ResNet k")
    resnext_cardinality: int = _opt(32, "ResNeXt groups")
    input_type: str = _opt("rgb", "rgb, or 2-channel optical flow (hdf5 video_u/video_v)", ["rgb", "flow"])
    manual_seed: int = _opt(1, "seed of everything (model init, data order, augmentation)")
    output_topk: int = _opt(5, "classes per video in the result JSON (<= 0: all)")
    file_type: str = _opt("jpg", "storage of the videos", ["jpg", "hdf5", "video"])
    tensorboard: bool = _opt(False, "also write TensorBoard scalars (if torch.utils.tensorboard imports)")
    distributed: bool = _opt(False, "require a torchrun launch (DDP is used whenever torchrun's environment is present)")
    dist_url: str = _opt("env://", "torch.distributed init method (torchrun sets env://)")
    world_size: int = _opt(-1, "accepted for the authors' scripts; torchrun's WORLD_SIZE is used")
    # ---- video3d_fast options ----
    backend: str = _opt("auto", "fused-op backend of the model", ["auto", "torch", "cpu", "cuda", "triton"])
    amp: str = _opt("none", "mixed precision (fp16 uses a GradScaler)", ["none", "bf16", "fp16"])
    channels_last: bool = _opt(False, "channels_last_3d activations and weights")
    compile: bool = _opt(False, "torch.compile the model")
    compile_mode: str = _opt("default", "torch.compile mode; reduce-overhead replays CUDA graphs, which removes "
                             "the per-layer host time that dominates small-batch GPU training",
                             ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    cuda_graph: bool = _opt(False, "replay the training forward and backward as CUDA graphs (fixed clip shape, "
                            "each epoch's last partial batch dropped; no --compile or --batchnorm_sync, "
                            "--accumulation_steps 1): a step then costs its GPU time, not the host's per-layer "
                            "launch time")
    recompute_conv: bool = _opt(False, "keep less activation memory: backward recomputes each fused conv's output "
                                "(one forward conv per unit more; fused backends only)")
    accumulation_steps: int = _opt(1, "micro-batches accumulated per optimizer step")
    warmup_epochs: float = _opt(0.0, "linear lr warm-up from 0, in epochs (fractions allowed), applied per iteration")
    cosine_min_lr: float = _opt(0.0, "cosine schedule floor")
    clip_grad_norm: float = _opt(0.0, "clip the gradient norm to this value (0: off)")
    allow_unsafe_pickle: bool = _opt(False, "load checkpoints with full unpickling (only for files you trust)")
    device: str = _opt("auto", "device", ["auto", "cpu", "cuda"])
    no_progress: bool = _opt(False, "no progress bars")
    max_clips_per_forward: int = _opt(0, "test: at most this many clips per forward pass (0: no limit)")
    single_frame: bool = _opt(False, "baseline: every clip is one random frame of it repeated T times (no motion)")
    log_interval: int = _opt(10, "console line every this many training iterations (the bar shows every one)")

    # ------------------------------------------------------------------
    @property
    def arch(self) -> str:
        """The authors' ``arch`` string stored in checkpoints, e.g. ``resnet-18``."""
        return f"{self.model}-{self.model_depth}"

    @property
    def n_input_channels(self) -> int:
        return 2 if self.input_type == "flow" else 3

    def resolved_path(self, name: str) -> Optional[Path]:
        """``getattr(self, name)`` as a Path, under ``root_path`` if that is set (the authors' rule)."""
        value = getattr(self, name)
        if value in (None, ""):
            return None
        path = Path(value).expanduser()
        if self.root_path and not path.is_absolute():
            path = Path(self.root_path).expanduser() / path
        return path

    def validate(self) -> "Config":
        """Check option values (choices, ranges, combinations); raise ValueError naming the option."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise ValueError(f"--{f.name} must be one of {list(choices)}, got {value!r}")
        positive = ["n_classes", "sample_size", "sample_duration", "sample_t_stride", "batch_size", "n_epochs",
                    "n_val_samples", "inference_stride", "checkpoint", "accumulation_steps", "model_depth", "log_interval"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ["n_threads", "inference_batch_size", "warmup_epochs", "weight_decay", "momentum", "dampening",
                     "clip_grad_norm", "max_clips_per_forward", "cosine_min_lr"]:
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.train_crop_min_scale <= 1:
            raise ValueError(f"--train_crop_min_scale must be in (0, 1], got {self.train_crop_min_scale}")
        if not 0 < self.train_crop_min_ratio <= 1:
            raise ValueError(f"--train_crop_min_ratio must be in (0, 1], got {self.train_crop_min_ratio}")
        if self.pretrain_path and self.n_pretrain_classes < 1:
            raise ValueError("--pretrain_path needs --n_pretrain_classes (the number of classes the checkpoint was trained on)")
        if self.input_type == "flow" and self.file_type != "hdf5":
            raise ValueError("--input_type flow needs --file_type hdf5")
        if sorted(self.multistep_milestones) != list(self.multistep_milestones):
            raise ValueError(f"--multistep_milestones must be increasing, got {self.multistep_milestones}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def save_json(self, path: os.PathLike) -> None:
        """Write the resolved options (the authors' ``opts.json``)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)


_FIELDS = {f.name: f for f in fields(Config)}


def config_from_dict(values: Dict[str, Any], base: Optional[Config] = None, source: str = "config") -> Config:
    """A Config with ``values`` applied over ``base`` (defaults if None). Unknown keys are an error with a
    suggestion; values are converted to the field's type."""
    cfg = dataclasses.replace(base) if base is not None else Config()
    for key, value in values.items():
        key = key.lstrip("-").replace("-", "_")
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, _FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{source}: unknown option {key!r}{hint}")
        setattr(cfg, key, _convert(_FIELDS[key], value, source))
    return cfg


def _convert(f: dataclasses.Field, value, source: str):
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if value is None:
        return None
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, list):
            items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
            return [int(x) for x in items]
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: option {f.name!r} got {value!r}, which is not a valid {type(default).__name__}") from None


def load_yaml_config(path: os.PathLike | str, base: Optional[Config] = None) -> Config:
    """Read a YAML file of ``option: value`` pairs (the CLI names) over ``base``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value")
    return config_from_dict(data, base, source=str(path))
