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
