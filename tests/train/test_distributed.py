"""DDP through torchrun: 2 CPU processes (gloo) agree with one process.

Two processes with 2 clips each see, step by step, exactly the micro-batches of one process with batch 2 and
accumulation 2 (ShardedSampler), so the all-reduced training losses and the trained weights must match;
BatchNorm running statistics are not compared (DDP keeps rank 0's). The video-level test of one checkpoint,
sharded over 2 processes and gathered, must give the single process's result file.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from video3d_fast.train import Runner
from video3d_fast.train.checkpoint import load_checkpoint_file
from video3d_fast.train.logs import read_tsv

from .helpers import tiny_config, tiny_dataset

REPO = Path(__file__).resolve().parents[2]


def _flags(cfg, **extra):
    values = {**cfg.to_dict(), **extra}
    out = []
    for key, value in values.items():
        if value is None or value is False:
            continue
        if value is True:
            out.append(f"--{key}")
        elif isinstance(value, list):
            out += [f"--{key}", *map(str, value)]
        else:
            out += [f"--{key}", str(value)]
    return out


def _torchrun(command, flags, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "video3d_fast.cli", command, *flags]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    files = tiny_dataset(tmp / "data", per_subset=4)
    common = dict(n_epochs=2, inference=True, output_topk=3)
    ddp_cfg = tiny_config(files, tmp / "ddp", batch_size=4, **common)
    proc = _torchrun("train", _flags(ddp_cfg), tmp)
    torch.set_num_threads(1)
    single = Runner(tiny_config(files, tmp / "single", batch_size=2, accumulation_steps=2, **common))
    single.run()
    return {"tmp": tmp, "files": files, "ddp_log": proc.stdout, "single": single, "ddp_cfg": ddp_cfg}


def test_two_processes_log_once_and_train_like_one_process_with_accumulation(runs):
    tmp = runs["tmp"]
    assert "2 DDP processes" in runs["ddp_log"] and runs["ddp_log"].count("epoch 1/2: train loss") == 1  # rank 0 only
    ddp_rows, single_rows = read_tsv(tmp / "ddp" / "train.log"), read_tsv(tmp / "single" / "train.log")
    assert [r["epoch"] for r in ddp_rows] == ["1", "2"]
    for d, s in zip(ddp_rows, single_rows):
        assert float(d["loss"]) == pytest.approx(float(s["loss"]), rel=1e-4)
        assert float(d["clip_acc"]) == pytest.approx(float(s["clip_acc"]))
    ddp_state = load_checkpoint_file(tmp / "ddp" / "last.pth")["state_dict"]
    single_state = runs["single"].model.state_dict()
    for name, p in runs["single"].model.named_parameters():
        torch.testing.assert_close(ddp_state[name], single_state[name], rtol=1e-4, atol=1e-5, msg=name)
    assert len(json.loads((tmp / "ddp" / "val.json").read_text())["results"]) == 12  # gathered from both ranks


def test_sharded_video_level_test_equals_the_single_process_test(runs):
    tmp = runs["tmp"]
    ckpt = tmp / "single" / "last.pth"
    cfg = runs["ddp_cfg"]
    flags = _flags(cfg, result_path=str(tmp / "ddp_test"), resume_path=str(ckpt), n_epochs=2)
    proc = _torchrun("test", flags, tmp)
    assert "video level" in proc.stdout
    ddp = json.loads((tmp / "ddp_test" / "val.json").read_text())["results"]
    single = json.loads((tmp / "single" / "val.json").read_text())["results"]
    assert ddp.keys() == single.keys()
    for video_id, entries in single.items():
        assert [e["label"] for e in ddp[video_id]] == [e["label"] for e in entries]
        assert [e["score"] for e in ddp[video_id]] == pytest.approx([e["score"] for e in entries], abs=1e-5)
