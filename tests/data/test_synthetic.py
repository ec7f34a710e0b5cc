"""The demo's synthetic motion dataset: deterministic, real H.264, motion as labelled, reused when unchanged."""
import json

import numpy as np
import pytest

from video3d_fast.data.annotations import load_annotation
from video3d_fast.data.readers import VideoFileReader
from video3d_fast.data.synthetic import CLASSES, MotionDatasetSpec, make_motion_dataset, render_video


def _shift(a: np.ndarray, b: np.ndarray, r: int = 4):
    """(dy, dx) that best maps frame a onto frame b (content displacement)."""
    best = None
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            err = np.abs(np.roll(a, (dy, dx), axis=(0, 1))[8:-8, 8:-8].astype(float) - b[8:-8, 8:-8]).mean()
            if best is None or err < best[0]:
                best = (err, dy, dx)
    return best[1:]


@pytest.mark.parametrize("label,sign", [("move_left", (0, -1)), ("move_right", (0, 1)), ("move_up", (-1, 0)),
                                        ("move_down", (1, 0))])
def test_translation_classes_move_the_scene_in_their_direction(label, sign):
    frames = render_video(label, np.random.default_rng(4), 6, 64, 64)
    for t in range(5):
        dy, dx = _shift(frames[t], frames[t + 1])
        assert np.sign(dy) == sign[0] and np.sign(dx) == sign[1], (t, dy, dx)


def test_rotation_classes_turn_in_opposite_senses():
    def turn(label):
        f = render_video(label, np.random.default_rng(5), 12, 64, 64).astype(float)
        # content above the centre moves right for clockwise (y down), left for counter-clockwise
        return _shift(f[0, :24], f[10, :24], r=6)[1]

    assert turn("orbit_clockwise") > 0 > turn("orbit_counterclockwise")


def test_rendering_is_deterministic_and_videos_differ():
    a = render_video("move_up", np.random.default_rng(9), 4, 32, 32)
    b = render_video("move_up", np.random.default_rng(9), 4, 32, 32)
    c = render_video("move_up", np.random.default_rng(10), 4, 32, 32)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match="label"):
        render_video("jump", np.random.default_rng(0), 4, 32, 32)


def test_dataset_layout_annotation_and_reuse(tmp_path):
    spec = MotionDatasetSpec(train_per_class=1, val_per_class=1, n_frames=6, height=32, width=32)
    paths = make_motion_dataset(tmp_path, spec)
    ann = load_annotation(paths["annotation_path"])
    assert ann.labels == list(CLASSES)
    assert len(ann.subset("training")) == len(ann.subset("validation")) == len(CLASSES)
    entry = ann.subset("training")[0]
    video = paths["video_path"] / entry.label / f"{entry.video_id}.mp4"
    assert entry.segment == (0, 6) and VideoFileReader().count_frames(video) == 6
    stamp = video.stat().st_mtime_ns
    make_motion_dataset(tmp_path, spec)  # same spec: nothing rewritten
    assert video.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "spec.json").read_text())["fingerprint"] == spec.fingerprint()
