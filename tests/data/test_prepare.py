"""Preparation commands: frames / HDF5 from videos, annotation JSON from the official split files."""
import csv
import json

import numpy as np
import pytest
import torch

from video3d_fast.data import prepare
from video3d_fast.data.annotations import load_annotation
from video3d_fast.data.readers import Hdf5Reader, JpegFolderReader, VideoFileReader

from .fixtures import random_frames, truncate, write_jpg_folder, write_mp4


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory):
    """<root>/<label>/<video>.mp4 with 48x64 frames (landscape) and one portrait video."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    write_mp4(root / "jump" / "v1.mp4", random_frames(rng, 9, 48, 64))
    write_mp4(root / "jump" / "v2.mp4", random_frames(rng, 7, 48, 64))
    write_mp4(root / "run" / "v3.mp4", random_frames(rng, 5, 64, 48))
    return root


def test_extract_frames_writes_one_based_jpgs_at_the_short_side(tmp_path, video_tree):
    report = prepare.extract_frames(video_tree, tmp_path / "jpg", size=24)
    assert (report.written, report.failed) == (3, [])
    reader = JpegFolderReader()
    assert reader.count_frames(tmp_path / "jpg" / "jump" / "v1") == 9
    assert (tmp_path / "jpg" / "jump" / "v1" / "image_00001.jpg").is_file()
    assert reader.read(tmp_path / "jpg" / "jump" / "v1", [1]).shape == (1, 3, 24, 32)  # landscape: height 24
    assert reader.read(tmp_path / "jpg" / "run" / "v3", [5]).shape == (1, 3, 32, 24)  # portrait: width 24
    again = prepare.extract_frames(video_tree, tmp_path / "jpg", size=24)
    assert (again.written, again.skipped_existing) == (0, 3)  # resumable


def test_pack_hdf5_matches_the_decoded_video(tmp_path, video_tree):
    report = prepare.pack_hdf5(video_tree, tmp_path / "h5", size=0, quality=100)
    assert report.written == 3
    path = tmp_path / "h5" / "jump" / "v2.hdf5"
    assert Hdf5Reader().count_frames(path) == 7
    from_h5 = Hdf5Reader().read(path, [0, 6]).float()
    from_video = VideoFileReader().read(video_tree / "jump" / "v2.mp4", [0, 6]).float()
    assert (from_h5 - from_video).abs().mean() < 6.0  # JPEG (4:2:0 chroma) in between
    assert (from_h5[0] - from_video[1]).abs().mean() > 2 * (from_h5[0] - from_video[0]).abs().mean()  # same frames


def test_unreadable_video_is_reported_and_the_rest_prepared(tmp_path, video_tree):
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "good.mp4").write_bytes((video_tree / "jump" / "v1.mp4").read_bytes())
    (src / "x" / "bad.mp4").write_bytes((video_tree / "jump" / "v1.mp4").read_bytes())
    truncate(src / "x" / "bad.mp4", 2000)
    with pytest.warns(UserWarning, match="bad.mp4"):
        report = prepare.extract_frames(src, tmp_path / "out", size=0)
    assert report.written == 1 and [p for p, _ in report.failed] == [str(src / "x" / "bad.mp4")]


def test_no_videos_found_is_a_clear_error(tmp_path):
    (tmp_path / "lab").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        prepare.extract_frames(tmp_path, tmp_path / "o")


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_kinetics_json_label_order_ids_segments_and_test_subset(tmp_path):
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    header = ["label", "youtube_id", "time_start", "time_end", "split"]
    _write_csv(csv_dir / "kinetics-400_train.csv", header,
               [["zumba", "aaa", 5, 15, "train"], ["abseiling", "bbb", 0, 10, "train"], ["zumba", "ccc", 30, 40, "train"]])
    _write_csv(csv_dir / "kinetics-400_val.csv", header, [["abseiling", "ddd", 1, 11, "val"]])
    _write_csv(csv_dir / "kinetics-400_test.csv", ["youtube_id", "time_start", "time_end", "split"], [["eee", 2, 12, "test"]])
    frames = random_frames(np.random.default_rng(1), 4, 16, 16)
    write_jpg_folder(tmp_path / "jpg" / "zumba" / "aaa_000005_000015", frames)
    write_jpg_folder(tmp_path / "jpg" / "test" / "eee_000002_000012", frames[:3])
    out = prepare.kinetics_json(csv_dir, 400, tmp_path / "jpg", "jpg", tmp_path / "kinetics.json")
    raw = json.loads(out.read_text())
    assert raw["labels"] == ["zumba", "abseiling"]  # first appearance, not sorted
    assert raw["database"]["aaa_000005_000015"] == {"subset": "training", "annotations": {"label": "zumba", "segment": [1, 5]}}
    assert "segment" not in raw["database"]["bbb_000000_000010"]["annotations"]  # not on disk
    assert raw["database"]["eee_000002_000012"] == {"subset": "testing", "annotations": {"segment": [1, 4]}}
    ann = load_annotation(out)
    assert [e.video_id for e in ann.subset("validation")] == ["ddd_000001_000011"]


def test_ucf101_json_three_splits_from_classind_and_lists(tmp_path):
    d = tmp_path / "ucfTrainTestlist"
    d.mkdir()
    (d / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    for k in (1, 2, 3):
        (d / f"trainlist0{k}.txt").write_text(f"ApplyEyeMakeup/v_ApplyEyeMakeup_g0{k}_c01.avi 1\nArchery/v_Archery_g0{k}_c01.avi 2\n")
        (d / f"testlist0{k}.txt").write_text(f"Archery/v_Archery_g1{k}_c02.avi\n")
    write_jpg_folder(tmp_path / "jpg" / "Archery" / "v_Archery_g11_c02", random_frames(np.random.default_rng(2), 6, 16, 16))
    paths = prepare.ucf101_json(d, tmp_path / "jpg", tmp_path / "out")
    assert [p.name for p in paths] == ["ucf101_01.json", "ucf101_02.json", "ucf101_03.json"]
    ann = load_annotation(paths[0])
    assert ann.labels == ["ApplyEyeMakeup", "Archery"]
    (val,) = ann.subset("validation")
    assert (val.video_id, val.label, val.segment) == ("v_Archery_g11_c02", "Archery", (1, 7))
    assert sorted(e.video_id for e in ann.subset("training")) == ["v_ApplyEyeMakeup_g01_c01", "v_Archery_g01_c01"]


def test_hmdb51_json_uses_split_ids_and_sorted_labels(tmp_path):
    d = tmp_path / "splits"
    d.mkdir()
    (d / "wave_test_split1.txt").write_text("w_a.avi 1 \nw_b.avi 2 \nw_c.avi 0 \n")
    (d / "climb_test_split1.txt").write_text("c_a.avi 2 \n")
    (path,) = prepare.hmdb51_json(d, None, tmp_path, splits=(1,))
    ann = load_annotation(path)
    assert ann.labels == ["climb", "wave"]
    assert {(e.video_id, e.subset) for e in ann.entries} == {("w_a", "training"), ("w_b", "validation"), ("c_a", "validation")}


def test_mit_json_reads_categories_and_csvs(tmp_path):
    d = tmp_path / "mit"
    d.mkdir()
    (d / "moments_categories.txt").write_text("barking,0\nadult+female+singing,1\n")
    (d / "trainingSet.csv").write_text("barking/yt-a_1.mp4,barking,3,0\nadult+female+singing/g-b.mp4,adult+female+singing,2,1\n")
    (d / "validationSet.csv").write_text("barking/yt-c_4.mp4,barking,3,0\n")
    ann = load_annotation(prepare.mit_json(d, None, tmp_path / "mit.json"))
    assert ann.labels == ["barking", "adult+female+singing"]
    assert {(e.video_id, e.label, e.subset) for e in ann.entries} == {
        ("yt-a_1", "barking", "training"), ("g-b", "adult+female+singing", "training"), ("yt-c_4", "barking", "validation")}


def test_folders_json_splits_each_class_reproducibly(tmp_path, video_tree):
    a = load_annotation(prepare.folders_json(video_tree, tmp_path / "a.json", "video", val_fraction=0.5, seed=1))
    b = load_annotation(prepare.folders_json(video_tree, tmp_path / "b.json", "video", val_fraction=0.5, seed=1))
    assert a.labels == ["jump", "run"] and a.entries == b.entries
    assert [e.label for e in a.subset("validation")] == ["jump"]  # round(2 * 0.5) = 1, round(1 * 0.5) = 0
    seg = {e.video_id: e.segment for e in a.entries}
    assert seg == {"v1": (0, 9), "v2": (0, 7), "v3": (0, 5)}


def test_activitynet_fps_from_video_files(tmp_path, video_tree):
    src = {"taxonomy": [], "database": {"abc": {"subset": "training", "annotations": []},
                                        "missing": {"subset": "training", "annotations": []}}}
    (tmp_path / "anet.json").write_text(json.dumps(src))
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "v_abc.mp4").write_bytes((video_tree / "jump" / "v1.mp4").read_bytes())
    path, missing = prepare.add_activitynet_fps(tmp_path / "anet.json", tmp_path / "v", tmp_path / "out.json")
    data = json.loads(path.read_text())
    assert data["database"]["abc"]["fps"] == pytest.approx(25.0) and missing == 1


def test_prepared_frames_feed_the_dataset(tmp_path, video_tree):
    prepare.extract_frames(video_tree, tmp_path / "jpg", size=32)
    ann_path = prepare.folders_json(tmp_path / "jpg", tmp_path / "ann.json", "jpg", val_fraction=0.0)
    from video3d_fast.config import Config
    from video3d_fast.data.pipeline import build_dataset

    cfg = Config(video_path=str(tmp_path / "jpg"), annotation_path=str(ann_path), file_type="jpg", n_classes=2,
                 sample_size=16, sample_duration=4).validate()
    ds = build_dataset(cfg, "train")
    assert len(ds) == 3 and ds[0][0].shape == (1, 3, 4, 16, 16) and ds[0][0].dtype == torch.uint8
