"""Spatial transforms on uint8 clips and the batched normalisation, against torchvision / hand computations."""
import math
import random

import pytest
import torch

from video3d_fast.data.transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    CornerCrop,
    MultiScaleCornerCrop,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    get_mean_std,
    resize_clip,
)

tvf = pytest.importorskip("torchvision.transforms.functional")


@pytest.fixture
def clip():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (5, 3, 37, 50), generator=g, dtype=torch.uint8)  # odd sizes, T = 5


def test_resize_matches_torchvision_antialiased_bilinear(clip):
    ours = resize_clip(clip, (20, 27))
    ref = tvf.resize(clip, [20, 27], antialias=True)
    assert ours.dtype == torch.uint8 and ours.shape == (5, 3, 20, 27)
    assert (ours.int() - ref.int()).abs().max() <= 1


def test_resize_short_side_keeps_aspect_like_torchvision(clip):
    assert Resize(20)(clip).shape[-2:] == (20, int(20 * 50 / 37))
    tall = clip.transpose(-1, -2).contiguous()
    assert Resize(20)(tall).shape[-2:] == (int(20 * 50 / 37), 20)


def test_center_and_corner_crops_take_the_expected_windows(clip):
    assert torch.equal(CenterCrop(16)(clip), clip[..., 10:26, 17:33])
    assert torch.equal(CenterCrop((16, 16))(clip), tvf.center_crop(clip, [16, 16]))
    H, W = clip.shape[-2:]
    assert torch.equal(CornerCrop(10, "tl")(clip), clip[..., :10, :10])
    assert torch.equal(CornerCrop(10, "tr")(clip), clip[..., :10, W - 10 :])
    assert torch.equal(CornerCrop(10, "bl")(clip), clip[..., H - 10 :, :10])
    assert torch.equal(CornerCrop(10, "br")(clip), clip[..., H - 10 :, W - 10 :])
    assert torch.equal(CornerCrop(10, "c")(clip), clip[..., 14:24, 20:30])


def test_crop_larger_than_frame_zero_pads(clip):
    out = CenterCrop(40)(clip[..., :30, :30])
    assert out.shape[-2:] == (40, 40)
    assert int(out[..., :5, :].max()) == 0 and torch.equal(out[..., 5:35, 5:35], clip[..., :30, :30])


def test_multiscale_corner_crop_draws_scale_and_position_then_resizes(clip):
    t = MultiScaleCornerCrop(16)
    seed = 7
    r = random.Random(seed)
    scale = t.scales[r.randint(0, len(t.scales) - 1)]
    position = t.crop_positions[r.randint(0, len(t.crop_positions) - 1)]
    side = int(37 * scale)
    expected = resize_clip(CornerCrop(side, position)(clip), (16, 16))
    assert torch.equal(t(clip, random.Random(seed)), expected)
    assert [round(s, 4) for s in t.scales] == [1.0, 0.8409, 0.7071, 0.5946, 0.5]


def test_random_resized_crop_boxes_respect_scale_and_ratio():
    t = RandomResizedCrop(16, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3))
    rng = random.Random(1)
    for _ in range(500):
        top, left, h, w = t.box(37, 50, rng)
        assert 0 <= top and top + h <= 37 and 0 <= left and left + w <= 50
        assert 0.25 * 37 * 50 * 0.8 <= h * w <= 37 * 50  # rounding of sqrt sides
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15


def test_random_resized_crop_output_is_one_box_for_all_frames(clip):
    rng_seed = 3
    top, left, h, w = RandomResizedCrop(16).box(37, 50, random.Random(rng_seed))
    out = RandomResizedCrop(16)(clip, random.Random(rng_seed))
    assert torch.equal(out, resize_clip(clip[..., top : top + h, left : left + w], (16, 16)))


def test_flip_is_one_decision_per_clip(clip):
    assert torch.equal(RandomHorizontalFlip(1.0)(clip, random.Random(0)), clip.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(clip, random.Random(0)), clip)


@pytest.mark.parametrize("which", ["brightness", "contrast", "saturation", "hue"])
def test_color_jitter_each_component_matches_torchvision(clip, which):
    params = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    params[which] = 0.4 if which != "hue" else 0.2
    seed = 11
    r = random.Random(seed)
    r.shuffle([0, 1, 2, 3])
    factors = [r.uniform(max(0.0, 1 - a), 1 + a) for a in (params["brightness"], params["contrast"], params["saturation"])]
    hue = r.uniform(-params["hue"], params["hue"])
    x = clip.float() / 255
    ref = {
        "brightness": lambda: tvf.adjust_brightness(x, factors[0]),
        "contrast": lambda: tvf.adjust_contrast(x, factors[1]),
        "saturation": lambda: tvf.adjust_saturation(x, factors[2]),
        "hue": lambda: tvf.adjust_hue(x, hue),
    }[which]()
    ours = ColorJitter(**params)(clip, random.Random(seed))
    assert ours.dtype == torch.uint8
    assert ((ours.float() - (ref * 255).round()).abs() <= 1.0).float().mean() > 0.999


def test_normalize_batched_equals_formula_for_both_value_scales():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (2, 3, 4, 6, 7), generator=g, dtype=torch.uint8)
    mean, std = get_mean_std(1.0, "kinetics")
    out = Normalize(mean, std, 1.0)(x)
    ref = (x.float() / 255 - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Normalize(mean, std, 1.0)(x[0]), ref[0], rtol=1e-5, atol=1e-5)


def test_2018_mode_is_0_255_minus_activitynet_mean_without_std():
    mean, std = get_mean_std(255, "activitynet_2018", no_std_norm=True)
    assert std == (1.0, 1.0, 1.0)
    x = torch.randint(0, 256, (3, 2, 4, 4), dtype=torch.uint8)
    out = Normalize(mean, std, 255)(x)
    ref = x.float() - torch.tensor([114.7748, 107.7354, 99.4750]).view(3, 1, 1, 1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


def test_mean_std_tables_and_switches():
    assert get_mean_std(1, "kinetics") == ((0.4345, 0.4051, 0.3775), (0.2768, 0.2713, 0.2737))
    mean, std = get_mean_std(255, "activitynet")
    assert math.isclose(mean[0], 0.4477 * 255) and math.isclose(std[2], 0.2714 * 255)
    assert get_mean_std(1, "0.5", no_mean_norm=True)[0] == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="mean_dataset"):
        get_mean_std(1, "imagenet")


def test_flow_normalize_uses_first_two_channels():
    mean, std = get_mean_std(1, "kinetics")
    n = Normalize(mean, std, 1.0, n_channels=2)
    assert n(torch.zeros(2, 1, 2, 2, dtype=torch.uint8)).shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match="channels"):
        n(torch.zeros(3, 1, 2, 2, dtype=torch.uint8))


def test_compose_rejects_float_and_wrong_rank(clip):
    t = Compose([CenterCrop(8)])
    with pytest.raises(TypeError, match="uint8"):
        t(clip.float(), random.Random(0))
    with pytest.raises(ValueError, match=r"\[T, C, H, W\]"):
        t(clip[0], random.Random(0))
