"""Opt-in autotuning (``VIDEO3D_FAST_TRITON_AUTOTUNE=1``): the fastest candidate wins, is kept in memory
and in an on-disk cache keyed by GPU name, Triton version, op, problem and dtype, and a later process
reuses it without timing again. The timing itself is a stand-in here (it needs a GPU)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import triton.testing

from video3d_fast import ops
from video3d_fast.ops.backends.triton import autotune
from video3d_fast.ops.backends.triton.common import cdiv

P = ops.make_params(torch.empty(2, 16, 4, 8, 8), torch.empty(32, 16, 3, 3, 3), padding=1)
CANDIDATES = [autotune.KernelConfig(64, 32, 16), autotune.KernelConfig(32, 32, 16),
              autotune.KernelConfig(64, 32, 16, split_k=2)]
TIMES = {CANDIDATES[0]: 3.0, CANDIDATES[1]: 1.0, CANDIDATES[2]: 2.0}
LAUNCHED = [c for c in CANDIDATES for _ in range(2)]


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    """Autotuning on, a fake GPU, a stand-in timer that returns each candidate's time; records timings."""
    timed = []
    monkeypatch.setenv("VIDEO3D_FAST_TRITON_AUTOTUNE_CACHE", str(tmp_path / "cache" / "tune.json"))
    monkeypatch.setattr(autotune, "autotune_enabled", lambda: True)
    monkeypatch.setattr(autotune, "_cache", {})
    monkeypatch.setattr(autotune, "_disk", None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "FakeGPU 80GB")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    monkeypatch.setattr(autotune, "_gpu_ms", lambda fn, device: TIMES[fn()])

    def pick():
        def launch(cfg):
            timed.append(cfg)
            return cfg
        return autotune.pick("fwd", P, torch.bfloat16, torch.device("cuda", 0), CANDIDATES, launch)

    return pick, timed, tmp_path / "cache" / "tune.json"


def test_fastest_candidate_is_kept_in_memory_and_on_disk(tuner):
    pick, timed, path = tuner
    assert pick() == CANDIDATES[1]
    assert timed == LAUNCHED  # each candidate: one checked launch, then the timed one
    assert pick() == CANDIDATES[1] and len(timed) == len(LAUNCHED)  # second call: no timing
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
    assert pick() == CANDIDATES[1] and timed == LAUNCHED


def test_no_timing_inside_a_cuda_graph_capture(tuner, monkeypatch):
    pick, timed, _ = tuner
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert pick() == CANDIDATES[0] and timed == []


