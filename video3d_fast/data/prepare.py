"""Dataset preparation (the authors' ``util_scripts``), behind ``video3d-fast prepare ...``.

Storage:

* :func:`extract_frames` -- videos -> ``<dst>/<label>/<video>/image_00001.jpg`` (1-based), short side ``size``
  (240 as the authors), decoded with PyAV instead of a shell-out to ffmpeg, so nothing else needs to be on
  PATH (their #199). Optional ``fps`` resampling picks the frame nearest each target time (no motion
  interpolation, unlike their ``minterpolate``).
* :func:`pack_hdf5` -- the same frames into one ``<dst>/<label>/<video>.hdf5`` per video, dataset ``video``
  holding each frame's JPEG bytes (0-based), the authors' HDF5 layout.

Annotation JSON (the authors' layout, see :mod:`.annotations`), each with a ``segment`` for every video
found on disk (``[1, n + 1]`` for jpg folders, ``[0, n]`` for hdf5 and video files):

* :func:`kinetics_json` -- ``kinetics-<N>_{train,val,test}.csv``; labels in first-appearance order of the train CSV;
  ids ``<youtube_id>_<start:06d>_<end:06d>``.
* :func:`ucf101_json` -- ``classInd.txt``, ``trainlist0k.txt``, ``testlist0k.txt`` -> ``ucf101_0{1,2,3}.json``.
* :func:`hmdb51_json` -- ``<label>_test_split{k}.txt`` (1 train, 2 test, 0 unused) -> ``hmdb51_{1,2,3}.json``.
* :func:`mit_json` -- Moments in Time ``moments_categories.txt``, ``trainingSet.csv``, ``validationSet.csv``.
* :func:`folders_json` -- any ``<root>/<label>/<video>`` tree, split at random (seeded): your own data.
* :func:`add_activitynet_fps` -- adds ``fps`` to the official ActivityNet JSON (their ``add_fps_into_activitynet_json.py``).

Unreadable videos are reported and counted; preparation goes on with the others.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .annotations import write_annotation
from .readers import VIDEO_EXTENSIONS, CorruptVideoError, make_reader

__all__ = [
    "PrepareReport",
    "add_activitynet_fps",
    "extract_frames",
    "folders_json",
    "hmdb51_json",
    "kinetics_json",
    "list_videos",
    "mit_json",
    "pack_hdf5",
    "ucf101_json",
]


@dataclass
class PrepareReport:
    """What a preparation command did."""

    written: int = 0
    skipped_existing: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        out = f"{self.written} written, {self.skipped_existing} already done, {len(self.failed)} failed"
        if self.failed:
            out += "; first failure: " + ": ".join(self.failed[0])
        return out


# ---------------------------------------------------------------------------------------------- frames
def list_videos(src: Path, flat: bool = False, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> List[Tuple[str, Path]]:
    """``(label_dir, video_file)`` pairs: ``<src>/<label>/<video>.<ext>``, or ``<src>/<video>.<ext>`` if ``flat``."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"video folder {src} does not exist")
    exts = {e.lower() for e in extensions}
    out = []
    dirs = [src] if flat else sorted(p for p in src.iterdir() if p.is_dir())
    for d in dirs:
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in exts:
                out.append(("" if flat else d.name, f))
    return out


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    try:
        import torch
        from torchvision.io import encode_jpeg

        return encode_jpeg(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), quality=quality).numpy().tobytes()
    except ImportError:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
        return buf.getvalue()


def _scaled_size(width: int, height: int, size: int) -> Tuple[int, int]:
    if size <= 0:
        return width, height
    if width >= height:  # landscape: height = size (ffmpeg scale=-1:size)
        return max(1, int(round(width * size / height))), size
    return size, max(1, int(round(height * size / width)))


