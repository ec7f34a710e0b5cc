"""Fine-tuning: --ft_begin_module really freezes (no grads, fixed BN statistics), heads are replaced."""
import pytest
import torch
import torch.nn as nn

from video3d_fast.models import generate_model
from video3d_fast.train import Runner
from video3d_fast.train.checkpoint import load_checkpoint_file
from video3d_fast.train.finetune import (
    frozen_batchnorms,
    head_name,
    module_order,
    replace_head,
    select_fine_tuning,
    train_mode,
)

from .helpers import tiny_config, tiny_dataset

FROZEN = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")


def test_module_order_and_selection_follow_registration_order():
    model = generate_model("resnet", model_depth=10, n_classes=5, resnet_widen_factor=0.125)
    assert module_order(model) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    trainable, frozen = select_fine_tuning(model, "layer4")
    assert frozen == ["conv1", "bn1", "layer1", "layer2", "layer3"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith(("layer4.", "fc.")) for p in trainable)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(FROZEN))
    with pytest.raises(ValueError, match=r"'layer9'.*choose one of \['conv1'"):
        select_fine_tuning(model, "layer9")


def test_frozen_batchnorms_stay_in_eval_mode_and_keep_statistics():
    torch.manual_seed(0)
    model = generate_model("resnet", model_depth=10, n_classes=3, resnet_widen_factor=0.125, backend="torch")
    select_fine_tuning(model, "layer3")
    frozen = frozen_batchnorms(model)
    assert model.bn1 in frozen and model.layer3[0].bn1 not in frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_mode(model, frozen)
    assert not model.bn1.training and model.layer3[0].bn1.training
    loss = model(torch.randn(2, 3, 4, 16, 16)).sum()
    loss.backward()
    after = model.state_dict()
    for k in before:
        if "running_" in k or "num_batches_tracked" in k:
            # statistics move in layer3/layer4 (training BN), not in the frozen stem, layer1, layer2
            assert torch.equal(before[k], after[k]) == k.startswith(FROZEN[:4]), k
    assert model.conv1.weight.grad is None  # no wasted backward into frozen weights


def test_densenet_head_is_classifier_and_features_prefix_is_ignored():
    model = generate_model("densenet", model_depth=121, n_classes=7)
    assert head_name(model) == "classifier"
    order = module_order(model)
    assert order[0] == "conv1" and "denseblock4" in order and order[-1] == "classifier"
    replace_head(model, 4)
    assert model.classifier.out_features == 4 and model.classifier.in_features == 1024


def test_replace_head_keeps_device_dtype_and_checks_count():
    model = nn.Sequential()
    model.fc = nn.Linear(8, 3).double()
    replace_head(model, 5)
    assert model.fc.weight.dtype == torch.float64 and model.fc.out_features == 5
    with pytest.raises(ValueError, match="n_classes"):
        replace_head(model, 0)


def test_pretrain_then_fine_tune_layer4_leaves_the_rest_bit_identical(tmp_path):
    files = tiny_dataset(tmp_path, per_subset=2)
    Runner(tiny_config(files, tmp_path / "base", n_epochs=1, no_val=True)).run()
    pretrained = load_checkpoint_file(tmp_path / "base" / "last.pth")["state_dict"]
    cfg = tiny_config(files, tmp_path / "ft", n_epochs=1, no_val=True, pretrain_path=str(tmp_path / "base" / "last.pth"),
                      n_pretrain_classes=3, ft_begin_module="layer4", learning_rate=0.05)
    runner = Runner(cfg)
    runner.run()
    tuned = runner.model.state_dict()
    for k, v in pretrained.items():
        if k.startswith(FROZEN):
            assert torch.equal(v, tuned[k]), k  # weights and BN statistics of the frozen part
    assert not torch.equal(pretrained["layer4.0.conv1.weight"], tuned["layer4.0.conv1.weight"])
    assert not torch.equal(pretrained["layer4.0.bn1.running_mean"], tuned["layer4.0.bn1.running_mean"])
    assert sum(p.numel() for g in runner.optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for n, p in runner.model.named_parameters() if n.startswith(("layer4.", "fc.")))