@pytest.mark.parametrize("op", ["fwd", "dgrad", "wgrad"])
def test_split_k_variants_follow_the_heuristic_tiles(monkeypatch, op):
    """Candidates of autotuning and shipped tables: the heuristic tiles (the first is the default choice,
    its split left to the heuristic), then the first tile with explicit split-K factors."""
    monkeypatch.setattr(autotune, "INTERPRETED", False)
    candidates = getattr(autotune, f"{op}_candidates")(P, torch.bfloat16, torch.device("cpu"))
    tiles = [c for c in candidates if c.split_k == 0]
    splits = candidates[len(tiles):]
    assert tiles and candidates[:len(tiles)] == tiles
    assert splits and all(c.split_k > 0 and dataclasses.replace(c, split_k=0) == tiles[0] for c in splits)
    assert len(set(candidates)) == len(candidates)


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
        for tiles in (fwd, dgrad):  # and a deeper pipeline of the W_RUNS tile is a candidate
            assert dataclasses.replace(tiles[0], num_stages=5) in tiles
    stage4 = autotune.fwd_candidates(_resnext_grouped(1024, (1, 4, 4)), dtype, cpu)[0]
    assert (stage4.block_n, stage4.block_k) == (32, 128)  # 3 runs of one 32-channel group
    if dtype == torch.float32:
        assert stage4.block_m == 32  # 64x32x128 fp32 compiles to 254 registers on sm_90
    strided = _resnext_grouped(512, (4, 14, 14), stride=2)
    assert fwd_runs(strided, autotune.fwd_candidates(strided, dtype, cpu)[0])
    assert not any(dgrad_runs(strided, c) for c in autotune.dgrad_candidates(strided, dtype, cpu))
    stage1 = _resnext_grouped(128, (8, 28, 28))
    fwd = autotune.fwd_candidates(stage1, dtype, cpu)
    tiles = [c for c in fwd if c.split_k == 0]
    assert not fwd_runs(stage1, tiles[0]) and any(fwd_runs(stage1, c) for c in tiles[1:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_grouped_convs_have_a_whole_tap_candidate(monkeypatch, dtype):
    """fprop and dgrad (strided too) of ResNeXt-101's grouped convs: a TAP_RUNS candidate taking 8 taps
    per K step (at most 128 columns in fp32, where 32-channel taps then go to W_RUNS: none at stage 4),
    after the heuristic's tiles; its plans take that loop."""
    from video3d_fast.ops.backends.triton import conv3d_dgrad, conv3d_fwd

    monkeypatch.setattr(autotune, "INTERPRETED", False)
    monkeypatch.setattr(autotune, "_sm_count", lambda device: 132)
    cpu = torch.device("cpu")
    for p in (_resnext_grouped(128, (8, 28, 28)), _resnext_grouped(512, (2, 7, 7)),
              _resnext_grouped(1024, (1, 4, 4)), _resnext_grouped(512, (4, 14, 14), stride=2)):
        for candidates, plan_of in (
                (autotune.fwd_candidates,
                 lambda cfg: conv3d_fwd._fwd_plan(p, cfg, torch.channels_last_3d, None, {}, cpu).conv),
                (autotune.dgrad_candidates,
                 lambda cfg: conv3d_dgrad._dgrad_plan(p, cfg, torch.channels_last_3d, {}, cpu))):
            tiles = candidates(p, dtype, cpu)
            whole = [c for c in tiles if plan_of(c).constexprs["TAP_RUNS"] and c.split_k == 0]
            if dtype == torch.float32 and p.in_channels == 1024:
                assert not whole, tiles
                continue
            assert whole and tiles[0] not in whole, (p, tiles)
            ct = whole[0].block_k // 8
            assert ct in (16, 32) and plan_of(whole[0]).constexprs["RUN_C"] == ct


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_grouped_weight_gradients_have_a_whole_tap_column_candidate(monkeypatch, dtype):
    """ResNeXt-101's grouped wgrads: a TAP_RUNS candidate whose column block holds all 27 taps of a
    16-channel tile in 16-bit (dy read once), 256 columns otherwise; the W_RUNS tile stays the heuristic."""
    from video3d_fast.ops.backends.triton import conv3d_wgrad
    from video3d_fast.ops.backends.triton.grouped import group_tiling

    monkeypatch.setattr(autotune, "INTERPRETED", False)
    monkeypatch.setattr(autotune, "_sm_count", lambda device: 132)
    for c, size, col_tiles in ((128, (8, 28, 28), 1), (512, (2, 7, 7), 1), (1024, (1, 4, 4), 4)):
        p = _resnext_grouped(c, size)
        tiles = autotune.wgrad_candidates(p, dtype, torch.device("cpu"))
        whole = [t for t in tiles if t.block_n >= 256]
        assert whole and tiles[0] not in whole, tiles
        plan = conv3d_wgrad._wgrad_plan(p, whole[0], torch.channels_last_3d, {}, torch.device("cpu"))
        assert plan.constexprs["TAP_RUNS"] and not plan.constexprs["W_RUNS"]
        tiling = group_tiling(p.groups, p.out_channels_per_group, p.in_channels_per_group, whole[0].block_m)
        expected = col_tiles if dtype == torch.bfloat16 or c == 1024 else cdiv(27 * tiling.red_per_tile, 256)
        assert plan.grid[1] == expected, (c, whole[0], plan.grid)


def test_dense_fprop_offers_the_big_tile_split_where_the_heuristic_shrank_it(monkeypatch):
    """ResNet-50's 128->128 3x3x3 at 4x14x14 (batch 8): the heuristic shrinks to 64x64 tiles to fill 132
    SMs; the 128x128 tile split over K 2 and 4 ways is a candidate too. Where 128x128 tiles fill the
    device on their own (stage 1's 64->64 at 8x28x28: 128x64 is the heuristic), nothing is added."""
    monkeypatch.setattr(autotune, "INTERPRETED", False)
    monkeypatch.setattr(autotune, "_sm_count", lambda device: 132)
    cpu = torch.device("cpu")
    p = ops.make_params(torch.empty(8, 128, 4, 14, 14, device="meta"),
                        torch.empty(128, 128, 3, 3, 3, device="meta"), padding=1)
    tiles = autotune.fwd_candidates(p, torch.bfloat16, cpu)
    assert tiles[0].block_m * tiles[0].block_n < 128 * 128
    splits = [t for t in tiles if t.block_m * t.block_n == 128 * 128 and t.split_k]
    assert sorted(t.split_k for t in splits) == [2, 4], tiles
    stage1 = ops.make_params(torch.empty(8, 64, 8, 28, 28, device="meta"),
                             torch.empty(64, 64, 3, 3, 3, device="meta"), padding=1)
    assert autotune._big_tile_splits(autotune.fwd_candidates(stage1, torch.bfloat16, cpu)) == []


def test_grouped_convs_get_unpipelined_l1_candidates(monkeypatch):
    """Grouped convs (GPU heuristic): every tile also comes with num_stages=1 (plain loads, cached in L1)
    as a candidate after the tiles, in fprop, dgrad and wgrad; the heuristic's own choice is unchanged;
    dense convs get one (the first tile's), 1x1x1 convs and the interpreter none."""
    monkeypatch.setattr(autotune, "INTERPRETED", False)
    monkeypatch.setattr(autotune, "_sm_count", lambda device: 132)
    cpu = torch.device("cpu")
    stage1 = _resnext_grouped(128, (8, 28, 28))
    for candidates in (autotune.fwd_candidates, autotune.dgrad_candidates, autotune.wgrad_candidates):
        tiles = candidates(stage1, torch.bfloat16, cpu)
        assert tiles[0].num_stages > 1
        l1 = [c for c in tiles if c.num_stages == 1]
        assert dataclasses.replace(tiles[0], num_stages=1) in l1, tiles
        assert len(l1) == len(set(l1)) >= 2 and all(c.split_k == 0 for c in l1)
    fwd = autotune.fwd_candidates(stage1, torch.bfloat16, cpu)
    runs = next(c for c in fwd if c.block_k == 64 and c.num_stages == 3)  # the W_RUNS tile (48 of 64 columns)
    assert dataclasses.replace(runs, num_stages=1) in fwd
    dense = ops.make_params(torch.empty(8, 64, 8, 28, 28, device="meta"), torch.empty(64, 64, 3, 3, 3, device="meta"),
                            padding=1)
    pointwise = ops.make_params(torch.empty(8, 64, 8, 28, 28, device="meta"),
                                torch.empty(64, 64, 1, 1, 1, device="meta"))
    for candidates in (autotune.fwd_candidates, autotune.dgrad_candidates, autotune.wgrad_candidates):
        tiles = candidates(dense, torch.bfloat16, cpu)
        assert [c for c in tiles if c.num_stages == 1] == [dataclasses.replace(tiles[0], num_stages=1)], tiles
        assert all(c.num_stages > 1 for c in candidates(pointwise, torch.bfloat16, cpu))
    monkeypatch.setattr(autotune, "INTERPRETED", True)
    assert autotune._l1_variants([autotune.KernelConfig(64, 16, 16, 4, 3)], stage1) == []


class _Picked(Exception):
    pass


@pytest.mark.parametrize("op", ["fwd", "dgrad", "wgrad"])
@pytest.mark.parametrize("channels", [3, 8])
def test_launcher_candidates_are_the_list_each_launcher_chooses_from(monkeypatch, op, channels):
    """benchmarks/gpu_tune.py and compile_check time and compile autotune.launcher_candidates: it must be
    the very list a launcher hands to pick (GPU heuristic), also for a C = 3 conv, whose fprop and wgrad
    run on four-channel params. A 9-wide filter row makes the two lists differ (27 vs 36 columns)."""
    from video3d_fast.ops.backends.triton import conv3d_dgrad, conv3d_fwd, conv3d_wgrad

    monkeypatch.setattr(autotune, "INTERPRETED", False)
    cl = torch.channels_last_3d
    x = torch.randn(1, channels, 3, 5, 11).contiguous(memory_format=cl)
    w = torch.randn(16, channels, 1, 3, 9).contiguous(memory_format=cl)
    p = ops.make_params(x, w, padding=(0, 1, 4))
    dy = torch.randn(p.out_shape).contiguous(memory_format=cl)
    seen = []

    def recording_pick(op_, p_, dtype, device, candidates, launch):
        seen.append(candidates)
        raise _Picked

    module, run = {"fwd": (conv3d_fwd, lambda: conv3d_fwd.conv3d_fwd(x, w, p)),
                   "dgrad": (conv3d_dgrad, lambda: conv3d_dgrad.conv3d_dgrad(dy, w, p, cl)),
                   "wgrad": (conv3d_wgrad, lambda: conv3d_wgrad.conv3d_wgrad(dy, x, w, p))}[op]
    monkeypatch.setattr(module, "pick", recording_pick)
    monkeypatch.setattr(module, "_plans", {})
    with pytest.raises(_Picked):
        run()
    listed = autotune.launcher_candidates(op, p, x.dtype, x.device)
    assert seen == [listed]
    as_stated = getattr(autotune, f"{op}_candidates")(p, x.dtype, x.device)
    assert (listed != as_stated) == (channels == 3 and op != "dgrad"), (listed, as_stated)


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


# ------------------------------------------------------------------------------------------------
# shipped tables (tuned/*.json): autotuned choices per GPU name and problem class, used without tuning
# ------------------------------------------------------------------------------------------------
def _table(device: str, configs: dict) -> dict:
    return {"device": device, "triton": triton.__version__, "configs": configs}


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """An empty tuned/ directory of our own, autotuning off; returns a writer of table files."""
    monkeypatch.setattr(autotune, "TUNED_DIR", tmp_path / "tuned")
    monkeypatch.setattr(autotune, "_tables", None)
    monkeypatch.setattr(autotune, "autotune_enabled", lambda: False)
    (tmp_path / "tuned").mkdir()

    def write(name: str, table: dict) -> None:
        (tmp_path / "tuned" / name).write_text(json.dumps(table))
        monkeypatch.setattr(autotune, "_tables", None)

    return write


def _never_launched(cfg):
    raise AssertionError("a shipped table or the heuristic needs no timing")


def test_a_shipped_choice_is_used_on_its_gpu_when_still_a_candidate(shipped, monkeypatch):
    cpu = torch.device("cpu")
    assert autotune.pick("fwd", P, torch.bfloat16, cpu, CANDIDATES, _never_launched) == CANDIDATES[0]
    cls = autotune.problem_class("fwd", P, torch.bfloat16)
    shipped("cpu.json", _table("cpu", {cls: dataclasses.asdict(CANDIDATES[2])}))
    assert autotune.pick("fwd", P, torch.bfloat16, cpu, CANDIDATES, _never_launched) == CANDIDATES[2]
    # not for another op, dtype or GPU; and not once the kernels no longer offer that configuration
    assert autotune.pick("dgrad", P, torch.bfloat16, cpu, CANDIDATES, _never_launched) == CANDIDATES[0]
    assert autotune.pick("fwd", P, torch.float16, cpu, CANDIDATES, _never_launched) == CANDIDATES[0]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "OtherGPU")
    assert autotune.pick("fwd", P, torch.bfloat16, torch.device("cuda", 0), CANDIDATES,
                         _never_launched) == CANDIDATES[0]
    assert autotune.pick("fwd", P, torch.bfloat16, cpu, CANDIDATES[:2], _never_launched) == CANDIDATES[0]


def test_problem_classes_group_nearby_batch_sizes_and_volumes():
    def cls(n, size=(4, 8, 8), k=32, stride=1):
        p = ops.make_params(torch.empty(n, 16, *size, device="meta"), torch.empty(k, 16, 3, 3, 3, device="meta"),
                            stride=stride, padding=1)
        return autotune.problem_class("fwd", p, torch.bfloat16)

    assert cls(8) == cls(6) == cls(11) == cls(4, (8, 8, 8))
    assert len({cls(8), cls(32), cls(2), cls(8, k=64), cls(8, stride=2)}) == 5


def test_a_broken_table_file_is_ignored_with_a_warning(shipped):
    shipped("bad.json", {"configs": {}})  # no device
    with pytest.warns(UserWarning, match="ignoring the tuned-configuration table"):
        assert autotune.pick("fwd", P, torch.bfloat16, torch.device("cpu"), CANDIDATES,
                             _never_launched) == CANDIDATES[0]


def test_autotuned_choices_become_a_table_that_serves_without_timing(tuner, shipped, monkeypatch):
    """gpu_tune.py's path: autotune on a GPU, export its cache as a table, ship it; a fresh process on
    that GPU then picks the tuned configuration with autotuning off."""
    pick, timed, _ = tuner
    monkeypatch.setattr(autotune, "autotune_enabled", lambda: True)
    assert pick() == CANDIDATES[1]
    table = autotune.table_from_autotuning("FakeGPU 80GB")
    assert table == {autotune.problem_class("fwd", P, torch.bfloat16): dataclasses.asdict(CANDIDATES[1])}
    assert autotune.table_from_autotuning("OtherGPU") == {}
    shipped("fakegpu.json", _table("FakeGPU 80GB", table))
    monkeypatch.setattr(autotune, "autotune_enabled", lambda: False)
    monkeypatch.setattr(autotune, "_cache", {})
    timed.clear()
    assert autotune.pick("fwd", P, torch.bfloat16, torch.device("cuda", 0), CANDIDATES,
                         _never_launched) == CANDIDATES[1]
    assert [t[0] for t in autotune.timing_log[-1:]] == ["fwd"]  # the tuning run was logged for reports


def test_majority_choice_of_a_class_wins(tuner):
    cache = autotune._disk_cache()
    import triton as _triton

    def entry(n, cfg):
        p = ops.make_params(torch.empty(n, 16, 4, 8, 8, device="meta"), torch.empty(32, 16, 3, 3, 3, device="meta"),
                            padding=1)
        key = autotune._disk_key(("FakeGPU 80GB", _triton.__version__, "fwd", p, torch.bfloat16))
        cache[key] = dataclasses.asdict(cfg)

    entry(6, CANDIDATES[0])
    entry(8, CANDIDATES[1])
    entry(10, CANDIDATES[1])
    (fields,) = autotune.table_from_autotuning("FakeGPU 80GB").values()
    assert fields == dataclasses.asdict(CANDIDATES[1])


def test_the_launchers_honour_a_shipped_split(shipped):
    """End to end in the interpreter: a table entry with an explicit forward split-K is what the forward
    launcher plans with, and the result is still the convolution."""
    from video3d_fast.ops.backends.triton import conv3d_fwd

    if not autotune.INTERPRETED:
        pytest.skip("interpreter check (the GPU suite runs the tuned tables for real)")
    x = torch.randn(2, 16, 4, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    w = (torch.randn(32, 16, 3, 3, 3) / 20).contiguous(memory_format=torch.channels_last_3d)
    cpu = torch.device("cpu")
    heuristic = autotune.fwd_candidates(P, torch.float32, cpu)[0]
    split = dataclasses.replace(heuristic, split_k=2)
    assert split in autotune.fwd_candidates(P, torch.float32, cpu)
    shipped("cpu.json", _table("cpu", {autotune.problem_class("fwd", P, torch.float32): dataclasses.asdict(split)}))
    conv3d_fwd._plans.clear()
    try:
        out = conv3d_fwd.conv3d_fwd(x, w, P).out
        (plan,) = [v for k, v in conv3d_fwd._plans.items() if k[0] == P]
        assert plan.conv.cfg == split and plan.conv.grid[2] == 2 and plan.epilogue is not None
    finally:
        conv3d_fwd._plans.clear()
    ref = torch.nn.functional.conv3d(x.double(), w.double(), padding=1)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_a_candidate_that_disagrees_with_the_heuristic_is_never_chosen(tuner, monkeypatch):
    """Autotuning keeps the fastest candidate whose output matches the first (heuristic) candidate's: a
    miscompiled configuration may be fast, and must not win."""
    pick, timed, _ = tuner
    outputs = {CANDIDATES[0]: torch.ones(8), CANDIDATES[1]: torch.full((8,), 2.0),  # fastest, but wrong
               CANDIDATES[2]: torch.ones(8) + 1e-4}
    monkeypatch.setattr(autotune, "_gpu_ms", lambda fn, device: TIMES[fn()[0]])

    def launch(cfg):
        timed.append(cfg)
        return cfg, outputs[cfg]

    monkeypatch.setattr(autotune, "_output_of", lambda result: result[1])
    with pytest.warns(UserWarning, match="disagrees with"):
        best = autotune.pick("fwd", P, torch.bfloat16, torch.device("cuda", 0), CANDIDATES, launch)
    assert best == CANDIDATES[2]
    assert [t for t, cfg in autotune.timing_log[-1][3]] == [3.0, float("inf"), 2.0]


def test_launcher_results_are_compared_by_their_output_tensor():
    from video3d_fast.ops.backends.triton.conv3d_fwd import FwdResult

    conv = torch.randn(2, 3)
    assert torch.equal(autotune._output_of(FwdResult(None, conv, None, None, 64)), conv)
    assert torch.equal(autotune._output_of(conv.half()), conv.half().float())
    assert autotune._output_of(CANDIDATES[0]) is None
    assert autotune._agrees(conv, conv + 1e-3) and not autotune._agrees(conv, 2 * conv)
    assert not autotune._agrees(conv * float("nan"), conv) and not autotune._agrees(conv[:1], conv)
