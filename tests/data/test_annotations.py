"""The authors' annotation JSON layouts parse: Kinetics, UCF-101, HMDB-51, Moments in Time, ActivityNet."""
import json
import math

import pytest

from video3d_fast.data.annotations import (
    activitynet_classes,
    canonical_subset,
    load_annotation,
    parse_annotation,
)

from .fixtures import write_json

# Exactly what util_scripts/kinetics_json.py writes: labels in first-appearance order, 6-digit time ids,
# jpg segments [1, n+1], testing entries with empty annotations.
KINETICS = {
    "labels": ["riding a bike", "abseiling", "zumba"],
    "database": {
        "--07WQ2iBlw_000001_000011": {"subset": "training",
                                      "annotations": {"label": "riding a bike", "segment": [1, 301]}},
        "-0dqVazKMdY_000010_000020": {"subset": "training", "annotations": {"label": "abseiling", "segment": [1, 251]}},
        "0a1b2c3d4e5_000003_000013": {"subset": "validation", "annotations": {"label": "zumba", "segment": [1, 300]}},
        "zzzzzzzzzzz_000000_000010": {"subset": "testing", "annotations": {}},
    },
}
# ucf101_json.py: labels from classInd.txt, keys are file stems, subsets training / validation.
UCF101 = {
    "labels": ["ApplyEyeMakeup", "ApplyLipstick", "Archery"],
    "database": {
        "v_ApplyEyeMakeup_g08_c01": {"subset": "training", "annotations": {"label": "ApplyEyeMakeup", "segment": [1, 122]}},
        "v_ApplyLipstick_g01_c02": {"subset": "validation", "annotations": {"label": "ApplyLipstick", "segment": [1, 77]}},
        "v_Archery_g07_c03": {"subset": "training", "annotations": {"label": "Archery", "segment": [1, 200]}},
    },
}
# hmdb51_json.py: sorted labels, hdf5 segments are 0-based [0, n].
HMDB51 = {
    "labels": ["brush_hair", "cartwheel"],
    "database": {
        "April_09_brush_hair_u_nm_np1_ba_goo_0": {"subset": "training",
                                                  "annotations": {"label": "brush_hair", "segment": [0, 56]}},
        "Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0": {"subset": "validation",
                                                         "annotations": {"label": "cartwheel", "segment": [0, 47]}},
    },
}
# mit_json.py: label strings with '+', CVPR-era style without segment is also allowed.
MIT = {
    "labels": ["adult+female+singing", "barking"],
    "database": {
        "yt-abc123_10": {"subset": "training", "annotations": {"label": "barking"}},
        "getty-singer-video-id123_1": {"subset": "validation", "annotations": {"label": "adult+female+singing"}},
    },
}
ACTIVITYNET = {
    "version": "VERSION 1.3",
    "taxonomy": [
        {"nodeId": 0, "parentId": None, "nodeName": "Root", "parentName": None},
        {"nodeId": 1, "parentId": 0, "nodeName": "Sports", "parentName": "Root"},
        {"nodeId": 2, "parentId": 1, "nodeName": "Long jump", "parentName": "Sports"},
        {"nodeId": 3, "parentId": 0, "nodeName": "Household", "parentName": "Root"},
        {"nodeId": 4, "parentId": 3, "nodeName": "Drinking coffee", "parentName": "Household"},
        {"nodeId": 5, "parentId": 1, "nodeName": "Archery", "parentName": "Sports"},
    ],
    "database": {
        "-1IBHYS3L-Y": {"subset": "training", "duration": 20.0, "fps": 30.0, "url": "https://www.youtube.com/watch?v=-1IBHYS3L-Y",
                        "annotations": [{"label": "Long jump", "segment": [0.01, 4.5]},
                                        {"label": "Long jump", "segment": [10.2, 15.77]}]},
        "abcdefghijk": {"subset": "validation", "duration": 8.0, "fps": 25.0,
                        "annotations": [{"label": "Drinking coffee", "segment": [1.0, 7.99]}]},
        "testvideo01": {"subset": "testing", "duration": 30.0, "annotations": []},
    },
}


