"""Temporal transforms (the authors' set) and the one clip sampler that train, validation and test share.

Transforms take a list of frame numbers (in the storage's numbering, see ``readers``) and a
``random.Random`` and return either one clip (a list) or several clips (a list of lists). Clips are built
by **slicing the incoming list**, never by ``range(begin, begin + size)``, so a preceding
``TemporalSubsampling(stride)`` holds in every phase. (The authors' ``TemporalEvenCrop`` and
``SlidingWindow`` rebuilt clips with ``range``, so ``--sample_t_stride`` was silently ignored in
validation and inference: their issue #254.)

Deliberate fixes of the authors' quirks, all documented where they apply:

* ``TemporalRandomCrop`` draws every valid start (theirs never drew the last one).
* ``TemporalEvenCrop(n_samples=1)`` returns the centre clip (theirs divided by zero, issue #207).
"""
from __future__ import annotations

import math
import random
from typing import List, Sequence, Union

__all__ = [
    "ClipSampler",
    "Compose",
    "LoopPadding",
    "SlidingWindow",
    "TemporalBeginCrop",
    "TemporalCenterCrop",
    "TemporalEvenCrop",
    "TemporalRandomCrop",
    "TemporalSubsampling",
]

Clip = List[int]
Clips = List[Clip]


def _check_positive(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def loop_pad(indices: Sequence[int], size: int) -> Clip:
    """Repeat ``indices`` from its start until it has ``size`` entries (a clip longer than the video)."""
    out = list(indices)
    if not out:
        raise ValueError("cannot loop-pad an empty frame list (video with no frames)")
    i = 0
    while len(out) < size:
        out.append(out[i])
        i += 1
    return out


class LoopPadding:
    """Loop-pad the frame list to ``size`` (longer lists pass unchanged)."""

    def __init__(self, size: int):
        self.size = _check_positive(size, "size")

    def __call__(self, indices: Sequence[int], rng: random.Random = None) -> Clip:
        return loop_pad(indices, self.size)


class TemporalSubsampling:
    """Keep every ``stride``-th frame (``--sample_t_stride``); applied before any crop."""

    def __init__(self, stride: int):
        self.stride = _check_positive(stride, "stride")

    def __call__(self, indices: Sequence[int], rng: random.Random = None) -> Clip:
        return list(indices)[:: self.stride]


class TemporalBeginCrop:
    """The first ``size`` frames (loop-padded)."""

    def __init__(self, size: int):
        self.size = _check_positive(size, "size")

    def __call__(self, indices: Sequence[int], rng: random.Random = None) -> Clip:
        return loop_pad(list(indices)[: self.size], self.size)


class TemporalCenterCrop:
    """``size`` frames around the middle: start ``max(0, n // 2 - size // 2)`` (loop-padded)."""

    def __init__(self, size: int):
        self.size = _check_positive(size, "size")

    def __call__(self, indices: Sequence[int], rng: random.Random = None) -> Clip:
        indices = list(indices)
        begin = max(0, len(indices) // 2 - self.size // 2)
        return loop_pad(indices[begin : begin + self.size], self.size)


class TemporalRandomCrop:
    """``size`` consecutive entries from a uniformly drawn start in ``[0, n - size]`` (loop-padded)."""

    def __init__(self, size: int):
        self.size = _check_positive(size, "size")

    def __call__(self, indices: Sequence[int], rng: random.Random) -> Clip:
        indices = list(indices)
        begin = rng.randint(0, max(0, len(indices) - self.size))
        return loop_pad(indices[begin : begin + self.size], self.size)


class TemporalEvenCrop:
    """``n_samples`` clips of ``size`` spread over the video (validation, ``--n_val_samples``).

    Starts follow the authors: step ``max(1, ceil((n - 1 - size) / (n_samples - 1)))`` over the list;
    for n = 300, size 16, 3 samples the clips start at entries 0, 142, 284. Fewer clips come back when the
    video is short (the first short clip is loop-padded and ends the list).
    """

    def __init__(self, size: int, n_samples: int = 3):
        self.size = _check_positive(size, "size")
        self.n_samples = _check_positive(n_samples, "n_samples")

    def __call__(self, indices: Sequence[int], rng: random.Random = None) -> Clips:
        indices = list(indices)
        if self.n_samples == 1:
            return [TemporalCenterCrop(self.size)(indices)]
        step = max(1, math.ceil((len(indices) - 1 - self.size) / (self.n_samples - 1)))
        clips = []
        for begin in range(0, len(indices), step):
            clip = indices[begin : begin + self.size]
            if len(clip) < self.size:
                clips.append(loop_pad(clip, self.size))
                break
            clips.append(clip)
            if len(clips) >= self.n_samples:
                break
        return clips


class SlidingWindow:
    """Every clip of ``size`` starting each ``stride`` entries (test, ``--inference_stride``).

    The first clip that runs past the end is loop-padded and ends the list, so ``stride == size`` gives
    ``ceil(n / size)`` non-overlapping clips covering every frame (the authors' inference protocol).
    """

    def __init__(self, size: int, stride: int):
        self.size = _check_positive(size, "size")
        self.stride = _check_positive(stride, "stride")

    def __call__(self, indices: Sequence[int], rng: random.Random = None) -> Clips:
        indices = list(indices)
        clips = []
        for begin in range(0, len(indices), self.stride):
            clip = indices[begin : begin + self.size]
            if len(clip) < self.size:
                clips.append(loop_pad(clip, self.size))
                break
            clips.append(clip)
        return clips


class Compose:
    """Apply transforms in order; once one returns several clips, later ones run on each clip."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, indices: Sequence[int], rng: random.Random) -> Union[Clip, Clips]:
        out = list(indices)
        multi = False
        for t in self.transforms:
            if multi:
                out = [t(clip, rng) for clip in out]
            else:
                out = t(out, rng)
                multi = bool(out) and isinstance(out[0], list)
        return out


class ClipSampler:
    """The clip sampler shared by every phase, so stride and length mean the same thing everywhere.

    Args:
        mode: ``"random"`` (training: one random clip), ``"center"`` (one centre clip), ``"even"``
            (validation: ``n_clips`` spread clips), ``"sliding"`` (test: every clip, ``window_stride`` apart).
        clip_length: frames per clip after subsampling (``--sample_duration``).
        t_stride: temporal subsampling stride (``--sample_t_stride``), honoured in every mode.
        n_clips: clips per video for ``"even"`` (``--n_val_samples``).
        window_stride: start-to-start distance in subsampled frames for ``"sliding"`` (``--inference_stride``).

    ``sampler(frame_numbers, rng)`` returns a list of clips (lists of frame numbers, ``clip_length`` each);
    ``"random"``/``"center"`` return a list of one clip.
    """

    MODES = ("random", "center", "even", "sliding")

    def __init__(self, mode: str, clip_length: int, t_stride: int = 1, n_clips: int = 3, window_stride: int = 16):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.clip_length = _check_positive(clip_length, "clip_length")
        self.t_stride = _check_positive(t_stride, "t_stride")
        self.n_clips = _check_positive(n_clips, "n_clips")
        self.window_stride = _check_positive(window_stride, "window_stride")
        crop = {
            "random": TemporalRandomCrop(clip_length),
            "center": TemporalCenterCrop(clip_length),
            "even": TemporalEvenCrop(clip_length, n_clips),
            "sliding": SlidingWindow(clip_length, window_stride),
        }[mode]
        steps = [TemporalSubsampling(t_stride)] if t_stride > 1 else []
        self.transform = Compose(steps + [crop])

    def __call__(self, frame_numbers: Sequence[int], rng: random.Random) -> Clips:
        if len(frame_numbers) == 0:
            raise ValueError("cannot sample a clip from a video with no frames")
        out = self.transform(frame_numbers, rng)
        return out if self.mode in ("even", "sliding") else [out]

    def __repr__(self) -> str:
        return (
            f"ClipSampler(mode={self.mode!r}, clip_length={self.clip_length}, t_stride={self.t_stride}, "
            f"n_clips={self.n_clips}, window_stride={self.window_stride})"
        )
