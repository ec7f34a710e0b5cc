"""Video datasets over the authors' storages, the batch type and its collate function.

A sample is one video: the shared :class:`~video3d_fast.data.temporal.ClipSampler` picks its clip(s)
(one random clip for training, spread clips for validation, every sliding-window clip for testing), the
reader decodes each needed frame once, the spatial transform maps every clip to a fixed-size uint8 tensor.

Randomness is a pure function of ``(seed, epoch, sample index)``: each ``__getitem__`` builds its own
``random.Random``. Augmentations therefore do not depend on the number of DataLoader workers, on the rank
under DDP, or on where a run was interrupted, which is what makes ``--resume`` bit-exact.

Unreadable samples (corrupt or truncated video, missing frames) come back as :class:`SkippedSample` with
a :class:`CorruptVideoWarning`; :func:`collate_videos` drops them and the batch carries their ids so that
the loops can count and report them.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from .annotations import Annotation
from .readers import CorruptVideoError, FrameReader, available_frames
from .temporal import ClipSampler

__all__ = [
    "CorruptVideoWarning",
    "Sample",
    "SkippedSample",
    "VideoBatch",
    "VideoDataset",
    "collate_videos",
    "find_samples",
]


class CorruptVideoWarning(UserWarning):
    """A video was skipped because it could not be decoded."""


@dataclass(frozen=True)
class Sample:
    """One video on disk: id, location, class index (-1 if unlabelled), frame range (None: from storage)."""

    video_id: str
    path: Path
    label: int
    segment: Optional[Tuple[int, int]] = None


@dataclass(frozen=True)
class SkippedSample:
    """Stands in for a sample that failed to decode; dropped (and counted) by :func:`collate_videos`."""

    video_id: str
    reason: str


@dataclass
class VideoBatch:
    """A batch of videos, each contributing one or more clips.

    Attributes:
        clips: uint8 ``[total_clips, C, T, H, W]`` (normalise on the device with ``transforms.Normalize``).
        targets: int64 ``[n_videos]`` class indices (-1 unlabelled).
        clip_counts: int64 ``[n_videos]`` clips per video (all 1 in training).
        video_ids: the ids of the videos, in order.
        segments: per video, the ``[first, last + 1]`` frame numbers of each clip (for per-clip results).
        skipped: ``(video_id, reason)`` of samples of this batch that could not be decoded.
    """

    clips: torch.Tensor
    targets: torch.Tensor
    clip_counts: torch.Tensor
    video_ids: List[str]
    segments: List[List[Tuple[int, int]]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def clip_targets(self) -> torch.Tensor:
        """Target of every clip, ``[total_clips]``."""
        return self.targets.repeat_interleave(self.clip_counts)

    def pin_memory(self) -> "VideoBatch":
        self.clips = self.clips.pin_memory()
        self.targets = self.targets.pin_memory()
        return self


def collate_videos(items: Sequence) -> VideoBatch:
    """Collate ``VideoDataset`` items into a :class:`VideoBatch`, dropping skipped samples.

    Each item is ``(clips [K, C, T, H, W] uint8, target, video_id, segments)`` or a ``SkippedSample``.
    A batch whose every sample was skipped comes back with zero videos (the loops skip it).
    """
    good = [it for it in items if not isinstance(it, SkippedSample)]
    skipped = [(it.video_id, it.reason) for it in items if isinstance(it, SkippedSample)]
    if not good:
        return VideoBatch(
            clips=torch.empty(0, dtype=torch.uint8),
            targets=torch.empty(0, dtype=torch.int64),
            clip_counts=torch.empty(0, dtype=torch.int64),
            video_ids=[],
            segments=[],
            skipped=skipped,
        )
    clips = torch.cat([it[0] for it in good], dim=0)
    return VideoBatch(
        clips=clips,
        targets=torch.tensor([it[1] for it in good], dtype=torch.int64),
        clip_counts=torch.tensor([it[0].shape[0] for it in good], dtype=torch.int64),
        video_ids=[it[2] for it in good],
        segments=[it[3] for it in good],
        skipped=skipped,
    )


def find_samples(
    annotation: Annotation,
    subset: str,
    video_root: Path,
    reader: FrameReader,
    flat_layout: bool = False,
) -> Tuple[List[Sample], List[str]]:
    """Resolve the annotation entries of ``subset`` to files under ``video_root``.

    The authors' layout is ``<video_root>/<label>/<name>`` (``test`` as label for unlabelled videos), or
    ``<video_root>/<name>`` with ``flat_layout`` (ActivityNet); an entry's ``video_path`` wins.
    Returns ``(samples, missing_ids)``; entries with an empty segment are dropped, as the authors do.
    """
    samples, missing = [], []
    for entry in annotation.subset(subset):
        if entry.video_path:
            path = Path(entry.video_path)
        else:
            label_dir = "" if flat_layout else (entry.label if entry.label is not None else "test")
            path = reader.locate(video_root, label_dir, entry.disk_name)
        if not reader.exists(path):
            missing.append(entry.video_id)
            continue
        if entry.segment is not None and entry.segment[1] <= entry.segment[0]:
            continue
        samples.append(Sample(entry.video_id, path, annotation.label_index(entry), entry.segment))
    return samples, missing


class VideoDataset(Dataset):
    """Videos -> clips, for every phase.

    Args:
        samples: from :func:`find_samples` (or built by hand).
        reader: the storage's :class:`~video3d_fast.data.readers.FrameReader`.
        clip_sampler: which clip(s) of a video to use.
        spatial_transform: callable ``(uint8 [T, C, H, W], rng) -> uint8 [T, C, h, w]``, or None.
        seed: base of the per-sample random generators (``--manual_seed``).
        repeat_single_frame: build every clip from one frame repeated T times (the single-frame baseline
            of the demo: same network and pipeline, no motion information).

    ``dataset[i]`` returns ``(clips [K, C, T, h, w] uint8, target, video_id, segments)`` or a
    :class:`SkippedSample`. Call :meth:`set_epoch` before each epoch (new augmentations per epoch).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        reader: FrameReader,
        clip_sampler: ClipSampler,
        spatial_transform: Optional[Callable] = None,
        seed: int = 0,
        repeat_single_frame: bool = False,
    ):
        self.samples = list(samples)
        self.reader = reader
        self.clip_sampler = clip_sampler
        self.spatial_transform = spatial_transform
        self.seed = int(seed)
        self.epoch = 0
        self.repeat_single_frame = repeat_single_frame

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng_for(self, index: int) -> random.Random:
        """The generator of sample ``index`` in the current epoch (seeded from a string: stable across runs)."""
        return random.Random(f"video3d_fast:{self.seed}:{self.epoch}:{index}")

    @property
    def targets(self) -> List[int]:
        return [s.label for s in self.samples]

    def __getitem__(self, index: int):
        sample = self.samples[index]
        rng = self.rng_for(index)
        try:
            frame_numbers = available_frames(self.reader, sample.path, sample.segment)
            if len(frame_numbers) == 0:
                raise CorruptVideoError(f"{sample.path}: no frames")
            clips = self.clip_sampler(frame_numbers, rng)
            if self.repeat_single_frame:
                clips = [[clip[rng.randrange(len(clip))]] * len(clip) for clip in clips]
            flat = [i for clip in clips for i in clip]
            frames = self.reader.read(sample.path, flat)
        except CorruptVideoError as e:
            warnings.warn(f"skipping video {sample.video_id!r}: {e}", CorruptVideoWarning, stacklevel=2)
            return SkippedSample(sample.video_id, str(e))
        out = []
        for k, clip in enumerate(clips):
            x = frames[k * len(clip) : (k + 1) * len(clip)]
            if self.spatial_transform is not None:
                x = self.spatial_transform(x, rng)
            out.append(x.permute(1, 0, 2, 3))  # [T, C, H, W] -> [C, T, H, W]
        segments = [(min(clip), max(clip) + 1) for clip in clips]  # the authors' [first, last + 1] per clip
        return torch.stack(out), sample.label, sample.video_id, segments

    def __repr__(self) -> str:
        return (
            f"VideoDataset({len(self)} videos, reader={type(self.reader).__name__}, {self.clip_sampler}, "
            f"spatial={self.spatial_transform!r})"
        )
