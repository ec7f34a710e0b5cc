"""The loops end to end on tiny data: exact resume, appended logs, NaN stop, video-level test, AMP & co."""
import json
import math

import pytest
import torch

from video3d_fast.train import Runner, TrainingDiverged
from video3d_fast.train.checkpoint import load_checkpoint_file
from video3d_fast.train.evaluation import evaluate_result_file
from video3d_fast.train.logs import read_tsv

from ..data.fixtures import truncate
from .helpers import state_equal, tiny_config, tiny_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("tiny"))


def test_resume_continues_bit_exactly(files, tmp_path, monkeypatch):
    """3 epochs straight == interrupted during epoch 3, then --resume_path last.pth: same losses, same weights."""
    schedule = dict(n_epochs=3, lr_scheduler="cosine", warmup_epochs=0.5)
    straight = Runner(tiny_config(files, tmp_path / "straight", **schedule))
    a = straight.run()

    original = Runner.train_epoch

    def interrupted(self, epoch, batch_logger=None):
        if epoch == 3:
            raise KeyboardInterrupt  # killed in the middle of epoch 3, after last.pth of epoch 2
        return original(self, epoch, batch_logger)

    monkeypatch.setattr(Runner, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Runner(tiny_config(files, tmp_path / "resumed", **schedule)).run()
    monkeypatch.setattr(Runner, "train_epoch", original)
    again = Runner(tiny_config(files, tmp_path / "resumed", resume_path=str(tmp_path / "resumed" / "last.pth"), **schedule))
    b = again.run()
    assert [r.epoch for r in b["train"]] == [3]
    assert b["train"][0].loss == a["train"][2].loss and b["val"][0].loss == a["val"][2].loss
    assert state_equal(straight.model.state_dict(), again.model.state_dict())
    assert state_equal(straight.optimizer.state_dict()["state"][0], again.optimizer.state_dict()["state"][0])
    # the logs were appended to, not overwritten: one row per epoch, identical to the straight run's
    rows_a, rows_b = read_tsv(tmp_path / "straight" / "train.log"), read_tsv(tmp_path / "resumed" / "train.log")
    assert [r["epoch"] for r in rows_b] == ["1", "2", "3"]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert [r["epoch"] for r in read_tsv(tmp_path / "resumed" / "val.log")] == ["1", "2", "3"]


def test_checkpoint_holds_everything_a_resume_needs(files, tmp_path):
    Runner(tiny_config(files, tmp_path / "run", n_epochs=1, no_val=True, amp="fp16")).run()
    ckpt = load_checkpoint_file(tmp_path / "run" / "last.pth")
    assert {"epoch", "arch", "state_dict", "optimizer", "scheduler", "scaler", "rng", "config"} <= ckpt.keys()
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "resnet-10" and ckpt["scaler"] is not None
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["state_dict"])
    assert ckpt["config"]["n_classes"] == 3 and json.loads((tmp_path / "run" / "opts.json").read_text())["n_epochs"] == 1


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(files, tmp_path, monkeypatch):
    original = Runner.train_epoch

    def poisoned(self, epoch, batch_logger=None):
        if epoch == 2:
            with torch.no_grad():
                self.model.fc.weight.fill_(float("nan"))
        return original(self, epoch, batch_logger)

    monkeypatch.setattr(Runner, "train_epoch", poisoned)
    runner = Runner(tiny_config(files, tmp_path / "nan", n_epochs=3, checkpoint=1))
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, iteration 1.*last good checkpoint is .*last.pth"):
        runner.run()
    kept = load_checkpoint_file(tmp_path / "nan" / "last.pth")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "save_2.pth").exists()


def test_video_level_test_writes_the_authors_result_json(files, tmp_path):
    cfg = tiny_config(files, tmp_path / "t", n_epochs=1, inference=True, output_topk=2)
    summary = Runner(cfg).run()
    test = summary["test"]
    data = json.loads((tmp_path / "t" / "val.json").read_text())
    results = data["results"]
    assert set(results) == {v for v in files["frames"] if "_val_" in v} and test.n_videos == 12
    for entries in results.values():
        assert [set(e) for e in entries] == [{"label", "score"}] * 2
        assert entries[0]["score"] >= entries[1]["score"] and entries[0]["label"] in files["labels"]
    acc = evaluate_result_file(files["annotation_path"], tmp_path / "t" / "val.json", "val", (1, 2))
    assert acc.accuracy(1) == pytest.approx(test.top1) and acc.n_videos == 12


def test_per_clip_results_with_inference_no_average(files, tmp_path):
    cfg = tiny_config(files, tmp_path / "t", no_train=True, no_val=True, inference=True, inference_no_average=True,
                      output_topk=3, sample_t_stride=2, inference_stride=2)
    test = Runner(cfg).run()["test"]
    entries = next(iter(test.results.values()))
    # frames 0..9 subsampled by 2 -> 0,2,4,6,8; windows of 4 every 2 entries: [0,2,4,6], then [4,6,8] loop-padded
    assert [e["segment"] for e in entries] == [[0, 7], [4, 9]]
    assert all(len(e["result"]) == 3 and e["result"][0]["score"] >= e["result"][2]["score"] for e in entries)


