#!/usr/bin/env bash
# The project's GPU suite: ONE command for the GPU machine (H100 or H200, torch 2.11 + Triton 3.6, no network).
#   bash benchmarks/gpu_suite.sh [OUT_DIR]        (or VIDEO3D_FAST_RESULTS=OUT_DIR; default benchmarks/results/)
#   QUICK=1 bash benchmarks/gpu_suite.sh          (fewer shapes and repetitions)
#   QUICK=1 BATCH=32 COMPILE_MODE=max-autotune bash benchmarks/gpu_suite.sh
#                                                 (the issue's batch-32 and max-autotune comparisons: a
#                                                  later run's choice, once batch 8 is measured)
#   TUNE=1 bash benchmarks/gpu_suite.sh           (build, then benchmarks/gpu_tune.py only: autotune the
#                                                  conv layers of ResNeXt-101/ResNet-50/18 at batch 8,
#                                                  then 32 (TUNE_BATCHES), as far as the budget goes; write
#                                                  triton_tuned.json, the table to commit into
#                                                  video3d_fast/ops/backends/triton/tuned/)
# Steps: build the extension with its CUDA kernels (JIT, installs nothing), run the `gpu` tests, run the GPU
# microbenchmarks, the whole-network benchmark and benchmarks/gpu_probe.py, write JSON + markdown into OUT_DIR,
# print a short table last. Each step has a time limit, and all of them together stay inside SUITE_BUDGET
# (560 s; on an H200 with QUICK=1 the steps took 26/151/13/71/23 s before the models benchmark was added:
# expect ~7 minutes, so give the device call its 600 s); a failing step is reported and the suite goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${VIDEO3D_FAST_RESULTS:-benchmarks/results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export VIDEO3D_FAST_CUDA=1 VIDEO3D_FAST_BUILD_DIR="${VIDEO3D_FAST_BUILD_DIR:-/tmp/video3d_fast_build}"
export VIDEO3D_FAST_RESULTS="$OUT_DIR"
QUICK_FLAG=""; [ "${QUICK:-0}" = "1" ] && QUICK_FLAG="--quick"
BATCH="${BATCH:-8}"  # clips per batch of the layer and whole-network benchmarks
COMPILE_MODE="${COMPILE_MODE:-default}"  # torch.compile mode of the layer benchmark's compiled baseline
COMPILE_FLAG=""  # max-autotune searches Triton conv templates per shape: tens of seconds each
[ "$COMPILE_MODE" != "default" ] && COMPILE_FLAG="--compile-budget 70"
SUMMARY="$OUT_DIR/gpu_suite_summary.md"
suite_start=$(date +%s)
rm -f "$OUT_DIR/gpu_suite.log" "$OUT_DIR/gpu_tests.log"
status_rows=()

# The whole suite stays inside SUITE_BUDGET seconds (default 560: a device call may run 600 s, and the
# summary below must still be written): a step gets at most what is left, and none starts with < 20 s.
SUITE_BUDGET="${SUITE_BUDGET:-560}"

step() {  # step NAME TIMEOUT_S LOGFILE COMMAND...   (output also goes to LOGFILE)
  local name=$1 limit=$2 log=$3; shift 3
  local t0; t0=$(date +%s)
  local left=$(( SUITE_BUDGET - (t0 - suite_start) ))
  if [ "$left" -lt 20 ]; then
    echo "=== [$name] skipped: ${left}s of the suite budget left"
    status_rows+=("| $name | skipped (suite budget) | 0s |")
    return 124
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$name] (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" > >(tee -a "$log") 2>&1
  local rc=$?
  sleep 0.2  # let tee drain
  local dt=$(( $(date +%s) - t0 ))
  echo "=== [$name] rc=$rc in ${dt}s"
  status_rows+=("| $name | $rc | ${dt}s |")
  return $rc
}

{
  echo "# GPU suite $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
  "$PY" -c "import torch, sys; import triton; print(f'python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, triton {triton.__version__}')" 2>&1
} | tee "$SUMMARY"

step build 90 "$OUT_DIR/gpu_suite.log" "$PY" -c "
import time; t = time.time()
from video3d_fast._extension import load_extension
s = load_extension()
print(f'extension loaded={s.loaded} how={s.how} cuda_compiled={s.cuda_compiled} reason={s.reason!r} in {time.time()-t:.0f}s')
from video3d_fast import ops
for b in ops.available_backends().values(): print(f'  backend {b.name:7s}', 'ok' if b.available else b.reason)
assert s.loaded and s.cuda_compiled
"

