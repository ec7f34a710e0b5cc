"""Opt-in autotuning (``VIDEO3D_FAST_TRITON_AUTOTUNE=1``): the fastest candidate wins, is kept in memory
and in an on-disk cache keyed by GPU name, Triton version, op, problem and dtype, and a later process
reuses it without timing again. The timing itself is a stand-in here (it needs a GPU)."""
from __future__ import annotations

import json

import pytest
import torch
import triton.testing

from video3d_fast import ops
from video3d_fast.ops.backends.triton import autotune

P = ops.make_params(torch.empty(2, 16, 4, 8, 8), torch.empty(32, 16, 3, 3, 3), padding=1)
CANDIDATES = [autotune.KernelConfig(64, 32, 16), autotune.KernelConfig(32, 32, 16),
              autotune.KernelConfig(64, 32, 16, split_k=2)]
TIMES = {CANDIDATES[0]: 3.0, CANDIDATES[1]: 1.0, CANDIDATES[2]: 2.0}


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    """Autotuning on, a fake GPU, a stand-in do_bench that returns each candidate's time; records timings."""
    timed = []
    monkeypatch.setenv("VIDEO3D_FAST_TRITON_AUTOTUNE_CACHE", str(tmp_path / "cache" / "tune.json"))
    monkeypatch.setattr(autotune, "autotune_enabled", lambda: True)
    monkeypatch.setattr(autotune, "_cache", {})
    monkeypatch.setattr(autotune, "_disk", None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "FakeGPU 80GB")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    def do_bench(fn, warmup, rep):
        return TIMES[fn()]

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)

    def pick():
        def launch(cfg):
            timed.append(cfg)
            return cfg
        return autotune.pick("fwd", P, torch.bfloat16, torch.device("cpu"), CANDIDATES, launch)

    return pick, timed, tmp_path / "cache" / "tune.json"


def test_fastest_candidate_is_kept_in_memory_and_on_disk(tuner):
    pick, timed, path = tuner
    assert pick() == CANDIDATES[1]
    assert timed == CANDIDATES
    assert pick() == CANDIDATES[1] and len(timed) == 3  # second call: no timing
    stored = json.loads(path.read_text())
    (key, cfg), = stored.items()
    assert "FakeGPU 80GB" in key and triton.__version__ in key and '"fwd"' in key
    assert cfg == dict(block_m=32, block_n=32, block_k=16, num_warps=4, num_stages=2, split_k=0)


def test_a_new_process_reuses_the_disk_cache_without_timing(tuner, monkeypatch):
    pick, timed, path = tuner
    pick()
    monkeypatch.setattr(autotune, "_cache", {})  # what a new process starts with
    monkeypatch.setattr(autotune, "_disk", None)
    timed.clear()
    assert pick() == CANDIDATES[1] and timed == []


def test_a_corrupt_or_foreign_cache_entry_is_timed_again(tuner, monkeypatch):
    pick, timed, path = tuner
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="ignoring the Triton autotune cache"):
        assert pick() == CANDIDATES[1]
    assert len(json.loads(path.read_text())) == 1  # rewritten whole
    # an entry that is not among today's candidates (other code wrote it) is not trusted
    data = json.loads(path.read_text())
    data = {k: dict(v, block_m=128) for k, v in data.items()}
    path.write_text(json.dumps(data))
    monkeypatch.setattr(autotune, "_cache", {})
    monkeypatch.setattr(autotune, "_disk", None)
    timed.clear()
    assert pick() == CANDIDATES[1] and timed == CANDIDATES


def test_no_timing_inside_a_cuda_graph_capture(tuner, monkeypatch):
    pick, timed, _ = tuner
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert pick() == CANDIDATES[0] and timed == []


def test_forward_candidates_include_split_k_only_when_autotuning(monkeypatch):
    monkeypatch.setattr(autotune, "INTERPRETED", False)
    monkeypatch.setattr(autotune, "autotune_enabled", lambda: False)
    plain = autotune.fwd_candidates(P, torch.bfloat16, torch.device("cpu"))
    assert all(c.split_k == 0 for c in plain)
    monkeypatch.setattr(autotune, "autotune_enabled", lambda: True)
    tuned = autotune.fwd_candidates(P, torch.bfloat16, torch.device("cpu"))
    assert tuned[:len(plain)] == plain and [c.split_k for c in tuned[len(plain):]] == [1, 2, 4]


