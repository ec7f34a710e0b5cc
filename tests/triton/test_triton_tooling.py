"""The GPU-side tooling of the Triton backend works without a GPU: every kernel variant compiles for
sm_90 (compile_check.py), the GPU tile heuristics stay inside the spill-free set, the custom ops pass
opcheck and torch.compile with backend="triton", and the GPU benchmark's plumbing runs (--smoke)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ops.helpers import assert_close
from video3d_fast import ops
from video3d_fast.ops import reference

from .cases import LARGE, SMALL

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_gpu_tile_heuristics_stay_in_the_spill_free_set(monkeypatch):
    """What compile_check measured on sm_90: <= 128x128 tiles, 32-wide K steps at 128x128, 128x64x32 on
    the stem's filter-row loop (128x128 spills there), 4 warps; power-of-two blocks of at least 16."""
    from video3d_fast.ops.backends.triton import autotune

    monkeypatch.setattr(autotune, "INTERPRETED", False)
    monkeypatch.setattr(autotune, "_sm_count", lambda device: 132)
    dev = torch.device("cuda")
    for p_ in LARGE.values():
        x = torch.empty(p_.n, p_.c, *p_.size, device="meta")
        w = torch.empty(p_.k, p_.c // p_.groups, *p_.kernel, device="meta")
        p = ops.make_params(x, w, p_.stride, p_.padding, p_.dilation, p_.groups)
        for dtype in (torch.bfloat16, torch.float32):
            for cfg in autotune.fwd_candidates(p, dtype, dev) + autotune.dgrad_candidates(p, dtype, dev):
                assert cfg.num_warps == 4 and cfg.block_m * cfg.block_n <= 128 * 128, cfg
                assert cfg.block_m * cfg.block_n < 128 * 128 or cfg.block_k <= 32, cfg
                for b in (cfg.block_m, cfg.block_n, cfg.block_k):
                    assert b >= 16 and b & (b - 1) == 0, cfg
            if p.in_channels == 3:  # the stem: one 7x3-channel filter row per K step
                first = autotune.fwd_candidates(p, dtype, dev)[0]
                assert (first.block_m, first.block_n, first.block_k) == (128 if dtype == torch.bfloat16 else 64, 64, 32)
            for cfg in autotune.wgrad_candidates(p, dtype, dev):
                assert cfg.num_warps == 4 and cfg.block_m * cfg.block_n <= 128 * 128, cfg


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm90_without_a_gpu():
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tests.triton.compile_check", "--quick", "--dtypes", "bf16,fp32"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "0 failing shape classes" in proc.stdout


def test_custom_ops_pass_opcheck_with_triton_backend():
    p = SMALL["odd_groups"]
    x, w, scale, shift, res = p.make(torch.Generator().manual_seed(0), device=DEVICE)
    x.requires_grad_(True)
    w.requires_grad_(True)
    args = (x, w, scale, shift, res, list(p.stride), list(p.padding), list(p.dilation), p.groups, True, False,
            "triton")
    torch.library.opcheck(torch.ops.video3d_fast.conv3d_affine_act.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_triton_backend_runs_under_torch_compile_fullgraph(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 reference and kernels, no TF32
    p = SMALL["resnext_g8"]
    x, w, gamma, beta, res = p.make(torch.Generator().manual_seed(1), device=DEVICE)

    def layer(x, w, gamma, beta, res):
        return ops.conv3d_batchnorm_act(x, w, gamma, beta, None, None, residual=res, backend="triton",
                                        **p.conv_kwargs)

    out = torch.compile(layer, fullgraph=True, backend="aot_eager")(x, w, gamma, beta, res)
    ref = reference.conv3d_batchnorm_act(x, w, gamma, beta, None, None, residual=res, **p.conv_kwargs)
    assert_close(out, ref, torch.float32, "compiled output", 2.0)


@pytest.mark.slow
def test_gpu_benchmark_smoke_run_writes_results(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the smoke mode is the CPU check; the GPU suite runs the real benchmark")
    sys.path.insert(0, str(ROOT))
    from benchmarks import gpu_bench_triton

    assert gpu_bench_triton.main(["--smoke", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "triton_conv.md").read_text()
    assert "inference form, sum over ResNet-50" in md and "training form fwd+bwd" in md and "grouped 3x3x3" in md


def _smoke_rows(script: str, result: str, tmp_path) -> list:
    """Run ``benchmarks/<script> --smoke`` (CPU interpreter) in a subprocess; the rows it wrote."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / result).read_text())["rows"]


def test_gpu_probe_digest_picks_the_fastest_correct_tiling():
    """The grouped digest: heuristic vs fastest tiling whose output agrees (a fast wrong one or a failed
    one never wins), and both against cuDNN (forward alone; dgrad + wgrad summed for the backward)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_probe import grouped_digest

    label = "512 g32 s1 @2x7x7"
    rows = [dict(section="grouped", name=f"{label} cuDNN fprop", ms=0.014),
            dict(section="grouped", name=f"{label} fprop heuristic 64x16x64/3 runs", ms=0.021, rel_err=1e-3),
            dict(section="grouped", name=f"{label} fprop 64x16x128/3 taps", ms=0.009, rel_err=1e-3),
            dict(section="grouped", name=f"{label} fprop 32x16x64/3 runs", ms=0.001, rel_err=0.5),
            dict(section="grouped", name=f"{label} fprop 32x32x256/3 taps FAILED", ms=float("nan")),
            dict(section="grouped", name=f"{label} cuDNN dgrad+wgrad", ms=0.03),
            dict(section="grouped", name=f"{label} dgrad heuristic 64x16x64/3 runs", ms=0.02, rel_err=1e-3),
            dict(section="grouped", name=f"{label} wgrad heuristic 16x64x64/3 runs split 2", ms=0.03, rel_err=1e-3),
            dict(section="grouped", name=f"{label} wgrad 16x512x16/1 taps split 7", ms=0.01, rel_err=1e-3),
            dict(section="stem", name="stem fwd", ms=1.0)]
    digest = {d["op"]: d for d in grouped_digest(rows)}
    assert digest["fprop"]["best"] == "64x16x128/3 taps" and digest["fprop"]["heuristic_ms"] == 0.021
    assert digest["fprop vs cuDNN"]["best_x"] == pytest.approx(0.014 / 0.009)
    assert digest["dgrad"]["best"] == "64x16x64/3 runs" and digest["wgrad"]["best"] == "16x512x16/1 taps split 7"
    assert digest["dgrad+wgrad vs cuDNN"]["heuristic_x"] == pytest.approx(0.03 / 0.05)
    assert digest["dgrad+wgrad vs cuDNN"]["best_x"] == pytest.approx(0.03 / 0.03)


@pytest.mark.slow
def test_gpu_probe_smoke_run_checks_every_variant(tmp_path):
    rows = _smoke_rows("gpu_probe.py", "gpu_probe.json", tmp_path)
    digest = json.loads((tmp_path / "gpu_probe.json").read_text())["grouped_digest"]
    assert {d["op"] for d in digest} >= {"fprop", "dgrad", "wgrad", "fprop vs cuDNN", "dgrad+wgrad vs cuDNN"}
    assert {r["section"] for r in rows} == {"launch", "kernels", "bnfuse", "splitk", "stem", "grouped"}
    totals = [r for r in rows if r["section"] == "kernels" and r["name"].endswith("all kernels")]
    assert len(totals) == 2 and all(r["ms"] > 0 and r["kernels_per_step"] > 0 for r in totals), totals
    grouped = [r["name"] for r in rows if r["section"] == "grouped"]
    for op in ("fprop", "dgrad", "wgrad"):  # each with its heuristic row and the loop it ran
        assert any(f" {op} heuristic " in name and " runs" in name for name in grouped), (op, grouped)


@pytest.mark.slow
def test_whole_network_benchmark_smoke_run(tmp_path):
    rows = _smoke_rows("gpu_bench_models.py", "gpu_models.json", tmp_path)
    assert [(r["model"], r["mode"]) for r in rows] == [("r18", "train"), ("r18", "eval")]
    assert all(r["ok"] for r in rows)


@pytest.mark.slow
def test_tuning_run_writes_a_table_that_the_library_reads(tmp_path, monkeypatch):
    """benchmarks/gpu_tune.py --smoke: the compile phase's worker processes run every candidate, every
    problem timed has a row, and the table file loads as a shipped table of valid configurations."""
    from video3d_fast.ops.backends.triton import autotune

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "benchmarks/gpu_tune.py", "--smoke", "--models", "r18", "--jobs", "2",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "precompiled every candidate in 2 processes" in proc.stdout and "exit codes [0, 0]" in proc.stdout
    rows = json.loads((tmp_path / "gpu_tune.json").read_text())["rows"]
    assert rows and {r["op"] for r in rows} <= {"fwd", "dgrad", "wgrad"}
    assert all(r["candidates"] > 1 and r["best_ms"] > 0 for r in rows)
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tmp_path / "triton_tuned.json").rename(tuned / "cpu.json")
    monkeypatch.setattr(autotune, "TUNED_DIR", tuned)
    monkeypatch.setattr(autotune, "_tables", None)
    table = autotune.shipped_tables()["cpu"]
    assert len(table) == len(rows)
    assert all(isinstance(autotune.KernelConfig(**fields), autotune.KernelConfig) for fields in table.values())


def test_host_overhead_benchmark_runs_the_real_launch_path():
    """benchmarks/host_overhead.py stands in for the compiled kernel behind common.launch's direct path
    (its first-launch hook and the compiled call): if those internals move, its numbers would silently
    stop including the launch path. Launch counts per call are exact: 1 inference, 2 + 3 training."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "benchmarks/host_overhead.py", "--calls", "3", "--channels", "32", "64"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = {line.strip().split("  ")[0]: line for line in proc.stdout.splitlines() if " launches " in line}
    assert " 1 launches (conv3d_fwd_kernel)" in lines["inference"]
    assert " 2 launches (conv3d_fwd_kernel, channel_affine_act_kernel)" in lines["training forward"]
    assert " 3 launches (bn_backward_kernel, conv3d_dgrad_kernel, conv3d_wgrad_kernel)" in lines["training backward"]
