"""Accuracy: clip-level counts for the loops, and video-level top-k from result JSON + annotation JSON.

Two different numbers, never to be confused (the authors' issues #131, #43, #55):

* **clip accuracy** (training and validation logs): each clip scored on its own.
* **video accuracy** (test phase, ``eval`` command): the softmax of every sliding-window clip of a video is
  averaged, and the video's top-k classes are compared with its label.

The result file is the authors' ``{"results": {video_id: [{"label": str, "score": float}, ...]}}``
(sorted by score, top ``--output_topk`` classes), so results of their ``inference.py`` evaluate too.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from ..data.annotations import canonical_subset, load_annotation

__all__ = [
    "VideoAccuracy",
    "evaluate_result_file",
    "load_results",
    "topk_correct",
    "video_accuracy",
    "video_topk_entries",
]


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> List[int]:
    """Number of rows whose target is among the top-k logits, per k (k capped at the class count)."""
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"expected logits [N, C] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if logits.shape[0] == 0:
        return [0 for _ in ks]
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == targets.view(-1, 1)
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def video_topk_entries(scores: torch.Tensor, class_names: Sequence[str], topk: int) -> List[Dict]:
    """``[{"label", "score"}, ...]`` of the ``topk`` best classes of one score vector (<= 0: all classes)."""
    k = len(class_names) if topk <= 0 else min(topk, len(class_names))
    values, indices = scores.float().topk(k)
    return [{"label": class_names[i], "score": float(v)} for v, i in zip(values.tolist(), indices.tolist())]


@dataclass
class VideoAccuracy:
    """Video-level top-k accuracies over ``n_videos`` ground-truth videos."""

    ks: List[int]
    hits: List[int]
    n_videos: int
    n_missing: int
    mean_class_top1: float

    def accuracy(self, k: int) -> float:
        return self.hits[self.ks.index(k)] / self.n_videos if self.n_videos else float("nan")

    def summary(self) -> str:
        parts = [f"video top-{k}: {100 * self.accuracy(k):.2f}%" for k in self.ks]
        parts.append(f"mean-class video top-1: {100 * self.mean_class_top1:.2f}%")
        parts.append(f"videos: {self.n_videos}" + (f" ({self.n_missing} without a result)" if self.n_missing else ""))
        return ", ".join(parts)


def video_accuracy(ground_truth: Dict[str, str], results: Dict[str, List[Dict]], ks: Sequence[int] = (1, 5),
                   ignore_missing: bool = False) -> VideoAccuracy:
    """Video top-k accuracy (the authors' ``eval_accuracy.py``): a hit when the label is among the k best.

    Videos of the ground truth without a result count as misses, unless ``ignore_missing`` (then they are
    left out of the denominator, like their ``--ignore``).
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"k values must be >= 1, got {ks}")
    hits = [0 for _ in ks]
    n, missing = 0, 0
    per_class: Dict[str, List[int]] = {}
    for video_id, label in ground_truth.items():
        entries = results.get(video_id)
        if entries is None:
            missing += 1
            if ignore_missing:
                continue
            ranked: List[str] = []
        else:
            if entries and "result" in entries[0]:
                raise ValueError("per-clip results (--inference_no_average) cannot be evaluated at video level; "
                                 "rerun the test without --inference_no_average")
            ranked = [e["label"] for e in sorted(entries, key=lambda e: -e["score"])]
        n += 1
        for j, k in enumerate(ks):
            hits[j] += label in ranked[:k]
        per_class.setdefault(label, [0, 0])
        per_class[label][0] += bool(ranked) and ranked[0] == label
        per_class[label][1] += 1
    mean_class = sum(h / t for h, t in per_class.values()) / len(per_class) if per_class else float("nan")
    return VideoAccuracy(ks, hits, n, missing, mean_class)


def load_results(path: os.PathLike | str) -> Dict[str, List[Dict]]:
    """The ``results`` mapping of a result JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path} is not a result file: expected {{\"results\": {{video_id: [...]}}}}")
    return data["results"]


def evaluate_result_file(annotation_path, result_path, subset: str = "validation", ks: Sequence[int] = (1, 5),
                         ignore_missing: bool = False, save: bool = False) -> VideoAccuracy:
    """Video top-k of a result JSON against the labelled videos of ``subset`` of an annotation JSON.

    ``subset`` accepts ``validation``/``val`` (the authors' README used ``val``, which matched nothing).
    With ``save``, writes ``top{k}.txt`` (the accuracy) next to the result file, as the authors' script.
    """
    subset = canonical_subset(subset)
    annotation = load_annotation(annotation_path)
    gt = annotation.ground_truth(subset)
    if not gt:
        raise ValueError(f"{annotation_path} has no labelled videos in subset {subset!r}")
    results = load_results(result_path)
    acc = video_accuracy(gt, results, ks, ignore_missing)
    if acc.n_videos == 0:
        raise ValueError(f"none of the {len(gt)} {subset} videos has a result in {result_path} (wrong --subset?)")
    if save:
        for k in acc.ks:
            Path(result_path).with_name(f"top{k}.txt").write_text(f"{acc.accuracy(k):.6f}\n")
    return acc