@pytest.mark.parametrize("data", [KINETICS, UCF101, HMDB51, MIT], ids=["kinetics", "ucf101", "hmdb51", "mit"])
def test_labelled_layouts_parse_with_label_order_subsets_and_segments(tmp_path, data):
    ann = load_annotation(write_json(tmp_path / "a.json", data))
    assert ann.labels == data["labels"]  # order is the class index, never re-sorted
    assert len(ann.entries) == len(data["database"])
    for entry in ann.entries:
        raw = data["database"][entry.video_id]
        assert entry.subset == raw["subset"]
        assert entry.label == raw["annotations"].get("label")
        seg = raw["annotations"].get("segment")
        assert entry.segment == (tuple(seg) if seg else None)
        if entry.label is not None:
            assert ann.label_index(entry) == data["labels"].index(entry.label)


def test_kinetics_testing_entries_are_unlabelled_with_index_minus_one(tmp_path):
    ann = load_annotation(write_json(tmp_path / "k.json", KINETICS))
    (test_entry,) = ann.subset("test")
    assert test_entry.label is None and ann.label_index(test_entry) == -1
    assert set(ann.ground_truth("validation")) == {"0a1b2c3d4e5_000003_000013"}


def test_subset_aliases_match_the_json_strings():
    assert canonical_subset("val") == canonical_subset("validation") == "validation"
    assert canonical_subset("train") == "training" and canonical_subset("TEST") == "testing"
    with pytest.raises(ValueError, match="unknown subset"):
        canonical_subset("dev")


def test_unknown_label_is_a_clear_error_naming_video_and_label():
    data = json.loads(json.dumps(UCF101))
    data["database"]["v_ApplyEyeMakeup_g08_c01"]["annotations"]["label"] = "Juggling"
    with pytest.raises(ValueError, match=r"v_ApplyEyeMakeup_g08_c01.*'Juggling'.*3 classes"):
        parse_annotation(data, "ucf.json")


def test_bad_subset_and_bad_layout_are_errors():
    data = json.loads(json.dumps(HMDB51))
    data["database"]["April_09_brush_hair_u_nm_np1_ba_goo_0"]["subset"] = "train"
    with pytest.raises(ValueError, match="subset 'train'"):
        parse_annotation(data)
    with pytest.raises(ValueError, match="'database'"):
        parse_annotation({"labels": []})
    with pytest.raises(ValueError, match="neither 'labels'"):
        parse_annotation({"database": {}})


def test_missing_file_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="--annotation_path"):
        load_annotation(tmp_path / "nope.json")


def test_activitynet_classes_are_taxonomy_leaves_in_order():
    assert activitynet_classes(ACTIVITYNET["taxonomy"]) == ["Long jump", "Drinking coffee", "Archery"]


def test_activitynet_segments_become_frame_ranges_per_annotation(tmp_path):
    ann = load_annotation(write_json(tmp_path / "anet.json", ACTIVITYNET))
    train = ann.subset("training")
    assert [e.segment for e in train] == [(1, math.ceil(4.5 * 30)), (math.ceil(10.2 * 30), math.ceil(15.77 * 30))]
    assert all(e.disk_name == "v_-1IBHYS3L-Y" for e in train)  # frame folders carry the v_ prefix
    (val,) = ann.subset("validation")
    assert val.segment == (25, 200) and val.label == "Drinking coffee"
    (test,) = ann.subset("testing")
    assert test.label is None and test.segment is None  # untrimmed: whole video, count from disk


def test_activitynet_without_fps_asks_for_the_fps_command():
    data = json.loads(json.dumps(ACTIVITYNET))
    del data["database"]["abcdefghijk"]["fps"]
    with pytest.raises(ValueError, match="prepare activitynet-fps"):
        parse_annotation(data)
