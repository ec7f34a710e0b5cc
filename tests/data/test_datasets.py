"""Datasets, collate, sampler and the per-phase pipeline on real files in the authors' layouts."""
import dataclasses
import warnings

import pytest
import torch

from video3d_fast.config import Config
from video3d_fast.data.annotations import load_annotation
from video3d_fast.data.datasets import CorruptVideoWarning, SkippedSample, VideoDataset, collate_videos, find_samples
from video3d_fast.data.pipeline import build_dataset, build_loader
from video3d_fast.data.readers import make_reader
from video3d_fast.data.samplers import ShardedSampler
from video3d_fast.data.temporal import ClipSampler
from video3d_fast.data.transforms import Compose, RandomResizedCrop

from .fixtures import annotation_dict, make_video_dataset, truncate, write_json


@pytest.fixture(scope="module", params=["video", "jpg", "hdf5"])
def dataset_files(request, tmp_path_factory):
    return make_video_dataset(tmp_path_factory.mktemp(request.param), request.param)


def _cfg(files, **kw):
    file_type = files["video_path"].name
    base = dict(video_path=str(files["video_path"]), annotation_path=str(files["annotation_path"]), file_type=file_type,
                n_classes=3, sample_size=16, sample_duration=4, n_val_samples=2, inference_stride=4, manual_seed=3)
    base.update(kw)
    return Config(**base).validate()


def test_every_phase_gives_fixed_size_uint8_clips(dataset_files):
    cfg = _cfg(dataset_files)
    n_frames = 12
    for phase, n_clips in (("train", 1), ("val", 2), ("test", 3)):
        ds = build_dataset(cfg, phase)
        clips, target, video_id, segments = ds[0]
        assert clips.dtype == torch.uint8 and clips.shape == (n_clips, 3, 4, 16, 16), phase
        assert 0 <= target < 3 and len(segments) == n_clips
        first = 1 if cfg.file_type == "jpg" else 0
        assert all(first <= b < e <= first + n_frames for b, e in segments)


def test_augmentation_is_a_function_of_seed_epoch_and_index(dataset_files):
    ds = build_dataset(_cfg(dataset_files), "train")
    a = ds[1][0]
    assert torch.equal(a, ds[1][0])
    ds.set_epoch(1)
    b = ds[1][0]
    assert not torch.equal(a, b)  # new epoch, new crop
    ds.set_epoch(0)
    assert torch.equal(a, ds[1][0])


