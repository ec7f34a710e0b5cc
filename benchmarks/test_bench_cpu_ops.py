"""pytest-benchmark view of benchmarks/bench_cpu_ops.py (same cases, same closures).

    pytest benchmarks/test_bench_cpu_ops.py --benchmark-enable --benchmark-group-by=param:case
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.bench_cpu_ops import cases, make_pair

CASES = cases(batches=(2,))


@pytest.mark.parametrize("impl", ["eager", "fused"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c['model']}-{c['name']}-b{c['batch']}" for c in CASES])
def test_conv3d_bn_relu_inference_cpu(benchmark, case, impl):
    from video3d_fast import ops

    if not ops.available_backends()["cpu"].available:
        pytest.skip("cpu backend unavailable")
    eager, fused = make_pair(case)
    fn = eager if impl == "eager" else fused
    with torch.no_grad():
        benchmark(fn)