def _resnext_grouped(c, size, stride=1, n=8):
    return ops.make_params(torch.empty(n, c, *size, device="meta"), torch.empty(c, c // 32, 3, 3, 3, device="meta"),
                           stride=stride, padding=1, groups=32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_grouped_convs_take_the_row_run_loop_where_latency_bound(monkeypatch, dtype):
    """GPU heuristic (H100: 132 SMs) for ResNeXt-101's grouped 3x3x3 convs at batch 8: stages 3-4 (few
    programs, 27 serial K steps) start with the W_RUNS tile (9 steps), forward and stride-1 dgrad alike;
    stage 1 keeps the tap-aligned tile first and has W_RUNS as an autotuning candidate; strided dgrad
    never gets it. The chosen tile really takes the W_RUNS loop in both kernels."""
    from video3d_fast.ops.backends.triton import conv3d_dgrad, conv3d_fwd
    from video3d_fast.ops.backends.triton.grouped import group_tiling

    monkeypatch.setattr(autotune, "INTERPRETED", False)
    monkeypatch.setattr(autotune, "autotune_enabled", lambda: False)
    monkeypatch.setattr(autotune, "_sm_count", lambda device: 132)
    cpu = torch.device("cpu")

    def fwd_runs(p, cfg):
        return conv3d_fwd.w_runs(p, cfg, group_tiling(p.groups, p.out_channels_per_group,
                                                      p.in_channels_per_group, cfg.block_n))

    def dgrad_runs(p, cfg):
        return conv3d_dgrad.w_runs(p, cfg, group_tiling(p.groups, p.in_channels_per_group,
                                                        p.out_channels_per_group, cfg.block_n))

    for p in (_resnext_grouped(512, (2, 7, 7)), _resnext_grouped(1024, (1, 4, 4))):
        fwd, dgrad = autotune.fwd_candidates(p, dtype, cpu), autotune.dgrad_candidates(p, dtype, cpu)
        assert fwd_runs(p, fwd[0]) and dgrad_runs(p, dgrad[0]), (fwd[0], dgrad[0])
        assert not fwd_runs(p, fwd[1])  # the tap-aligned tile stays in the list
    stage4 = autotune.fwd_candidates(_resnext_grouped(1024, (1, 4, 4)), dtype, cpu)[0]
    assert (stage4.block_n, stage4.block_k) == (32, 128)  # 3 runs of one 32-channel group
    if dtype == torch.float32:
        assert stage4.block_m == 32  # 64x32x128 fp32 compiles to 254 registers on sm_90
    strided = _resnext_grouped(512, (4, 14, 14), stride=2)
    assert fwd_runs(strided, autotune.fwd_candidates(strided, dtype, cpu)[0])
    assert not any(dgrad_runs(strided, c) for c in autotune.dgrad_candidates(strided, dtype, cpu))
    stage1 = _resnext_grouped(128, (8, 28, 28))
    fwd = autotune.fwd_candidates(stage1, dtype, cpu)
    assert not fwd_runs(stage1, fwd[0]) and fwd_runs(stage1, fwd[-1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_grouped_weight_gradients_take_row_run_column_blocks(monkeypatch, dtype):
    """Every ResNeXt-101 grouped stage (strided too): the first wgrad tile's column blocks are (t, r)
    filter rows (dy read 9 times instead of 27); the tap-block tile stays a candidate."""
    from video3d_fast.ops.backends.triton import conv3d_wgrad
    from video3d_fast.ops.backends.triton.grouped import group_tiling

    monkeypatch.setattr(autotune, "INTERPRETED", False)
    monkeypatch.setattr(autotune, "_sm_count", lambda device: 132)
    for p in (_resnext_grouped(128, (8, 28, 28)), _resnext_grouped(256, (8, 28, 28), stride=2),
              _resnext_grouped(512, (2, 7, 7)), _resnext_grouped(1024, (1, 4, 4))):
        tiles = autotune.wgrad_candidates(p, dtype, torch.device("cpu"))
        runs = [conv3d_wgrad.w_runs(p, c, group_tiling(p.groups, p.out_channels_per_group,
                                                         p.in_channels_per_group, c.block_m)) for c in tiles]
        assert runs[0] and not all(runs), (p, tiles)


def test_weight_gradient_split_gives_small_tiles_more_programs(monkeypatch):
    """Split-K of wgrad: 2 programs per SM for 64x64 tiles, 8 for 16x64 (grouped), never fewer than 8
    position steps per program, and an explicit split_k wins."""
    monkeypatch.setattr(autotune, "_sm_count", lambda device: 132)
    cpu = torch.device("cpu")
    big, small = autotune.KernelConfig(64, 64, 64), autotune.KernelConfig(16, 64, 64)
    assert autotune.wgrad_split(1, 27, 50176, big, cpu) == 10  # 2 * 132 / 27 tiles
    assert autotune.wgrad_split(8, 9, 50176, small, cpu) == 15  # 8 * 132 / 72 tiles
    assert autotune.wgrad_split(32, 9, 784, small, cpu) == 2  # 784 positions: >= 8 steps of 64 each
    assert autotune.wgrad_split(8, 9, 50176, autotune.KernelConfig(16, 64, 64, split_k=3), cpu) == 3


def test_input_gradient_splits_only_long_reductions(monkeypatch):
    """dgrad takes fprop's split rule from 32 K steps up (its split costs a second launch): ResNet-50's
    stage-4 3x3x3 (16 tiles of 432 steps) splits 16 ways, a 16-step 1x1x1 layer stays whole, and an
    explicit split_k wins."""
    monkeypatch.setattr(autotune, "_sm_count", lambda device: 132)
    cpu = torch.device("cpu")
    cfg = autotune.KernelConfig(64, 64, 64)
    assert autotune.dgrad_split(16, 432, cfg, cpu) == autotune.fwd_split(16, 432, cfg, cpu) == 16
    assert autotune.dgrad_split(104, 16, cfg, cpu) == 1 < autotune.fwd_split(104, 16, cfg, cpu)
    assert autotune.dgrad_split(104, 16, autotune.KernelConfig(64, 64, 64, split_k=2), cpu) == 2
    assert autotune.dgrad_split(200, 432, cfg, cpu) == 1  # enough tiles for the device already
