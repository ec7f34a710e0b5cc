"""From options to datasets and loaders: the authors' pipelines per phase, in one place.

==========  ==========================================================  ==================================
phase       temporal (one ClipSampler, stride honoured everywhere)      spatial (uint8, then Normalize)
==========  ==========================================================  ==================================
train       TemporalSubsampling(s) -> TemporalRandomCrop(T)              RandomResizedCrop | MultiScaleCornerCrop |
            (``--train_t_crop center``: TemporalCenterCrop)              Resize+CenterCrop; hflip; [ColorJitter]
val         TemporalSubsampling(s) -> TemporalEvenCrop(T, n_val_samples) Resize(S) + CenterCrop(S)
test        TemporalSubsampling(s) -> SlidingWindow(T, inference_stride) Resize(S) + CenterCrop(S) (or Resize only)
==========  ==========================================================  ==================================
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch.utils.data import DataLoader

from .annotations import Annotation, canonical_subset, load_annotation
from .datasets import VideoDataset, collate_videos, find_samples
from .readers import make_reader
from .samplers import ShardedSampler
from .temporal import ClipSampler
from .transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    MultiScaleCornerCrop,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    get_mean_std,
)

__all__ = [
    "PHASES",
    "build_clip_sampler",
    "build_dataset",
    "build_loader",
    "build_normalize",
    "build_spatial_transform",
    "load_run_annotation",
    "subset_of_phase",
]

PHASES = ("train", "val", "test")


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")


def subset_of_phase(cfg, phase: str) -> str:
    """JSON subset read by a phase: training, validation, or ``--inference_subset`` for test."""
    _check_phase(phase)
    return {"train": "training", "val": "validation"}.get(phase) or canonical_subset(cfg.inference_subset)


def build_clip_sampler(cfg, phase: str) -> ClipSampler:
    _check_phase(phase)
    common = dict(clip_length=cfg.sample_duration, t_stride=cfg.sample_t_stride)
    if phase == "train":
        return ClipSampler("random" if cfg.train_t_crop == "random" else "center", **common)
    if phase == "val":
        return ClipSampler("even", n_clips=cfg.n_val_samples, **common)
    return ClipSampler("sliding", window_stride=cfg.inference_stride, **common)


def build_spatial_transform(cfg, phase: str) -> Compose:
    _check_phase(phase)
    size = cfg.sample_size
    if phase == "train":
        if cfg.train_crop == "random":
            ratio = (cfg.train_crop_min_ratio, 1.0 / cfg.train_crop_min_ratio)
            steps = [RandomResizedCrop(size, (cfg.train_crop_min_scale, 1.0), ratio)]
        elif cfg.train_crop == "corner":
            steps = [MultiScaleCornerCrop(size)]
        else:
            steps = [Resize(size), CenterCrop(size)]
        if not cfg.no_hflip:
            steps.append(RandomHorizontalFlip())
        if cfg.colorjitter:
            steps.append(ColorJitter())
        return Compose(steps)
    if phase == "test" and cfg.inference_crop == "nocrop":
        return Compose([Resize(size)])
    return Compose([Resize(size), CenterCrop(size)])


def build_normalize(cfg) -> Normalize:
    """The batched uint8 -> float normalisation the loops apply on the device."""
    mean, std = get_mean_std(cfg.value_scale, cfg.mean_dataset, cfg.no_mean_norm, cfg.no_std_norm)
    return Normalize(mean, std, cfg.value_scale, n_channels=cfg.n_input_channels)


def load_run_annotation(cfg) -> Annotation:
    """The run's annotation file, checked against ``--n_classes``."""
    path = cfg.resolved_path("annotation_path")
    if path is None:
        raise ValueError("--annotation_path is required (the annotation JSON of the dataset)")
    annotation = load_annotation(path)
    if len(annotation.labels) > cfg.n_classes:
        raise ValueError(
            f"{path} has {len(annotation.labels)} classes but --n_classes is {cfg.n_classes}; "
            f"set --n_classes {len(annotation.labels)}"
        )
    return annotation


def build_dataset(cfg, phase: str, annotation: Optional[Annotation] = None) -> VideoDataset:
    """The dataset of one phase, with clear errors for a missing path and an empty subset.

    Raises:
        FileNotFoundError: ``--video_path`` or ``--annotation_path`` does not exist.
        ValueError: no video of the subset was found on disk, or more classes than ``--n_classes``.
    """
    _check_phase(phase)
    video_root = cfg.resolved_path("video_path")
    if video_root is None:
        raise ValueError("--video_path is required (the folder holding the videos / frame folders)")
    if not video_root.is_dir():
        raise FileNotFoundError(f"--video_path {video_root} does not exist or is not a folder")
    if annotation is None:
        annotation = load_run_annotation(cfg)
    subset = subset_of_phase(cfg, phase)
    reader = make_reader(cfg.file_type, cfg.input_type)
    listed = annotation.subset(subset)
    samples, missing = find_samples(annotation, subset, video_root, reader, flat_layout=cfg.dataset == "activitynet")
    if not samples:
        if not listed:
            subsets = sorted({e.subset for e in annotation.entries})
            raise ValueError(f"{annotation.source} lists no video of subset {subset!r} (it has: {subsets})")
        example = reader.locate(video_root, listed[0].label or "test", listed[0].disk_name)
        raise ValueError(
            f"empty dataset: none of the {len(listed)} {subset} videos of {annotation.source} was found under "
            f"--video_path {video_root} as --file_type {cfg.file_type} (expected e.g. {example})"
        )
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(listed)} {subset} videos listed in {annotation.source} are not under "
            f"{video_root} and are left out (first: {missing[0]!r})",
            stacklevel=2,
        )
    return VideoDataset(
        samples,
        reader,
        build_clip_sampler(cfg, phase),
        build_spatial_transform(cfg, phase),
        seed=cfg.manual_seed,
        repeat_single_frame=cfg.single_frame,
    )


def build_loader(
    dataset: VideoDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    pad_to_world: bool = True,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader over a :class:`ShardedSampler` with :func:`collate_videos`.

    ``batch_size`` is per process. Call ``loader.sampler.set_epoch(e)`` and ``dataset.set_epoch(e)`` before
    each epoch (the loops do). Workers are not persistent, so each epoch's workers see the new epoch.
    ``drop_last`` drops each epoch's last partial batch, unless that would leave no batch at all.
    """
    sampler = ShardedSampler(len(dataset), batch_size, rank=rank, world_size=world_size, shuffle=shuffle,
                             seed=seed, pad_to_world=pad_to_world)
    generator = torch.Generator()
    generator.manual_seed(seed)  # worker seeds from here, not from (and not advancing) the global RNG
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_videos,
        pin_memory=pin_memory,
        drop_last=drop_last and len(sampler) >= batch_size,
        generator=generator,
        prefetch_factor=4 if num_workers > 0 else None,
    )
