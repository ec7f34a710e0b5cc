"""``video3d-fast demo``: the whole system on an embedded dataset, offline, in a few minutes on 2 CPU cores.

1. writes a small action dataset of real H.264 videos (:mod:`video3d_fast.data.synthetic`: six classes of
   motion -- four directions, two senses of rotation -- that no single frame can tell apart);
2. trains a small 3D ResNet through the fused ops (``backend="auto"``: the C++ CPU kernels here), validating
   each epoch (clip accuracy);
3. tests at video level (every sliding-window clip, mean softmax) and writes the authors' result JSON;
4. trains and tests the same network on 1-frame clips (every frame of a test video scored, scores averaged):
   the single-frame baseline, which can only reach chance on this data;
5. prints the accuracy table (clip accuracy and video accuracy, labelled as such).

Everything lands in ``--workdir`` (default ``runs/demo``): the data, and per model ``opts.json``,
``train.log``, ``val.log``, ``last.pth``, ``val.json`` -- try ``video3d-fast plot runs/demo/motion_3d``.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from ..config import Config
from ..data.synthetic import CLASSES, MotionDatasetSpec, make_motion_dataset

__all__ = ["demo_config", "run_demo"]

FULL_SPEC = MotionDatasetSpec(train_per_class=40, val_per_class=12, n_frames=32, height=64, width=64)
QUICK_SPEC = MotionDatasetSpec(train_per_class=12, val_per_class=4, n_frames=24, height=64, width=64)


def demo_config(video_path, annotation_path, result_path, quick: bool = False, backend: str = "auto",
                single_frame: bool = False, progress: bool = True) -> Config:
    """The demo's run options: a small ResNet-10 on 8-frame 48x48 clips (no flips: they would swap classes).

    ``single_frame``: the same network and recipe on 1-frame clips, tested on every frame of a video.
    """
    frames = 1 if single_frame else 8
    return Config(
        video_path=str(video_path),
        annotation_path=str(annotation_path),
        result_path=str(result_path),
        dataset="ucf101",
        file_type="video",
        n_classes=len(CLASSES),
        model="resnet",
        model_depth=10,
        resnet_widen_factor=0.5,
        conv1_t_size=3,
        sample_size=48,
        sample_duration=frames,
        train_crop="random",
        train_crop_min_scale=0.5,
        no_hflip=True,  # a mirrored "move_left" is a "move_right": flips would corrupt the labels
        batch_size=16,
        n_epochs=4 if quick else 10,
        learning_rate=0.01,
        weight_decay=1e-4,
        lr_scheduler="cosine",
        warmup_epochs=1.0,
        n_val_samples=2,
        inference=True,
        inference_subset="val",
        inference_stride=frames,
        n_threads=0,  # decoding 64x64 clips is cheap: no worker processes competing for the 2 cores
        checkpoint=1000,
        backend=backend,
        manual_seed=0,
        no_progress=not progress,
        mean_dataset="0.5",
    ).validate()


def _pick_threads(requested: Optional[int]) -> int:
    """torch threads for the demo: oneDNN's conv backward slows down ~10x when its OpenMP threads compete
    with other busy processes for the cores, so use fewer threads than busy-free cores."""
    if requested:
        return requested
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def run_demo(workdir: os.PathLike | str = "runs/demo", quick: bool = False, backend: str = "auto",
             threads: Optional[int] = None, progress: bool = True,
             echo: Callable[[str], None] = lambda s: print(s, flush=True)) -> Dict:
    """Run the demo (see the module docstring); returns the numbers of the printed table."""
    from .engine import Runner
    from .evaluation import evaluate_result_file

    started = time.perf_counter()
    workdir = Path(workdir)
    spec = QUICK_SPEC if quick else FULL_SPEC
    n_threads = _pick_threads(threads)
    torch.set_num_threads(n_threads)
    echo(f"[1/3] writing the motion dataset ({len(CLASSES)} classes: {', '.join(CLASSES)}) to {workdir / 'data'}")
    t = time.perf_counter()
    paths = make_motion_dataset(workdir / "data", spec, progress=progress)
    data_seconds = time.perf_counter() - t
    n_train, n_val = spec.train_per_class * len(CLASSES), spec.val_per_class * len(CLASSES)
    echo(f"      {n_train} training + {n_val} validation H.264 videos, {spec.width}x{spec.height}, "
         f"{spec.n_frames} frames ({data_seconds:.0f} s)")
    rows = {}
    for step, (name, single) in enumerate((("motion_3d", False), ("single_frame", True)), start=2):
        result_path = workdir / name
        if result_path.exists():
            shutil.rmtree(result_path)  # the demo's own folder: start clean each time
        cfg = demo_config(paths["video_path"], paths["annotation_path"], result_path, quick, backend, single, progress)
        what = "the same network on 1-frame clips" if single else f"3D ResNet-10 on {cfg.sample_duration}-frame clips"
        echo(f"[{step}/3] training {what}: {cfg.n_epochs} epochs, torch threads {n_threads}")
        t = time.perf_counter()
        summary = Runner(cfg, echo=lambda s: echo("      " + s)).run()
        seconds = time.perf_counter() - t
        test = summary["test"]
        check = evaluate_result_file(paths["annotation_path"], test.path, "validation", (1, 5))
        rows[name] = {
            "val_clip_acc": summary["val"][-1].clip_acc,
            "video_top1": check.accuracy(1),
            "video_top5": check.accuracy(5),
            "seconds": seconds,
            "result_json": str(test.path),
            "arch": cfg.arch,
        }
    total = time.perf_counter() - started
    chance = 1.0 / len(CLASSES)
    echo("")
    echo(f"video3d-fast demo: {len(CLASSES)} motion classes, {n_val} validation videos "
         f"(video level = mean softmax over all clips of a video)")
    echo(f"  {'model':<42}{'val clip acc':>13}{'video top-1':>13}{'video top-5':>13}{'time':>8}")
    labels = {"motion_3d": "3D ResNet-10, 8-frame clips (fused ops)", "single_frame": "same network, 1-frame clips"}
    for name, row in rows.items():
        echo(f"  {labels[name]:<42}{100 * row['val_clip_acc']:>12.1f}%{100 * row['video_top1']:>12.1f}%"
             f"{100 * row['video_top5']:>12.1f}%{row['seconds']:>7.0f}s")
    echo(f"  {'chance':<42}{100 * chance:>12.1f}%{100 * chance:>12.1f}%{100 * min(1.0, 5 * chance):>12.1f}%")
    echo(f"total {total:.0f} s (data {data_seconds:.0f} s). Evaluate again with: video3d-fast eval "
         f"{paths['annotation_path']} {rows['motion_3d']['result_json']}")
    return {"rows": rows, "total_seconds": total, "data_seconds": data_seconds, "threads": n_threads, "chance": chance}
