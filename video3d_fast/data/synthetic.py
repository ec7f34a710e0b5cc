"""A small, deterministic action dataset of real H.264 videos whose classes need motion to tell apart.

Every video looks into a random scene (a colour gradient, blotches and 40-70 small coloured shapes) that
moves as a whole; the kind of motion is the class:

* ``move_left`` / ``move_right`` / ``move_up`` / ``move_down``: the scene slides at 1.5-3 pixels per frame;
* ``orbit_clockwise`` / ``orbit_counterclockwise``: the scene turns at 0.04-0.07 rad per frame about a point
  near the centre of the frame.

Scenes, window positions, speeds and centres are drawn at random per video, so the content of any single
frame carries no information about the class: a single-frame classifier stays at chance (1/6), while a
network that sees a few frames can read the direction of motion everywhere in the frame.

The videos are written with PyAV's libx264 (yuv420p, CRF 20, one thread: the same bytes on every run) in
the authors' layout ``<root>/<label>/<video_id>.mp4``, with an annotation JSON in the authors' format
(``segment`` = ``[0, n_frames]``, 0-based as for every decoded video file).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict

import numpy as np

from .annotations import write_annotation

__all__ = ["MotionDatasetSpec", "CLASSES", "make_motion_dataset", "render_video", "write_video"]

CLASSES = ("move_left", "move_right", "move_up", "move_down", "orbit_clockwise", "orbit_counterclockwise")


@dataclass(frozen=True)
class MotionDatasetSpec:
    """Size of the generated dataset. The defaults are the demo's (about 10 s to write on 2 cores)."""

    train_per_class: int = 40
    val_per_class: int = 12
    n_frames: int = 32
    height: int = 64
    width: int = 64
    fps: int = 25
    seed: int = 0

    def fingerprint(self) -> str:
        payload = json.dumps({"spec": asdict(self), "classes": CLASSES, "version": 2}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random ``size x size`` scene: smooth colour gradient, coarse blotches and 40-70 coloured shapes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c0, c1 = rng.uniform(20, 120, 3), rng.uniform(20, 120, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = ((xx * math.cos(angle) + yy * math.sin(angle)) / (2 * size) + 0.5)[..., None]
    img = c0 * (1 - t) + c1 * t
    coarse = rng.normal(0, 10, (size // 8 + 1, size // 8 + 1, 3))
    img = img + np.kron(coarse, np.ones((8, 8, 1)))[:size, :size]
    for _ in range(int(rng.integers(40, 71))):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(1.5, 4.5)
        kind = rng.integers(0, 3)
        colour = rng.uniform(120, 255, 3) * rng.permutation([1.0, rng.uniform(0.2, 1.0), rng.uniform(0.0, 0.5)])
        # draw in a small wrapped window around the shape: the scene tiles the plane seamlessly
        span = np.arange(-6, 7)
        rows, cols = (np.floor(cy).astype(int) + span) % size, (np.floor(cx).astype(int) + span) % size
        dy = np.abs(np.floor(cy) + span + 0.5 - cy)[:, None]
        dx = np.abs(np.floor(cx) + span + 0.5 - cx)[None, :]
        dist = np.sqrt(dx**2 + dy**2) if kind == 0 else (np.maximum(dx, dy) if kind == 1 else (dx + dy) / math.sqrt(2))
        alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0)[..., None]
        window = np.ix_(rows, cols)
        img[window] = img[window] * (1 - alpha) + colour * alpha
    return img.astype(np.float32)


def _sample(texture: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear samples ``[T, h, w, 3]`` of a tiling ``[S, S, 3]`` texture at float coordinates ``[T, h, w]``."""
    import torch
    import torch.nn.functional as F

    size = texture.shape[0]
    tex = torch.from_numpy(texture).permute(2, 0, 1)[None]
    tex = F.pad(tex, (0, 1, 0, 1), mode="circular")  # one wrapped row/column: no sample crosses the seam
    # coordinates in [0, size) of the padded texture, normalised for align_corners=True
    gy = torch.from_numpy(np.mod(ys, size)) / size * 2 - 1
    gx = torch.from_numpy(np.mod(xs, size)) / size * 2 - 1
    grid = torch.stack((gx, gy), dim=-1).float()
    out = F.grid_sample(tex.expand(grid.shape[0], -1, -1, -1), grid, mode="bilinear", align_corners=True)
    return out.permute(0, 2, 3, 1).numpy()


def render_video(label: str, rng: np.random.Generator, n_frames: int, h: int, w: int) -> np.ndarray:
    """Frames ``[n_frames, h, w, 3]`` uint8 of one video of class ``label`` (see the module docstring)."""
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    size = 2 * max(h, w)
    texture = _texture(rng, size)
    t = np.arange(n_frames, dtype=np.float32)[:, None, None]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy[None] - h / 2, xx[None] - w / 2  # frame coordinates about the centre
    oy, ox = rng.uniform(0, size, 2)  # random window into the scene: no position means anything
    if label.startswith("move_"):
        speed = rng.uniform(1.5, 3.0)  # pixels per frame
        vy, vx = {"move_left": (0, -1), "move_right": (0, 1), "move_up": (-1, 0), "move_down": (1, 0)}[label]
        # the scene moves by +v per frame, so the frame samples it at -v
        ys, xs = yy - vy * speed * t, xx - vx * speed * t
    else:
        omega = rng.uniform(0.04, 0.07) * (1 if label == "orbit_clockwise" else -1)  # rad/frame; y points down
        cy, cx = rng.uniform(-h / 6, h / 6), rng.uniform(-w / 6, w / 6)  # centre of rotation near the middle
        angle = -omega * t  # sample the scene rotated back by the angle it has turned
        cos, sin = np.cos(angle), np.sin(angle)
        ys = cy + (xx - cx) * sin + (yy - cy) * cos
        xs = cx + (xx - cx) * cos - (yy - cy) * sin
    frames = _sample(texture, ys + oy, xs + ox)
    frames += 8.0 * (rng.random(frames.shape, dtype=np.float32) - 0.5)  # sensor noise, fresh per frame
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_video(path: Path, frames: np.ndarray, fps: int = 25, crf: int = 20) -> None:
    """Encode ``[T, H, W, 3]`` uint8 frames as H.264 (libx264, yuv420p) with PyAV; H and W must be even."""
    import av

    t, h, w, c = frames.shape
    if c != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if h % 2 or w % 2:
        raise ValueError(f"H.264 with yuv420p needs even sizes, got {h}x{w}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def make_motion_dataset(root: Path | str, spec: MotionDatasetSpec = MotionDatasetSpec(), progress: bool = False) -> Dict[str, Path]:
    """Write the dataset under ``root`` (``videos/<label>/<id>.mp4`` and ``annotation.json``).

    A ``spec.json`` records what was written; a second call with the same spec returns at once.
    Returns ``{"video_path": ..., "annotation_path": ...}``.
    """
    root = Path(root)
    video_root, annotation_path, spec_path = root / "videos", root / "annotation.json", root / "spec.json"
    fingerprint = spec.fingerprint()
    if spec_path.is_file() and annotation_path.is_file():
        try:
            if json.loads(spec_path.read_text()).get("fingerprint") == fingerprint:
                return {"video_path": video_root, "annotation_path": annotation_path}
        except (OSError, ValueError):
            pass
    rng = np.random.default_rng(spec.seed)
    jobs = []
    for subset, per_class in (("training", spec.train_per_class), ("validation", spec.val_per_class)):
        for label in CLASSES:
            for i in range(per_class):
                jobs.append((subset, label, f"{label}_{subset[:5]}_{i:03d}", int(rng.integers(2**63))))
    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="writing demo videos", unit="video", leave=False)
    database = {}
    for subset, label, video_id, video_seed in iterator:
        frames = render_video(label, np.random.default_rng(video_seed), spec.n_frames, spec.height, spec.width)
        write_video(video_root / label / f"{video_id}.mp4", frames, fps=spec.fps)
        database[video_id] = {"subset": subset, "annotations": {"label": label, "segment": [0, spec.n_frames]}}
    write_annotation(annotation_path, CLASSES, database)
    spec_path.write_text(json.dumps({"fingerprint": fingerprint, "spec": asdict(spec)}, indent=2))
    return {"video_path": video_root, "annotation_path": annotation_path}