def test_corrupt_training_video_is_counted_in_train_log(tmp_path):
    files = tiny_dataset(tmp_path / "d", per_subset=2)
    victim = sorted((files["video_path"] / "a").glob("a_tra_*.mp4"))[0]
    truncate(victim, 2500)
    with pytest.warns(UserWarning, match=victim.stem):
        summary = Runner(tiny_config(files, tmp_path / "r", n_epochs=1)).run()
    assert summary["train"][0].skipped == 1 and victim.stem in summary["skipped_videos"]
    assert read_tsv(tmp_path / "r" / "train.log")[0]["skipped"] == "1"


@pytest.mark.parametrize("option", [dict(amp="bf16"), dict(channels_last=True), dict(accumulation_steps=2),
                                    dict(optimizer="adamw", learning_rate=1e-3, lr_scheduler="plateau")])
def test_training_variants_run_and_stay_finite(files, tmp_path, option):
    summary = Runner(tiny_config(files, tmp_path / "v", n_epochs=1, **option)).run()
    assert math.isfinite(summary["train"][0].loss) and math.isfinite(summary["val"][0].loss)


def test_accumulation_equals_a_larger_batch_without_batchnorm_effects(files, tmp_path):
    """batch 2 x accumulation 2 takes the same optimizer steps as one batch of 4 when BN is frozen."""
    common = dict(n_epochs=1, no_val=True, ft_begin_module="fc", backend="torch", learning_rate=0.5)
    a = Runner(tiny_config(files, tmp_path / "a", batch_size=4, **common))
    initial = a.model.fc.weight.detach().clone()
    a.run()
    b = Runner(tiny_config(files, tmp_path / "b", batch_size=2, accumulation_steps=2, **common))
    b.run()
    assert (a.model.fc.weight - initial).abs().max() > 1e-3  # the steps did something
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_fresh_run_in_an_old_folder_moves_old_logs_aside(files, tmp_path):
    cfg = tiny_config(files, tmp_path / "r", n_epochs=1, no_val=True)
    Runner(cfg).run()
    Runner(cfg).run()
    assert (tmp_path / "r" / "train.log.1").is_file() and len(read_tsv(tmp_path / "r" / "train.log")) == 1


def test_wrong_arch_resume_is_a_clear_error(files, tmp_path):
    Runner(tiny_config(files, tmp_path / "r", n_epochs=1, no_val=True)).run()
    cfg = tiny_config(files, tmp_path / "r2", model_depth=18, resume_path=str(tmp_path / "r" / "last.pth"))
    with pytest.raises(ValueError, match=r"architecture 'resnet-10'.*builds 'resnet-18'"):
        Runner(cfg).run()
    cfg = tiny_config(files, tmp_path / "r3", n_classes=5, resume_path=str(tmp_path / "r" / "last.pth"))
    with pytest.raises(ValueError, match="does not fit the model"):
        Runner(cfg).run()


def test_tensorboard_is_optional(files, tmp_path):
    lines = []
    Runner(tiny_config(files, tmp_path / "tb", n_epochs=1, tensorboard=True), echo=lines.append).run()
    try:
        import torch.utils.tensorboard  # noqa: F401
    except Exception:
        assert any("TensorBoard scalars skipped" in line for line in lines)
    else:
        assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_keys(files, tmp_path):
    runner = Runner(tiny_config(files, tmp_path / "c", n_epochs=1, no_val=True, compile=True))
    summary = runner.run()
    assert math.isfinite(summary["train"][0].loss)
    keys = load_checkpoint_file(tmp_path / "c" / "last.pth")["state_dict"].keys()
    assert keys == runner.model.state_dict().keys() and not any("_orig_mod" in k for k in keys)


def test_compile_mode_reaches_torch_compile(files, tmp_path, monkeypatch):
    seen = {}

    def fake_compile(model, mode=None, **kw):
        seen["mode"] = mode
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    Runner(tiny_config(files, tmp_path / "m", n_epochs=1, no_val=True, compile=True,
                       compile_mode="reduce-overhead")).run()
    assert seen["mode"] == "reduce-overhead"


def test_recompute_conv_trains_the_same_weights_with_the_conv_outputs_recomputed(files, tmp_path, monkeypatch):
    """--recompute_conv changes what backward keeps, not what it computes: the same seed gives the same
    weights, bit for bit (the cpu backend recomputes each conv output with the same kernel)."""
    from video3d_fast import ops

    seen = []
    real = ops.recompute_conv_outputs

    def spy(enabled=True):
        seen.append(enabled)
        return real(enabled)

    monkeypatch.setattr(ops, "recompute_conv_outputs", spy)
    common = dict(n_epochs=1, no_val=True, backend="cpu")
    a = Runner(tiny_config(files, tmp_path / "a", **common))
    a.run()
    assert seen and not any(seen)
    seen.clear()
    b = Runner(tiny_config(files, tmp_path / "b", recompute_conv=True, **common))
    b.run()
    assert seen and all(seen)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), name
