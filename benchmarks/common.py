"""Shared pieces of the benchmark scripts: environment record, timing, result files.

Every number a benchmark writes carries the hardware, library versions and date it was measured with
(`environment()`), and its baseline measured in the same run.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results"


def replace_triton_launch(stand_in: Callable) -> None:
    """Make every Triton launcher of the triton backend call ``stand_in(kernel, grid, tensors, args,
    constexprs)`` instead of launching: host-side measurements (calls, allocations, which tensors autograd
    keeps) without a GPU. The launchers import ``launch`` by name, so each module is patched."""
    from video3d_fast.ops.backends.triton import bn, conv3d_dgrad, conv3d_fwd, conv3d_wgrad

    for module in (bn, conv3d_fwd, conv3d_dgrad, conv3d_wgrad):
        module.launch = stand_in


def results_dir(cli_value: Optional[str] = None) -> Path:
    """--out flag, else $VIDEO3D_FAST_RESULTS, else benchmarks/results/."""
    path = Path(cli_value or os.environ.get("VIDEO3D_FAST_RESULTS") or DEFAULT_RESULTS_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment() -> Dict[str, object]:
    env: Dict[str, object] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    env["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            gpu_sms=props.multi_processor_count,
            gpu_mem_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available() and env["triton"]:
        # whether the triton backend ran configurations from a shipped table (tuned/*.json) on this GPU
        from video3d_fast.ops.backends.triton import autotune

        gpu = autotune.device_name(torch.device("cuda", 0))
        env["triton_tuned_entries"] = len(autotune.shipped_tables().get(gpu, {}))
    return env


def interleaved_rounds(fns: Dict[str, Callable[[], object]], rounds: int, min_seconds: float,
                       max_rounds: int = 400, shuffle: bool = False) -> Dict[str, List[float]]:
    """Per-round times (ms) of each function, run alternately so that drift in the machine's load
    affects all of them alike; at least `rounds` rounds and `min_seconds`, at most `max_rounds`.
    ``shuffle`` randomises the order within each round (no function always runs right after another)."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up: oneDNN primitive creation, allocator
        fn()
    start = time.perf_counter()
    while len(times[next(iter(fns))]) < max_rounds:
        order = list(fns.items())
        if shuffle:
            random.shuffle(order)
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
        n = len(times[next(iter(fns))])
        if n >= rounds and time.perf_counter() - start >= min_seconds:
            break
    return times


def quantile(values: List[float], q: float) -> float:
    """The element at rank q of the sorted values (no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_cpu(fn: Callable[[], object], warmup: int = 2, min_runs: int = 5, min_seconds: float = 0.5) -> Dict[str, float]:
    """Wall-clock timing on CPU: median and min of repeated runs (ms)."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 200:
            break
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": len(times)}


def time_cuda(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> Dict[str, float]:
    """CUDA-event timing through triton.testing.do_bench (median, with L2 flush between runs)."""
    import triton.testing

    median, p20, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"median_ms": median, "p20_ms": p20, "p80_ms": p80}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64, inf when ``a`` has a NaN or inf (an unwritten or broken output)."""
    a, b = a.detach().double(), b.detach().double()
    return float("inf") if not torch.isfinite(a).all() else ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def cuda_graph(fn: Callable[[], object], failures: List[str], attempts: int = 2):
    """``fn`` captured as a CUDA graph (warmed up on a side stream first: cuDNN algorithm search and
    allocations stay outside the capture), or None when every attempt failed; each failure is appended
    to ``failures``. Two attempts: the first capture of the ResNeXt-101 stem's training step failed on an
    H200 in two runs ("operation failed due to a previous error during capture") while every later
    capture, and the same step captured alone, worked. Those runs captured on torch.cuda.graph's own
    stream after warming up on another; capture now uses the warm-up stream."""
    from video3d_fast.ops.backends.triton.autotune import capture_graph

    for attempt in range(1, attempts + 1):
        try:
            return capture_graph(fn)
        except Exception as exc:  # the caller reports NaN and the notes say why
            import traceback

            failures.append(f"attempt {attempt}: {type(exc).__name__}: {str(exc)[:160]}")
            # where in the captured code it failed (the last frames), for the log
            print(f"cuda_graph: capture attempt {attempt} failed:\n{traceback.format_exc(limit=-8)}", flush=True)
            torch.cuda.synchronize()
    return None


def write_results(out_dir: Path, name: str, env: Dict[str, object], rows: Sequence[Dict[str, object]],
                  columns: Sequence[str], title: str, notes: Iterable[str] = ()) -> Path:
    """Write <name>.json (env + rows) and <name>.md (a table) into out_dir; return the .md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"environment": env, "rows": list(rows)}, indent=1))
    md = [f"# {title}", "", "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), ""]
    md += [f"- {n}" for n in notes]
    if notes:
        md.append("")
    md.append(markdown_table(rows, columns))
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
