"""Tiny end-to-end runs for the loop tests: 3 classes of short H.264 videos and a narrow ResNet-10."""
from __future__ import annotations

from pathlib import Path

import torch

from video3d_fast.config import Config

from ..data.fixtures import make_video_dataset


def tiny_dataset(root: Path, per_subset: int = 4, file_type: str = "video"):
    return make_video_dataset(root, file_type, labels=("a", "b", "c"), per_subset=per_subset, n_frames=10, h=24, w=32)


def tiny_config(files, result_path: Path, **overrides) -> Config:
    """About 0.1 s per step on 2 cores: ResNet-10 at width 1/8 on 4x16x16 clips, batch 4, no workers."""
    values = dict(
        video_path=str(files["video_path"]),
        annotation_path=str(files["annotation_path"]),
        result_path=str(result_path),
        file_type=files["video_path"].name,
        n_classes=3,
        model="resnet",
        model_depth=10,
        resnet_widen_factor=0.125,
        conv1_t_size=3,
        sample_size=16,
        sample_duration=4,
        batch_size=4,
        n_epochs=2,
        learning_rate=0.01,
        weight_decay=1e-4,
        n_val_samples=2,
        inference_stride=4,
        n_threads=0,
        no_progress=True,
        manual_seed=7,
        backend="auto",
        mean_dataset="0.5",
    )
    values.update(overrides)
    return Config(**values).validate()


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
