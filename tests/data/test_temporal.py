"""Temporal transforms and the shared clip sampler (the authors' rules, their #254/#207 fixed)."""
import random

import pytest

from video3d_fast.data.temporal import (
    ClipSampler,
    Compose,
    LoopPadding,
    SlidingWindow,
    TemporalCenterCrop,
    TemporalEvenCrop,
    TemporalRandomCrop,
    TemporalSubsampling,
)


def frames(n, first=1):
    return list(range(first, first + n))


def test_even_crop_matches_the_authors_example_300_frames():
    clips = TemporalEvenCrop(16, 3)(frames(300))
    assert [c[0] for c in clips] == [1, 143, 285]
    assert all(c == list(range(c[0], c[0] + 16)) for c in clips)


def test_even_crop_with_one_sample_is_the_centre_clip_not_a_division_by_zero():
    assert TemporalEvenCrop(16, 1)(frames(100)) == [TemporalCenterCrop(16)(frames(100))]


def test_even_crop_on_short_video_loop_pads_and_stops():
    clips = TemporalEvenCrop(16, 3)(frames(10))
    assert clips == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3, 4, 5, 6]]


@pytest.mark.parametrize("n,stride,size", [(64, 16, 16), (65, 16, 16), (100, 8, 16), (7, 16, 16), (33, 5, 4)])
def test_sliding_window_count_and_coverage(n, stride, size):
    clips = SlidingWindow(size, stride)(frames(n))
    assert all(len(c) == size for c in clips)
    starts = [c[0] for c in clips]
    assert starts == frames(n)[::stride][: len(clips)]
    if stride <= size:
        assert {f for c in clips for f in c} == set(frames(n))  # every frame is seen
    if stride == size:
        assert len(clips) == -(-n // size)  # ceil(n / size), the authors' protocol


def test_subsampling_is_honoured_by_every_mode():
    """The authors rebuilt val/test clips with range(), dropping --sample_t_stride (their #254)."""
    video = frames(200)
    for mode in ClipSampler.MODES:
        sampler = ClipSampler(mode, clip_length=8, t_stride=3, n_clips=3, window_stride=8)
        clips = sampler(video, random.Random(0))
        assert clips, mode
        for clip in clips[:-1] if mode == "sliding" else clips:
            assert len(clip) == 8
            assert all(b - a == 3 for a, b in zip(clip, clip[1:])), (mode, clip)


def test_random_crop_draws_every_start_including_the_last():
    crop = TemporalRandomCrop(4)
    rng = random.Random(0)
    starts = {crop(frames(10), rng)[0] for _ in range(400)}
    assert starts == set(range(1, 8))  # 7 valid starts for 10 frames (the authors never drew the last)


def test_random_crop_is_reproducible_from_the_generator():
    a = [TemporalRandomCrop(5)(frames(50), random.Random(42)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_center_crop_and_loop_padding():
    assert TemporalCenterCrop(4)(frames(10)) == [4, 5, 6, 7]
    assert LoopPadding(7)([5, 6, 7]) == [5, 6, 7, 5, 6, 7, 5]
    with pytest.raises(ValueError, match="empty"):
        LoopPadding(3)([])


def test_compose_applies_later_steps_per_clip():
    out = Compose([TemporalSubsampling(2), SlidingWindow(3, 3), TemporalSubsampling(2)])(frames(12), random.Random(0))
    assert out == [[1, 5], [7, 11]]


def test_sampler_returns_a_list_of_clips_in_every_mode():
    rng = random.Random(0)
    assert len(ClipSampler("random", 4)(frames(20), rng)) == 1
    assert len(ClipSampler("center", 4)(frames(20), rng)) == 1
    assert len(ClipSampler("even", 4, n_clips=3)(frames(20), rng)) == 3
    assert len(ClipSampler("sliding", 4, window_stride=4)(frames(20), rng)) == 5


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="mode"):
        ClipSampler("uniform", 4)
    with pytest.raises(ValueError, match="clip_length"):
        ClipSampler("random", 0)
    with pytest.raises(TypeError, match="t_stride"):
        ClipSampler("random", 4, t_stride=1.5)
    with pytest.raises(ValueError, match="no frames"):
        ClipSampler("random", 4)([], random.Random(0))
