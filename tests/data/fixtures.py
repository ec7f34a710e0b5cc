"""Small on-disk datasets in the authors' exact layouts, built fresh in a tmp folder by the tests.

* ``write_mp4``: real H.264 files (PyAV/libx264) of known frames.
* ``write_jpg_folder``: ``<dir>/image_00001.jpg ...`` (1-based).
* ``write_hdf5``: one ``.hdf5`` with dataset ``video`` = JPEG bytes per frame (0-based), optionally flow.
* ``annotation_dict``: the ``{"labels", "database"}`` JSON of Kinetics/UCF-101/HMDB-51/MiT.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


def random_frames(rng: np.random.Generator, n: int, h: int = 32, w: int = 40) -> np.ndarray:
    """Smooth random frames (JPEG/H.264 reproduce them closely): uint8 [n, h, w, 3]."""
    import torch
    import torch.nn.functional as F

    base = torch.from_numpy(rng.uniform(40, 200, (n, 3, h // 8 + 2, w // 8 + 2)))
    frames = F.interpolate(base, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1).numpy()
    return np.clip(frames, 0, 255).round().astype(np.uint8)


def write_mp4(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    from video3d_fast.data.synthetic import write_video

    write_video(Path(path), frames, fps=fps, crf=12)
    return Path(path)


def jpeg_bytes(frame: np.ndarray, gray: bool = False, quality: int = 95) -> bytes:
    from PIL import Image

    img = Image.fromarray(frame[..., 0] if gray else frame)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_jpg_folder(folder: Path, frames: np.ndarray) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, start=1):
        (folder / f"image_{i:05d}.jpg").write_bytes(jpeg_bytes(frame))
    return folder


def write_hdf5(path: Path, frames: np.ndarray, flow: Optional[np.ndarray] = None) -> Path:
    """``video`` (RGB JPEGs) or, with ``flow`` [n, h, w, 2] uint8, ``video_u`` / ``video_v`` (gray JPEGs)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vlen = h5py.vlen_dtype(np.dtype("uint8"))
    with h5py.File(path, "w") as f:
        if flow is None:
            d = f.create_dataset("video", (len(frames),), dtype=vlen)
            for i, frame in enumerate(frames):
                d[i] = np.frombuffer(jpeg_bytes(frame), dtype=np.uint8)
        else:
            for c, key in enumerate(("video_u", "video_v")):
                d = f.create_dataset(key, (len(flow),), dtype=vlen)
                for i, plane in enumerate(flow[..., c : c + 1]):
                    d[i] = np.frombuffer(jpeg_bytes(plane, gray=True), dtype=np.uint8)
    return path


def annotation_dict(labels: Sequence[str], entries: Dict[str, dict]) -> dict:
    """``entries``: id -> {"subset", "label" (or None), "segment" (or None)} in the authors' JSON layout."""
    database = {}
    for video_id, e in entries.items():
        ann = {}
        if e.get("label") is not None:
            ann["label"] = e["label"]
        if e.get("segment") is not None:
            ann["segment"] = list(e["segment"])
        database[video_id] = {"subset": e["subset"], "annotations": ann}
        if e.get("video_path"):
            database[video_id]["video_path"] = e["video_path"]
    return {"labels": list(labels), "database": database}


def write_json(path: Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def make_video_dataset(root: Path, file_type: str, labels: Sequence[str] = ("a", "b", "c"), per_subset: int = 2,
                       n_frames: int = 12, h: int = 32, w: int = 40, seed: int = 0) -> Dict[str, object]:
    """A dataset of ``file_type`` (video/jpg/hdf5) with ``per_subset`` videos per class in training and
    validation, plus the annotation JSON. Returns paths and the frames written per video id."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    video_root = root / file_type
    entries, written = {}, {}
    for subset in ("training", "validation"):
        for label in labels:
            for i in range(per_subset):
                vid = f"{label}_{subset[:3]}_{i}"
                frames = random_frames(rng, n_frames, h, w)
                written[vid] = frames
                if file_type == "video":
                    write_mp4(video_root / label / f"{vid}.mp4", frames)
                    segment = (0, n_frames)
                elif file_type == "jpg":
                    write_jpg_folder(video_root / label / vid, frames)
                    segment = (1, n_frames + 1)
                else:
                    write_hdf5(video_root / label / f"{vid}.hdf5", frames)
                    segment = (0, n_frames)
                entries[vid] = {"subset": subset, "label": label, "segment": segment}
    ann = write_json(root / f"{file_type}.json", annotation_dict(labels, entries))
    return {"video_path": video_root, "annotation_path": ann, "frames": written, "labels": list(labels)}


def truncate(path: Path, keep_bytes: int) -> Path:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:keep_bytes])
    return Path(path)


def ids(entries) -> List[str]:
    return sorted(e.video_id for e in entries)
