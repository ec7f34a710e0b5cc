"""The `video3d-fast` command line: options and YAML, clear error messages, eval/plot/prepare, the quick demo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from video3d_fast.cli import build_parser, config_from_args, main
from video3d_fast.train.logs import LOG_COLUMNS, TsvLogger

from .data.fixtures import annotation_dict, write_json
from .train.helpers import tiny_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("cli"), per_subset=2)


def _train_args(files, result_path, *extra):
    return ["train", "--video_path", str(files["video_path"]), "--annotation_path", str(files["annotation_path"]),
            "--result_path", str(result_path), "--file_type", "video", "--n_classes", "3", "--model_depth", "10",
            "--resnet_widen_factor", "0.125", "--conv1_t_size", "3", "--sample_size", "16", "--sample_duration", "4",
            "--batch_size", "4", "--n_epochs", "1", "--n_threads", "0", "--no_progress", "--learning_rate", "0.01",
            *extra]


def _error(capsys, argv):
    assert main(argv) == 1
    return capsys.readouterr().err


def test_authors_flag_names_and_yaml_with_command_line_precedence(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("n_epochs: 5\nsample_size: 32\nmultistep_milestones: [2, 4]\nno_hflip: true\nmodel: resnext\n")
    args = build_parser().parse_args(["train", "--config", str(yaml_file), "--n_epochs", "3", "--model_depth", "50",
                                      "--ft_begin_module", "layer4", "--pretrain_path", "p.pth", "--n_pretrain_classes", "700"])
    cfg = config_from_args(args)
    assert (cfg.n_epochs, cfg.sample_size, cfg.multistep_milestones, cfg.no_hflip) == (3, 32, [2, 4], True)
    assert (cfg.model, cfg.model_depth, cfg.arch, cfg.ft_begin_module, cfg.n_pretrain_classes) == (
        "resnext", 50, "resnext-50", "layer4", 700)
    assert cfg.learning_rate == 0.1 and cfg.sample_duration == 16  # the authors' defaults


def test_unknown_yaml_option_suggests_the_right_name(tmp_path, capsys):
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("learning_rat: 0.1\n")
    err = _error(capsys, ["train", "--config", str(yaml_file)])
    assert "unknown option 'learning_rat'" in err and "did you mean 'learning_rate'" in err


def test_missing_dataset_path_is_named(files, tmp_path, capsys):
    argv = _train_args(files, tmp_path / "r")
    argv[argv.index("--video_path") + 1] = str(tmp_path / "no_such_folder")
    err = _error(capsys, argv)
    assert "--video_path" in err and "no_such_folder" in err and "Traceback" not in err


def test_empty_dataset_says_where_it_looked(files, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = _train_args(files, tmp_path / "r")
    argv[argv.index("--video_path") + 1] = str(tmp_path / "empty")
    assert "empty dataset" in _error(capsys, argv)


def test_unknown_label_in_annotation_is_named(files, tmp_path, capsys):
    data = json.loads(Path(files["annotation_path"]).read_text())
    next(iter(data["database"].values()))["annotations"]["label"] = "dancing"
    bad = write_json(tmp_path / "bad.json", data)
    argv = _train_args(files, tmp_path / "r")
    argv[argv.index("--annotation_path") + 1] = str(bad)
    err = _error(capsys, argv)
    assert "'dancing'" in err and "not in the file's 'labels'" in err


def test_checkpoint_of_another_architecture_is_refused(files, tmp_path, capsys):
    assert main(_train_args(files, tmp_path / "r", "--no_val")) == 0
    argv = _train_args(files, tmp_path / "t", "--resume_path", str(tmp_path / "r" / "last.pth"))
    argv[0] = "test"
    argv[argv.index("--model_depth") + 1] = "18"
    assert "saved from architecture 'resnet-10'" in _error(capsys, argv)


def test_test_needs_weights_and_distributed_needs_torchrun(files, tmp_path, capsys):
    argv = _train_args(files, tmp_path / "t")
    assert "--resume_path" in _error(capsys, ["test"] + argv[1:])
    assert "torchrun" in _error(capsys, argv + ["--distributed"])


def test_train_then_test_then_eval_with_the_authors_val_subset(files, tmp_path, capsys):
    assert main(_train_args(files, tmp_path / "r")) == 0
    out = capsys.readouterr().out
    epoch_line = next(line for line in out.splitlines() if line.startswith("epoch 1/1"))
    assert "train loss" in epoch_line and "val loss" in epoch_line and epoch_line.count("clip acc") == 2
    test_argv = ["test"] + _train_args(files, tmp_path / "r", "--resume_path", str(tmp_path / "r" / "last.pth"))[1:]
    assert main(test_argv) == 0
    out = capsys.readouterr().out
    assert "video level" in out and (tmp_path / "r" / "val.json").is_file()
    assert main(["eval", str(files["annotation_path"]), str(tmp_path / "r" / "val.json"), "--subset", "val",
                 "--save"]) == 0
    out = capsys.readouterr().out
    assert "video top-1:" in out and "video top-5:" in out and (tmp_path / "r" / "top1.txt").is_file()


def test_eval_counts_hits_and_rejects_a_subset_without_results(tmp_path, capsys):
    ann = write_json(tmp_path / "ann.json", annotation_dict(["x", "y"], {
        "v1": {"subset": "validation", "label": "x"}, "v2": {"subset": "validation", "label": "y"},
        "t1": {"subset": "training", "label": "x"}}))
    res = write_json(tmp_path / "val.json", {"results": {
        "v1": [{"label": "x", "score": 0.9}, {"label": "y", "score": 0.1}],
        "v2": [{"label": "x", "score": 0.6}, {"label": "y", "score": 0.4}]}})
    assert main(["eval", str(ann), str(res), "-k", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "video top-1: 50.00%" in out and "video top-2: 100.00%" in out
    assert "none of the 1 training videos has a result" in _error(
        capsys, ["eval", str(ann), str(res), "--subset", "training", "--ignore"])
    err = _error(capsys, ["eval", str(ann), str(res), "--subset", "testing"])
    assert "no labelled videos in subset 'testing'" in err


def test_plot_draws_loss_and_accuracy_pngs(tmp_path, capsys):
    train = TsvLogger(tmp_path / "train.log", LOG_COLUMNS["train.log"])
    val = TsvLogger(tmp_path / "val.log", LOG_COLUMNS["val.log"])
    for e in range(1, 4):
        train.log(epoch=e, loss=2.0 / e, clip_acc=0.2 * e, lr=0.1, clips_per_s=10.0, data_s=1.0, skipped=0)
        val.log(epoch=e, loss=2.2 / e, clip_acc=0.15 * e, clip_acc5=0.5, skipped=0)
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "png")]) == 0
    for name in ("loss.png", "accuracy.png"):
        assert (tmp_path / "png" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "train.log" in _error(capsys, ["plot", str(tmp_path / "nothing")])


def test_prepare_folders_via_cli(files, tmp_path, capsys):
    assert main(["prepare", "folders", str(files["video_path"]), str(tmp_path / "a.json"), "--val_fraction", "0.5"]) == 0
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["labels"] == ["a", "b", "c"] and len(data["database"]) == 12


def test_loader_bench_reports_both_rates(files, tmp_path, capsys):
    argv = ["loader-bench"] + _train_args(files, tmp_path / "r")[1:] + ["--batches", "2", "--steps", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "loader alone:" in out and "train step:" in out and "clips/s" in out


def test_quick_demo_runs_end_to_end_and_prints_the_video_level_table(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "video3d_fast.cli", "demo", "--quick", "--workdir", str(tmp_path),
                           "--no_progress", "--threads", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "video top-1" in out and "val clip acc" in out
    assert "3D ResNet-10, 8-frame clips" in out and "1-frame clips" in out and "chance" in out
    results = json.loads((tmp_path / "motion_3d" / "val.json").read_text())["results"]
    assert len(results) == 24 and all(len(v) == 5 for v in results.values())
    assert (tmp_path / "motion_3d" / "train.log").is_file() and (tmp_path / "single_frame" / "last.pth").is_file()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    from video3d_fast.config import load_yaml_config

    load_yaml_config(path).validate()


def test_motion_demo_yaml_is_the_demo_s_configuration():
    import yaml

    from video3d_fast.config import load_yaml_config
    from video3d_fast.train.demo import demo_config

    yaml_cfg = load_yaml_config(REPO / "configs" / "motion_demo.yaml")
    demo = demo_config("v", "a", "r", progress=False)
    paths = {"video_path", "annotation_path", "result_path"}
    for key in yaml.safe_load((REPO / "configs" / "motion_demo.yaml").read_text()).keys() - paths:
        assert getattr(yaml_cfg, key) == getattr(demo, key), key


def test_root_path_prefixes_relative_paths_only(tmp_path):
    from video3d_fast.config import Config

    cfg = Config(root_path=str(tmp_path), video_path="jpg", annotation_path="/abs/ann.json", result_path="runs/x")
    assert cfg.resolved_path("video_path") == tmp_path / "jpg"
    assert cfg.resolved_path("annotation_path") == Path("/abs/ann.json")
    assert cfg.resolved_path("resume_path") is None


def test_nocrop_test_keeps_full_frames_one_video_per_batch(files, tmp_path):
    from video3d_fast.train import Runner

    from .train.helpers import tiny_config

    cfg = tiny_config(files, tmp_path / "n", no_train=True, no_val=True, inference=True, inference_crop="nocrop")
    test = Runner(cfg).run()["test"]
    assert test.n_videos == 6 and test.top1 is not None