if [ "${TUNE:-0}" = "1" ]; then
  # the whole remaining budget, less the summary's few seconds; the script stops starting shapes at --budget
  tune_left=$(( SUITE_BUDGET - ($(date +%s) - suite_start) - 15 ))
  step tune "$tune_left" "$OUT_DIR/gpu_suite.log" "$PY" benchmarks/gpu_tune.py --out "$OUT_DIR" \
    --batch "${TUNE_BATCHES:-8,32}" \
    --budget $(( tune_left - 60 ))
  {
    echo; echo "| step | rc | time |"; echo "|---|---|---|"
    printf '%s\n' "${status_rows[@]}"
    echo; echo "total $(( $(date +%s) - suite_start ))s"
    [ -f "$OUT_DIR/gpu_tune.md" ] && { echo; grep -E '^(#|- )' "$OUT_DIR/gpu_tune.md"; }
  } | tee -a "$SUMMARY"
  exit 0
fi

# 4 test processes where pytest-xdist is installed (the GPU image has it): most of this step is Triton
# compiling kernels, one CPU core each; the tests check values, not times, so sharing the GPU is fine
XDIST=""; "$PY" -c "import xdist" 2>/dev/null && XDIST="-n 4"
step gpu-tests 220 "$OUT_DIR/gpu_tests.log" "$PY" -m pytest -m gpu -q -p no:cacheprovider --maxfail=20 --continue-on-collection-errors \
  -o addopts="" -rfE --hypothesis-seed=0 $XDIST tests

step bench-ops 40 "$OUT_DIR/gpu_suite.log" "$PY" benchmarks/gpu_bench_ops.py --out "$OUT_DIR" $QUICK_FLAG
if [ -f benchmarks/gpu_bench_triton.py ]; then
  step bench-triton 120 "$OUT_DIR/gpu_suite.log" "$PY" benchmarks/gpu_bench_triton.py --out "$OUT_DIR" --budget 100 \
    --batch "$BATCH" --compile-mode "$COMPILE_MODE" $COMPILE_FLAG $QUICK_FLAG
fi
# targeted probe (grouped tilings first, ~30 compiles; then stem, per-kernel times, split-K, launch host
# time, BN fusion; batch 8 whatever BATCH says): its
# table lands in gpu_suite.log; before the models benchmark, whose duration is not known yet, so the budget
# cannot cut it. Planned: build 26 + tests ~150 (<= 220) + ops 13 + triton ~70 + probe <= 140 -> models
# ~160 s (~90 s if the tests take their whole limit). The probe's grouped section alone is ~30 compiles.
step probe 140 "$OUT_DIR/gpu_suite.log" "$PY" benchmarks/gpu_probe.py --out "${TMPDIR:-/tmp}/video3d_fast_probe"
step bench-models 140 "$OUT_DIR/gpu_suite.log" "$PY" benchmarks/gpu_bench_models.py --out "$OUT_DIR" --batch "$BATCH" \
  $QUICK_FLAG

{
  echo; echo "| step | rc | time |"; echo "|---|---|---|"
  printf '%s\n' "${status_rows[@]}"
  echo; echo "total $(( $(date +%s) - suite_start ))s"
  echo; echo "gpu tests:"; grep -E "passed|failed|error" "$OUT_DIR/gpu_tests.log" | tail -n 5
  for f in "$OUT_DIR"/gpu_ops.md "$OUT_DIR"/triton_conv.md "$OUT_DIR"/gpu_models.md; do
    [ -f "$f" ] && { echo; grep -E '^(#|- |\*\*)' "$f" | head -n 20; }
  done
  echo; echo "probe (benchmarks/gpu_probe.py; full table in gpu_suite.log):"
  grep -E '^(launch|kernels|bnfuse|splitk|stem|grouped) .* ms  err' "$OUT_DIR/gpu_suite.log" | cut -c1-110 | head -n 220
  echo; echo "grouped tilings, heuristic vs fastest correct one (gpu_probe.grouped_digest):"
  grep -E '^best ' "$OUT_DIR/gpu_suite.log" | cut -c1-160 | head -n 60
} | tee -a "$SUMMARY"

# A device call returns at most 8 files from its output folder: fold the small text files into the log
# (7 files remain: gpu_suite.log, gpu_suite_summary.md, gpu_ops/triton_conv/gpu_models .json + .md).
for f in gpu_tests.log triton_host_profile.txt; do
  if [ -f "$OUT_DIR/$f" ]; then
    { echo; echo "=== $f"; cat "$OUT_DIR/$f"; } >> "$OUT_DIR/gpu_suite.log" && rm -f "$OUT_DIR/$f"
  fi
done
