"""The weights registry: metadata consistent with the models, loading from a local file or a (file://) URL with
hash checks, builders that follow the weights' options, and the preprocessing presets. Nothing downloads."""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import pytest
import torch

from video3d_fast.models import (
    ClipPreprocess,
    R3D_18_Weights,
    R3D_50_Weights,
    ResNeXt3D_101_Weights,
    TorchvisionR3D_18_Weights,
    Weights,
    WeightsEnum,
    generate_model,
    get_model_weights,
    get_weight,
    list_models,
    r3d_10,
    r3d_18,
)
from video3d_fast.models import weights as W


def _all_entries():
    return [member for cls in WeightsEnum.__subclasses__() for member in cls]


def test_every_entry_matches_its_builder_and_metadata():
    files, built = set(), {}
    for builder in list_models():
        enum = get_model_weights(builder)
        if enum is None:
            continue
        assert enum.DEFAULT in list(enum)
        for entry in enum:
            w = entry.value
            assert w.file_name not in files
            files.add(w.file_name)
            assert w.model_kwargs["n_classes"] == w.meta["num_classes"]
            assert w.checkpoint_format in ("master", "cvpr2018", "torchvision")
            assert isinstance(entry.transforms(), ClipPreprocess)
            arch = tuple(sorted((k, v) for k, v in w.model_kwargs.items() if k != "n_classes"))
            if arch not in built:  # the options must build the authors' architecture
                with torch.device("meta"):
                    built[arch] = generate_model(**dict(arch))
            assert (w.url is None) == (w.checkpoint_format != "torchvision")
    assert len(files) == len({e.file_name for e in _all_entries()}) == 38


def test_published_facts_are_recorded():
    assert R3D_50_Weights.MIT_200EP.meta["num_classes"] == 339
    assert R3D_50_Weights.KINETICS700_MIT_STAIR_200EP.file_name == "r3d50_KMS_200ep.pth"
    cvpr = R3D_18_Weights.KINETICS400_CVPR2018
    assert cvpr.model_kwargs["resnet_shortcut"] == "A"
    assert cvpr.meta["metrics"]["kinetics400_val_top1_top5_average"] == 66.1
    assert ResNeXt3D_101_Weights.KINETICS400_CVPR2018.model_kwargs["legacy_stem"] is True
    assert ResNeXt3D_101_Weights.UCF101_64F_SPLIT1_CVPR2018.meta["metrics"] == {"ucf101_top1_3split_average": 94.5}
    tv = TorchvisionR3D_18_Weights.KINETICS400_V1
    assert tv.url.endswith("r3d_18-b3b3357e.pth") and tv.sha256 == "b3b3357e"


def test_verify_and_get_weight_accept_names():
    assert R3D_50_Weights.verify("KINETICS700_200EP") is R3D_50_Weights.KINETICS700_200EP
    assert R3D_50_Weights.verify("R3D_50_Weights.DEFAULT") is R3D_50_Weights.KINETICS700_200EP
    assert get_weight("R3D_18_Weights.KINETICS400_CVPR2018") is R3D_18_Weights.KINETICS400_CVPR2018
    assert R3D_50_Weights.verify(None) is None
    with pytest.raises(ValueError, match="not a member"):
        R3D_50_Weights.verify("IMAGENET")
    with pytest.raises(TypeError):
        R3D_50_Weights.verify(3)
    with pytest.raises(ValueError, match="unknown weights enum"):
        get_weight("R3D_19_Weights.DEFAULT")


@pytest.fixture(scope="module")
def cvpr_r18_file(tmp_path_factory):
    """A file shaped like the authors' resnet-18-kinetics.pth (shortcut A, DataParallel keys, no
    num_batches_tracked), with random weights."""
    torch.manual_seed(0)
    net = generate_model("resnet", 18, resnet_shortcut="A", n_classes=400)
    state = OrderedDict(("module." + k, v) for k, v in net.state_dict().items() if "num_batches" not in k)
    path = tmp_path_factory.mktemp("weights") / R3D_18_Weights.KINETICS400_CVPR2018.file_name
    torch.save({"epoch": 200, "arch": "resnet-18", "state_dict": state}, path)
    return path, net, hashlib.sha256(path.read_bytes()).hexdigest()