def test_loader_batches_do_not_depend_on_worker_count(dataset_files):
    cfg = _cfg(dataset_files)
    ds = build_dataset(cfg, "train")
    ds.set_epoch(2)

    def batches(workers):
        loader = build_loader(ds, 4, shuffle=True, seed=5, num_workers=workers)
        loader.sampler.set_epoch(2)
        return [(b.clips, b.targets, b.video_ids) for b in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 2
    for (c0, t0, i0), (c1, t1, i1) in zip(serial, parallel):
        assert torch.equal(c0, c1) and torch.equal(t0, t1) and i0 == i1


def test_drop_last_drops_the_partial_batch_unless_nothing_would_be_left(dataset_files):
    """--cuda_graph's training loader: only full batches (a replayed graph has one batch size)."""
    ds = build_dataset(_cfg(dataset_files), "train")
    n = len(ds)
    sizes = [len(b) for b in build_loader(ds, n - 1, shuffle=False, seed=0, num_workers=0, drop_last=True)]
    assert sizes == [n - 1] and n % (n - 1)  # the partial batch of one clip is gone
    assert [len(b) for b in build_loader(ds, n - 1, shuffle=False, seed=0, num_workers=0)] == [n - 1, 1]
    small = build_loader(ds, n + 1, shuffle=False, seed=0, num_workers=0, drop_last=True)
    assert [len(b) for b in small] == [n]  # fewer clips than a batch: keep them


def test_single_frame_baseline_repeats_one_frame(dataset_files):
    ds = build_dataset(_cfg(dataset_files, single_frame=True), "train")
    clip = ds[0][0][0]  # [C, T, H, W]
    assert all(torch.equal(clip[:, 0], clip[:, t]) for t in range(clip.shape[1]))


def test_corrupt_video_is_skipped_with_a_warning_and_counted(tmp_path):
    files = make_video_dataset(tmp_path, "video", per_subset=2)
    victim = next(iter(sorted((files["video_path"] / "b").glob("*.mp4"))))
    truncate(victim, 3000)
    cfg = _cfg(files)
    ds = build_dataset(cfg, "train")
    loader = build_loader(ds, 3, shuffle=False, seed=0, num_workers=0)
    seen, skipped = 0, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in loader:  # the epoch goes on past the bad file
            seen += len(batch)
            skipped += batch.skipped
            assert batch.clips.shape[0] == len(batch)
    assert seen == len(ds) - 1
    assert [vid for vid, _ in skipped] == [victim.stem]
    assert any(issubclass(w.category, CorruptVideoWarning) and victim.stem in str(w.message) for w in caught)


def test_all_corrupt_batch_collates_to_an_empty_batch():
    batch = collate_videos([SkippedSample("x", "bad"), SkippedSample("y", "bad")])
    assert len(batch) == 0 and batch.skipped == [("x", "bad"), ("y", "bad")]


def test_missing_video_path_and_empty_dataset_errors(tmp_path):
    files = make_video_dataset(tmp_path, "jpg", per_subset=1)
    with pytest.raises(FileNotFoundError, match="--video_path"):
        build_dataset(dataclasses.replace(_cfg(files), video_path=str(tmp_path / "nowhere")), "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty dataset: none of the 3 training videos.*image_|empty dataset"):
        build_dataset(dataclasses.replace(_cfg(files), video_path=str(empty)), "train")
    with pytest.raises(ValueError, match="as --file_type video"):
        build_dataset(dataclasses.replace(_cfg(files), file_type="video"), "train")


def test_more_classes_than_n_classes_is_an_error(tmp_path):
    files = make_video_dataset(tmp_path, "jpg", per_subset=1)
    with pytest.raises(ValueError, match="--n_classes 3"):
        build_dataset(_cfg(files, n_classes=2), "train")


def test_missing_entries_are_left_out_with_one_warning(tmp_path):
    files = make_video_dataset(tmp_path, "hdf5", per_subset=2)
    (files["video_path"] / "a" / "a_tra_0.hdf5").unlink()
    with pytest.warns(UserWarning, match="1 of 6 training videos"):
        ds = build_dataset(_cfg(files), "train")
    assert len(ds) == 5


def test_explicit_video_path_and_unlabelled_test_folder(tmp_path):
    files = make_video_dataset(tmp_path, "jpg", per_subset=1)
    moved = tmp_path / "elsewhere" / "clip"
    (files["video_path"] / "a" / "a_tra_0").rename(moved.parent.mkdir(parents=True) or moved)
    data = annotation_dict(["a"], {"a_tra_0": {"subset": "training", "label": "a", "video_path": str(moved)},
                                   "t0": {"subset": "testing", "label": None}})
    (files["video_path"] / "test").mkdir()
    (files["video_path"] / "a" / "a_val_0").rename(files["video_path"] / "test" / "t0")
    ann = load_annotation(write_json(tmp_path / "x.json", data))
    reader = make_reader("jpg")
    samples, missing = find_samples(ann, "training", files["video_path"], reader)
    assert samples[0].path == moved and not missing
    samples, _ = find_samples(ann, "testing", files["video_path"], reader)
    assert samples[0].label == -1 and samples[0].segment is None
    ds = VideoDataset(samples, reader, ClipSampler("sliding", 4, window_stride=4), Compose([RandomResizedCrop(8)]))
    assert ds[0][0].shape == (3, 3, 4, 8, 8)  # 12 frames counted on disk -> 3 clips


def test_sharded_sampler_splits_global_batches_like_accumulation():
    """Rank r of W takes slice r of each global batch: the micro-batches of W=1 with accumulation W."""
    single = list(ShardedSampler(24, 2, rank=0, world_size=1, shuffle=True, seed=1))
    ranks = [list(ShardedSampler(24, 2, rank=r, world_size=2, shuffle=True, seed=1)) for r in range(2)]
    for step in range(6):
        assert ranks[0][2 * step : 2 * step + 2] == single[4 * step : 4 * step + 2]
        assert ranks[1][2 * step : 2 * step + 2] == single[4 * step + 2 : 4 * step + 4]


def test_sharded_sampler_eval_covers_each_sample_once_and_train_pads_evenly():
    evals = [list(ShardedSampler(11, 3, rank=r, world_size=3, shuffle=False, pad_to_world=False)) for r in range(3)]
    assert sorted(i for part in evals for i in part) == list(range(11))
    trains = [ShardedSampler(11, 2, rank=r, world_size=3, shuffle=True, seed=0) for r in range(3)]
    assert len({len(s) for s in trains}) == 1 and sum(len(s) for s in trains) == 12
    s = ShardedSampler(10, 2, shuffle=True, seed=0)
    first = list(s)
    s.set_epoch(1)
    assert sorted(list(s)) == list(range(10)) and list(s) != first


def test_activitynet_segments_read_from_flat_v_prefixed_folders(tmp_path):
    import numpy as np

    from .fixtures import random_frames, write_jpg_folder

    frames = random_frames(np.random.default_rng(0), 30, 24, 32)
    write_jpg_folder(tmp_path / "frames" / "v_vid1", frames)
    data = {
        "taxonomy": [{"nodeId": 0, "parentId": None, "nodeName": "Root"},
                     {"nodeId": 1, "parentId": 0, "nodeName": "Archery"},
                     {"nodeId": 2, "parentId": 0, "nodeName": "Bowling"}],
        "database": {"vid1": {"subset": "training", "fps": 10.0, "duration": 3.0,
                              "annotations": [{"label": "Bowling", "segment": [0.5, 1.2]},
                                              {"label": "Archery", "segment": [2.0, 2.95]}]}},
    }
    ann = write_json(tmp_path / "anet.json", data)
    cfg = Config(video_path=str(tmp_path / "frames"), annotation_path=str(ann), dataset="activitynet", file_type="jpg",
                 n_classes=2, sample_size=16, sample_duration=4).validate()
    ds = build_dataset(cfg, "train")
    assert [(s.label, s.segment) for s in ds.samples] == [(1, (5, 12)), (0, (20, 30))]
    for i in range(2):
        clips, target, video_id, segments = ds[i]
        b, e = segments[0]
        assert video_id == "vid1" and ds.samples[i].segment[0] <= b < e <= ds.samples[i].segment[1]