def _decode_jpegs(video: Path, size: int, fps: float, quality: int) -> List[bytes]:
    """Decode ``video`` with PyAV, resize (short side ``size``), optionally resample to ``fps``, JPEG-encode."""
    import av

    try:
        container = av.open(str(video))
        stream = container.streams.video[0]
    except Exception as e:
        raise CorruptVideoError(f"{video}: cannot open: {e}") from e
    stream.thread_type = "AUTO"
    out: List[bytes] = []
    next_time = 0.0
    try:
        for frame in container.decode(stream):
            if fps > 0:
                t = float(frame.time) if frame.time is not None else len(out) / fps
                if t + 0.5 / fps < next_time:
                    continue
                next_time += 1.0 / fps
            w, h = _scaled_size(frame.width, frame.height, size)
            rgb = frame.to_ndarray(width=w, height=h, format="rgb24")
            out.append(_encode_jpeg(rgb, quality))
    except Exception as e:
        if not out:
            raise CorruptVideoError(f"{video}: decoding failed: {e}") from e
        warnings.warn(f"{video}: stream damaged after {len(out)} frames, keeping those ({e})", stacklevel=2)
    finally:
        container.close()
    if not out:
        raise CorruptVideoError(f"{video}: no frame decoded")
    return out


def _extract_one(job) -> Tuple[str, str, str]:
    """Worker: one video -> frames or hdf5. Returns (status, video, message)."""
    video, target, kind, size, fps, quality = job
    video, target = Path(video), Path(target)
    try:
        if kind == "jpg":
            if target.is_dir() and (target / "image_00001.jpg").exists() and _complete_marker(target).exists():
                return "existing", str(video), ""
            frames = _decode_jpegs(video, size, fps, quality)
            target.mkdir(parents=True, exist_ok=True)
            for i, blob in enumerate(frames, start=1):
                (target / f"image_{i:05d}.jpg").write_bytes(blob)
            _complete_marker(target).write_text(str(len(frames)))
            return "written", str(video), ""
        if target.is_file():
            return "existing", str(video), ""
        import h5py

        frames = _decode_jpegs(video, size, fps, quality)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with h5py.File(tmp, "w") as f:
            data = f.create_dataset("video", (len(frames),), dtype=h5py.vlen_dtype(np.dtype("uint8")))
            for i, blob in enumerate(frames):
                data[i] = np.frombuffer(blob, dtype=np.uint8)
        os.replace(tmp, target)
        return "written", str(video), ""
    except CorruptVideoError as e:
        return "failed", str(video), str(e)


def _complete_marker(folder: Path) -> Path:
    # Written last: a folder without it was interrupted and is redone. Same content as the CVPR-era
    # n_frames file, which the jpg reader uses as the frame count.
    return folder / "n_frames"


def _run_extraction(src, dst, kind: str, flat: bool, size: int, fps: float, quality: int, n_jobs: int,
                    progress: bool) -> PrepareReport:
    dst = Path(dst)
    jobs = []
    for label, video in list_videos(Path(src), flat):
        base = dst / label / video.stem
        target = base if kind == "jpg" else base.with_name(video.stem + ".hdf5")
        jobs.append((str(video), str(target), kind, size, fps, quality))
    report = PrepareReport()
    if not jobs:
        raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found under {src}"
                         + ("" if flat else " in <label>/ subfolders"))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"extracting {kind}", unit="video")

    def account(result):
        status, video, message = result
        if status == "written":
            report.written += 1
        elif status == "existing":
            report.skipped_existing += 1
        else:
            report.failed.append((video, message))
            warnings.warn(f"skipping unreadable video: {message}", stacklevel=3)
        if bar is not None:
            bar.update()

    if n_jobs <= 1:
        for job in jobs:
            account(_extract_one(job))
    else:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            for fut in as_completed([pool.submit(_extract_one, job) for job in jobs]):
                account(fut.result())
    if bar is not None:
        bar.close()
    return report


def extract_frames(src, dst, flat: bool = False, size: int = 240, fps: float = -1, quality: int = 90,
                   n_jobs: int = 1, progress: bool = False) -> PrepareReport:
    """Videos under ``src`` -> jpg frame folders under ``dst`` (see the module docstring).

    Args:
        flat: videos directly in ``src`` (ActivityNet) instead of ``src/<label>/``.
        size: short side in pixels (<= 0 keeps the original size).
        fps: resample to this frame rate (<= 0 keeps every frame).
        quality: JPEG quality.
        n_jobs: worker processes.
    Folders completed earlier (with their ``n_frames`` file) are left alone, so an interrupted run resumes.
    """
    return _run_extraction(src, dst, "jpg", flat, size, fps, quality, n_jobs, progress)


def pack_hdf5(src, dst, flat: bool = False, size: int = 240, fps: float = -1, quality: int = 90, n_jobs: int = 1,
              progress: bool = False) -> PrepareReport:
    """Videos under ``src`` -> one HDF5 of JPEG bytes per video under ``dst`` (the authors' layout)."""
    return _run_extraction(src, dst, "hdf5", flat, size, fps, quality, n_jobs, progress)


