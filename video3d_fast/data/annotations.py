"""Annotation files: the authors' "ActivityNet-like" JSON and the official ActivityNet JSON.

Two layouts are read (both written by the authors' ``util_scripts`` or by ``video3d-fast prepare``):

Kinetics / UCF-101 / HMDB-51 / Moments in Time (one label per video)::

    {"labels": ["abseiling", ...],                        # class index = position in this list
     "database": {"<video_id>": {"subset": "training" | "validation" | "testing",
                                 "annotations": {"label": "abseiling", "segment": [1, 251]},
                                 "video_path": "/abs/path"},   # optional
                  ...}}

``segment`` is ``[first, last + 1]`` in the frame numbering of the storage: 1-based for jpg folders
(``[1, n_frames + 1]``), 0-based for hdf5 and video files (``[0, n_frames]``). It may be absent (CVPR-era
files); the frame count is then taken from the storage. ``testing`` entries have ``"annotations": {}``.

ActivityNet (official file, untrimmed videos, several labelled segments in seconds per video)::

    {"taxonomy": [{"nodeId": 0, "parentId": null, "nodeName": "Root"}, ...],
     "database": {"<youtube_id>": {"subset": "training", "duration": 123.4, "fps": 29.97,
                                   "annotations": [{"label": "Drinking coffee", "segment": [2.1, 17.9]}, ...]}}}

Classes are the taxonomy's leaf nodes in taxonomy order; ``fps`` is added by ``video3d-fast prepare activitynet-fps``
(the authors' ``add_fps_into_activitynet_json.py``). Every labelled segment becomes one sample with frames
``ceil(t0 * fps)`` (at least 1) to ``ceil(t1 * fps)``; frame folders are named ``v_<youtube_id>``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    "SUBSETS",
    "Annotation",
    "VideoEntry",
    "canonical_subset",
    "load_annotation",
    "write_annotation",
]

SUBSETS = ("training", "validation", "testing")
_SUBSET_ALIASES = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "testing",
    "testing": "testing",
}


def canonical_subset(name: str) -> str:
    """Map ``train``/``val``/``test`` (the authors' --inference_subset values) to the JSON's subset strings.

    The authors' README passes ``--subset val`` to eval_accuracy.py, which matches nothing because the
    JSON says ``validation``; accepting both spellings removes that trap.
    """
    if not isinstance(name, str):
        raise TypeError(f"subset must be a str, got {type(name).__name__}")
    try:
        return _SUBSET_ALIASES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown subset {name!r}; expected one of {sorted(_SUBSET_ALIASES)}") from None


@dataclass(frozen=True)
class VideoEntry:
    """One sample listed by an annotation file.

    ``segment`` is the half-open frame range ``[begin, end)`` in the storage's numbering, or None when
    the file does not say (the count then comes from the frames on disk). ``name`` is the folder/file
    name on disk (differs from ``video_id`` only for ActivityNet's ``v_`` prefix).
    """

    video_id: str
    subset: str
    label: Optional[str]
    segment: Optional[Tuple[int, int]] = None
    video_path: Optional[str] = None
    name: Optional[str] = None

    @property
    def disk_name(self) -> str:
        return self.name if self.name is not None else self.video_id


@dataclass
class Annotation:
    """Parsed annotation file: ordered class names and the entries of every subset."""

    labels: List[str]
    entries: List[VideoEntry]
    source: str = "<memory>"

    def __post_init__(self):
        self.class_to_idx: Dict[str, int] = {name: i for i, name in enumerate(self.labels)}
        if len(self.class_to_idx) != len(self.labels):
            dupes = sorted({name for name in self.labels if self.labels.count(name) > 1})
            raise ValueError(f"{self.source}: duplicate class names in 'labels': {dupes}")
        for entry in self.entries:
            if entry.label is not None and entry.label not in self.class_to_idx:
                preview = ", ".join(repr(x) for x in self.labels[:5])
                raise ValueError(
                    f"{self.source}: video {entry.video_id!r} has label {entry.label!r}, which is not in the file's "
                    f"'labels' list ({len(self.labels)} classes: {preview}{', ...' if len(self.labels) > 5 else ''})"
                )

    def subset(self, name: str) -> List[VideoEntry]:
        """Entries of one subset (``training``/``validation``/``testing``; ``train``/``val``/``test`` accepted)."""
        wanted = canonical_subset(name)
        return [e for e in self.entries if e.subset == wanted]

    def label_index(self, entry: VideoEntry) -> int:
        """Class index of an entry, -1 when unlabelled (the authors' convention for test videos)."""
        return -1 if entry.label is None else self.class_to_idx[entry.label]

    def ground_truth(self, subset: str) -> Dict[str, str]:
        """``{video_id: label}`` of the labelled entries of a subset (used by the evaluation command)."""
        return {e.video_id: e.label for e in self.subset(subset) if e.label is not None}


def load_annotation(path: os.PathLike | str) -> Annotation:
    """Read an annotation JSON in either layout of the module docstring.

    Raises:
        FileNotFoundError: the file does not exist (the message names ``--annotation_path``).
        ValueError: the JSON is neither layout, or an entry's label is not a known class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path} (check --annotation_path / --root_path)")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
    return parse_annotation(data, source=str(path))


def parse_annotation(data: dict, source: str = "<memory>") -> Annotation:
    """Parse an already-loaded annotation dict (see :func:`load_annotation`)."""
    if not isinstance(data, dict) or "database" not in data:
        raise ValueError(f"{source}: expected a JSON object with a 'database' key (the authors' annotation layout)")
    if not isinstance(data["database"], dict):
        raise ValueError(f"{source}: 'database' must map video ids to entries")
    if "labels" in data:
        return _parse_labelled(data, source)
    if "taxonomy" in data:
        return _parse_activitynet(data, source)
    raise ValueError(f"{source}: has neither 'labels' (Kinetics/UCF-101/HMDB-51/MiT layout) nor 'taxonomy' (ActivityNet)")


def _parse_subset(value, video_id: str, source: str) -> str:
    if value not in SUBSETS:
        raise ValueError(f"{source}: video {video_id!r} has subset {value!r}; expected one of {SUBSETS}")
    return value


def _parse_segment(segment, video_id: str, source: str) -> Optional[Tuple[int, int]]:
    if segment is None:
        return None
    if not (isinstance(segment, (list, tuple)) and len(segment) == 2):
        raise ValueError(f"{source}: video {video_id!r} has segment {segment!r}; expected [first_frame, last_frame + 1]")
    begin, end = int(segment[0]), int(segment[1])
    return begin, end


def _parse_labelled(data: dict, source: str) -> Annotation:
    labels = data["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{source}: 'labels' must be a list of class names")
    entries = []
    for video_id, value in data["database"].items():
        subset = _parse_subset(value.get("subset"), video_id, source)
        annotations = value.get("annotations") or {}
        if isinstance(annotations, list):
            raise ValueError(
                f"{source}: video {video_id!r} has a list of annotations (ActivityNet style) but the file has "
                "'labels' instead of 'taxonomy'"
            )
        label = annotations.get("label")
        entries.append(
            VideoEntry(
                video_id=video_id,
                subset=subset,
                label=label,
                segment=_parse_segment(annotations.get("segment"), video_id, source),
                video_path=value.get("video_path"),
            )
        )
    return Annotation(list(labels), entries, source)


def activitynet_classes(taxonomy: Sequence[dict]) -> List[str]:
    """Leaf node names of an ActivityNet taxonomy, in taxonomy order (the 200 classes of v1.3)."""
    parents = {node.get("parentId") for node in taxonomy}
    return [node["nodeName"] for node in taxonomy if node["nodeId"] not in parents]


def _parse_activitynet(data: dict, source: str) -> Annotation:
    labels = activitynet_classes(data["taxonomy"])
    entries = []
    for video_id, value in data["database"].items():
        subset = _parse_subset(value.get("subset"), video_id, source)
        annotations = value.get("annotations") or []
        name = value.get("name", "v_" + video_id)
        if not annotations:
            # Untrimmed testing video: the whole video is one sample, frame count from disk.
            entries.append(VideoEntry(video_id, subset, None, None, value.get("video_path"), name))
            continue
        fps = value.get("fps")
        if fps is None:
            raise ValueError(
                f"{source}: ActivityNet video {video_id!r} has no 'fps'; run `video3d-fast prepare activitynet-fps` to add it"
            )
        for ann in annotations:
            t0, t1 = ann["segment"]
            begin = max(1, math.ceil(t0 * fps))
            end = math.ceil(t1 * fps)
            entries.append(VideoEntry(video_id, subset, ann["label"], (begin, end), value.get("video_path"), name))
    return Annotation(labels, entries, source)


def write_annotation(path: os.PathLike | str, labels: Sequence[str], database: Dict[str, dict]) -> None:
    """Write the labelled layout (``{"labels", "database"}``) atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"labels": list(labels), "database": database}, f)
    os.replace(tmp, path)