def test_builder_loads_local_file_with_options_of_the_weights(cvpr_r18_file):
    path, net, digest = cvpr_r18_file
    model = r3d_18(weights="KINETICS400_CVPR2018", weights_path=path.parent)  # a folder holding the file
    assert model.layer2[0].downsample.__class__.__name__ == "ZeroPadShortcut"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items() if "num_batches" not in k)
    R3D_18_Weights.KINETICS400_CVPR2018.get_state_dict(path, sha256=digest[:10])
    with pytest.raises(RuntimeError, match="invalid hash"):
        R3D_18_Weights.KINETICS400_CVPR2018.get_state_dict(path, sha256="0" * 64)
    with pytest.raises(ValueError, match="conflicts"):
        r3d_18(weights=R3D_18_Weights.KINETICS400_CVPR2018, weights_path=path, resnet_shortcut="B")


def test_url_entries_download_once_into_the_hub_folder_and_check_the_hash(tmp_path, monkeypatch):
    net = generate_model("resnet", 10, n_classes=3, block_inplanes=(4, 8, 8, 16))
    source = tmp_path / "src" / "tiny-r10.pth"
    source.parent.mkdir()
    torch.save(net.state_dict(), source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    class TinyWeights(WeightsEnum):
        GOOD = Weights("tiny-r10.pth", source.as_uri(), digest[:12], W.ClipPreprocess,
                       dict(model="resnet", model_depth=10, n_classes=3), "master")
        BAD = Weights("tiny-r10-bad.pth", source.as_uri(), "deadbeef", W.ClipPreprocess,
                      dict(model="resnet", model_depth=10, n_classes=3), "master")

    monkeypatch.setenv("VIDEO3D_FAST_WEIGHTS", str(tmp_path / "none"))
    hub = tmp_path / "hub"
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        state = TinyWeights.GOOD.get_state_dict(progress=False)
        assert (hub / "checkpoints" / "tiny-r10.pth").is_file()
        assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
        with pytest.raises(RuntimeError, match="invalid hash"):
            TinyWeights.BAD.get_state_dict(progress=False)
        assert not (hub / "checkpoints" / "tiny-r10-bad.pth").exists()  # a corrupt download is not kept
        source.unlink()  # now served from the hub folder
        assert TinyWeights.GOOD.resolve_file() == hub / "checkpoints" / "tiny-r10.pth"
    finally:
        torch.hub.set_dir(old_hub)


def test_missing_files_and_misuse_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEO3D_FAST_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="drive.google.com"):
        R3D_50_Weights.KINETICS700_200EP.get_state_dict()
    with pytest.raises(FileNotFoundError, match="not found"):
        R3D_50_Weights.KINETICS700_200EP.get_state_dict(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="no weights for r3d_10"):
        r3d_10(weights="DEFAULT")
    with pytest.raises(ValueError, match="weights_path is given"):
        r3d_18(weights_path=tmp_path)


class TestClipPreprocess:
    def test_master_preset_resizes_crops_normalises_and_permutes(self):
        video = torch.full((6, 3, 120, 160), 128, dtype=torch.uint8)
        out = R3D_50_Weights.KINETICS700_200EP.transforms()(video)
        assert out.shape == (3, 6, 112, 112) and out.dtype == torch.float32
        expected = (128 / 255 - torch.tensor(W.KINETICS_MEAN)) / torch.tensor(W.KINETICS_STD)
        torch.testing.assert_close(out[:, 0, 50, 50], expected, rtol=1e-5, atol=1e-5)

    def test_cvpr_preset_is_0_255_minus_activitynet_mean(self):
        video = torch.full((2, 4, 3, 112, 112), 0.5)  # float in [0, 1] with a batch dim
        out = R3D_18_Weights.KINETICS400_CVPR2018.transforms()(video)
        assert out.shape == (2, 3, 4, 112, 112)
        torch.testing.assert_close(out[0, :, 0, 0, 0], 127.5 - torch.tensor(W.ACTIVITYNET_MEAN_0_255))

    def test_centre_crop_takes_the_middle(self):
        video = torch.zeros(1, 3, 112, 200)
        video[..., 44:156] = 1.0  # the central 112 columns
        out = ClipPreprocess(resize_size=112, crop_size=112, mean=(0, 0, 0), std=(1, 1, 1))(video)
        assert torch.all(out == 1.0)

    def test_torchvision_preset_resizes_to_128x171(self):
        out = TorchvisionR3D_18_Weights.KINETICS400_V1.transforms()(torch.zeros(2, 3, 240, 320, dtype=torch.uint8))
        assert out.shape == (3, 2, 112, 112)

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="channels"):
            ClipPreprocess()(torch.zeros(2, 4, 112, 112))
        with pytest.raises(ValueError, match="smaller than the crop"):
            ClipPreprocess(resize_size=(50, 50))(torch.zeros(2, 3, 60, 60))