# ---------------------------------------------------------------------------------------------- JSON
def _segment(video_root: Optional[Path], label_dir: str, name: str, file_type: str) -> Optional[List[int]]:
    """``[first, last + 1]`` of a stored video, or None if it is not on disk (the authors' rule)."""
    if video_root is None:
        return None
    reader = make_reader(file_type)
    path = reader.locate(Path(video_root), label_dir, name)
    if not reader.exists(path):
        return None
    try:
        n = reader.count_frames(path)
    except CorruptVideoError as e:
        warnings.warn(f"not counting frames of unreadable {path}: {e}", stacklevel=3)
        return None
    return [reader.first_index, reader.first_index + n]


def _entry(subset: str, label: Optional[str], segment) -> Dict:
    annotations: Dict = {}
    if label is not None:
        annotations["label"] = label
    if segment is not None:
        annotations["segment"] = segment
    return {"subset": subset, "annotations": annotations}


def _write(dst, labels, database) -> Path:
    dst = Path(dst)
    write_annotation(dst, labels, database)
    return dst


def _read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def kinetics_json(csv_dir, n_classes: int, video_root, file_type: str, dst) -> Path:
    """Kinetics-``n_classes`` CSVs (``kinetics-<N>_{train,val[,test]}.csv``) -> annotation JSON."""
    csv_dir = Path(csv_dir)
    files = {s: csv_dir / f"kinetics-{n_classes}_{s}.csv" for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if not files[s].is_file():
            raise FileNotFoundError(f"{files[s]} not found (expected the official Kinetics CSVs in {csv_dir})")
    train_rows = _read_csv(files["train"])
    labels: List[str] = []
    for row in train_rows:
        if row["label"] not in labels:
            labels.append(row["label"])  # first appearance order, as the authors (not sorted)
    database = {}
    for split, subset in (("train", "training"), ("val", "validation"), ("test", "testing")):
        if not files[split].is_file():
            continue
        rows = train_rows if split == "train" else _read_csv(files[split])
        for row in rows:
            key = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
            label = row.get("label") if subset != "testing" else None
            database[key] = _entry(subset, label, _segment(video_root, label or "test", key, file_type))
    return _write(dst, labels, database)


def _ucf_lines(path: Path) -> List[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def ucf101_json(annotation_dir, video_root, dst_dir, file_type: str = "jpg", splits: Iterable[int] = (1, 2, 3)) -> List[Path]:
    """UCF-101 split files -> ``ucf101_0{k}.json`` for each split k (labels in ``classInd.txt`` order)."""
    annotation_dir, dst_dir = Path(annotation_dir), Path(dst_dir)
    labels = [line.split()[1] for line in _ucf_lines(annotation_dir / "classInd.txt")]
    written = []
    for k in splits:
        database = {}
        for name, subset in ((f"trainlist0{k}.txt", "training"), (f"testlist0{k}.txt", "validation")):
            for line in _ucf_lines(annotation_dir / name):
                rel = line.split()[0]
                label, stem = rel.split("/")[0], Path(rel).stem
                database[stem] = _entry(subset, label, _segment(video_root, label, stem, file_type))
        written.append(_write(dst_dir / f"ucf101_0{k}.json", labels, database))
    return written


def hmdb51_json(annotation_dir, video_root, dst_dir, file_type: str = "jpg", splits: Iterable[int] = (1, 2, 3)) -> List[Path]:
    """HMDB-51 ``<label>_test_split{k}.txt`` files -> ``hmdb51_{k}.json`` (labels sorted by name)."""
    annotation_dir, dst_dir = Path(annotation_dir), Path(dst_dir)
    written = []
    for k in splits:
        files = sorted(annotation_dir.glob(f"*_test_split{k}.txt"))
        if not files:
            raise FileNotFoundError(f"no *_test_split{k}.txt files in {annotation_dir}")
        labels = sorted(f.name[: -len(f"_test_split{k}.txt")] for f in files)
        database = {}
        for f in files:
            label = f.name[: -len(f"_test_split{k}.txt")]
            for line in _ucf_lines(f):
                parts = line.split()
                if len(parts) < 2 or parts[1] not in ("1", "2"):
                    continue  # 0 = not used in this split
                stem = Path(parts[0]).stem
                subset = "training" if parts[1] == "1" else "validation"
                database[stem] = _entry(subset, label, _segment(video_root, label, stem, file_type))
        written.append(_write(dst_dir / f"hmdb51_{k}.json", labels, database))
    return written


def mit_json(annotation_dir, video_root, dst, file_type: str = "jpg") -> Path:
    """Moments in Time: ``moments_categories.txt`` (``name,index`` lines), ``trainingSet.csv``,
    ``validationSet.csv`` [, ``testingSet.csv``] (rows ``<label>/<file>,<label>,...``) -> annotation JSON."""
    annotation_dir = Path(annotation_dir)
    labels = [line.split(",")[0].strip() for line in _ucf_lines(annotation_dir / "moments_categories.txt")]
    database = {}
    for name, subset in (("trainingSet.csv", "training"), ("validationSet.csv", "validation"), ("testingSet.csv", "testing")):
        path = annotation_dir / name
        if not path.is_file():
            if subset != "testing":
                raise FileNotFoundError(f"{path} not found")
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if not row:
                    continue
                rel = row[0]
                stem = Path(rel).stem
                label = None if subset == "testing" else (row[1] if len(row) > 1 and row[1] else rel.split("/")[0])
                label_dir = label or "test"
                entry = _entry(subset, label, _segment(video_root, label_dir, stem, file_type))
                key = stem
                if key in database:  # a file name used in two classes: keep both, with explicit paths
                    key = f"{label_dir}/{stem}"
                    if video_root is not None:
                        entry["video_path"] = str(make_reader(file_type).locate(Path(video_root), label_dir, stem))
                database[key] = entry
    return _write(dst, labels, database)


def folders_json(video_root, dst, file_type: str = "video", val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Any ``<video_root>/<label>/<video>`` tree -> annotation JSON with a seeded random train/val split
    per class (labels sorted). ``file_type`` says what the entries are: video files, jpg folders or hdf5."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    video_root = Path(video_root)
    if not video_root.is_dir():
        raise FileNotFoundError(f"{video_root} does not exist")
    labels = sorted(p.name for p in video_root.iterdir() if p.is_dir())
    if not labels:
        raise ValueError(f"no <label>/ subfolders in {video_root}")
    rng = random.Random(seed)
    database = {}
    for label in labels:
        entries = sorted(p for p in (video_root / label).iterdir())
        if file_type == "video":
            names = [p.stem for p in entries if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
        elif file_type == "hdf5":
            names = [p.stem for p in entries if p.suffix == ".hdf5"]
        else:
            names = [p.name for p in entries if p.is_dir()]
        rng.shuffle(names)
        n_val = int(round(len(names) * val_fraction))
        for i, name in enumerate(sorted(names[:n_val]) + sorted(names[n_val:])):
            subset = "validation" if i < n_val else "training"
            key = name if name not in database else f"{label}/{name}"
            entry = _entry(subset, label, _segment(video_root, label, name, file_type))
            if key != name:
                entry["video_path"] = str(make_reader(file_type).locate(video_root, label, name))
            database[key] = entry
    return _write(dst, labels, database)


def add_activitynet_fps(activitynet_json, video_dir, dst) -> Tuple[Path, int]:
    """Add ``fps`` to each video of the official ActivityNet JSON, from ``<video_dir>/v_<id>`` (a video
    file, or a frame folder holding an ``fps`` file as the CVPR-era preparation wrote). Returns the
    written path and the number of videos without an fps (not found or unreadable)."""
    import av

    with open(activitynet_json, encoding="utf-8") as f:
        data = json.load(f)
    video_dir = Path(video_dir)
    missing = 0
    for video_id, entry in data["database"].items():
        name = "v_" + video_id
        fps = None
        folder = video_dir / name
        if folder.is_dir() and (folder / "fps").is_file():
            fps = float((folder / "fps").read_text().strip())
        else:
            for ext in VIDEO_EXTENSIONS:
                path = video_dir / (name + ext)
                if path.is_file():
                    try:
                        with av.open(str(path)) as c:
                            rate = c.streams.video[0].average_rate
                        fps = float(rate) if rate else None
                    except Exception:
                        fps = None
                    break
        if fps is None:
            missing += 1
        else:
            entry["fps"] = fps
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, dst)
    return dst, missing
