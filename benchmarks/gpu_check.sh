#!/usr/bin/env bash
# The one prepared GPU check: fits in 8 minutes on one H100/H200 whose image has torch and triton
# (but no deepspeed, ray, av, diffusers, maybe no yaml/einops). Correctness first, then timings;
# each section is a python module printing its own table. To add a section, append its module to
# SECTIONS.
#
#   benchmarks/gpu_check.sh [--quick]        (--quick: smaller shapes, fewer repetitions)
#
# Sections: bench_step (the DiT3D-XL training step at the k700 shape: kernels torch vs triton,
# FM vs DFM, attention backends, compiled blocks if time allows; ms/step, TFLOP/s, MFU), then
# bench_kernels (each fused op alone: Triton vs eager vs torch.compile), then bench_deepspeed (the
# ZeRO-2 engine on DiT3D-XL, old vs new DeepSpeed settings, save/load round trip; needs the
# deepspeed wheel on PYTHONPATH; one process, no launcher; ~100 s, cap 150 s), then
# preprocess_gpu_node (the k700-shape preprocessing pipeline on this node: decode workers 1-14, the
# encoder actor on the GPU, shards; needs the av, diffusers and pyarrow wheels; ~5-6 min, cap 420 s:
# it plans its rows inside its share and lists what it skipped; give it its own call with
# GPU_CHECK_BUDGET_S when the sections before it use the budget).
# bench_attention (every model.attention backend vs float64, the kernel SDPA's own pick runs at
# (1, 16, 13312, 72), fwd+bwd TFLOP/s at head dims 72/64/80/128 and 13k/32k tokens; cap 90 s, rows
# past its share listed as skipped) and sampling_time (DiT3D-XL batch 1 with guidance 4: old levers
# vs attention auto + compiled blocks + CUDA graphs, DFM vs FM; cap 120 s) run after bench_step.
# To fill the `auto` table: python -m benchmarks.bench_attention --write-table (then commit
# dfm_video/models/attention_measured.json).
# Time: the whole script stays under $GPU_CHECK_BUDGET_S (450 s): the tests get at most 150 s,
# each section at most its cap (bench_step 200 s, others $SECTION_TIMEOUT = 300 s) and never more
# than what is left; a section is told its share in $GPU_CHECK_SECTION_BUDGET_S (bench_step skips
# the rows that would not fit and says so). Expected (estimates until measured): tests ~1-2 min,
# step ~1.5-3 min, kernels ~2-4 min (mostly torch.compile).
# On a CPU-only machine `--quick` is a smoke test (tiny shapes, Triton in its interpreter, ~1 min).
# Exit status: 0 when every step passed, 1 otherwise (every step still runs).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
SECTIONS=(
  benchmarks.bench_step
  benchmarks.bench_attention
  benchmarks.sampling_time
  benchmarks.bench_kernels
  benchmarks.bench_deepspeed
  benchmarks.preprocess_gpu_node
)
declare -A CAP=([benchmarks.bench_step]=200 [benchmarks.bench_deepspeed]=150 [benchmarks.preprocess_gpu_node]=420 [benchmarks.bench_attention]=90 [benchmarks.sampling_time]=120)  # seconds; the rest get ${SECTION_TIMEOUT:-300}
# Extra arguments per section (after the script's own, e.g. --quick).
declare -A ARGS=([benchmarks.sampling_time]="--repeats 1 --cfg-scale 4.0 --levers old,new")
TOTAL="${GPU_CHECK_BUDGET_S:-450}"
status=0
start=$SECONDS

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda)" || status=1

# 1. Correctness: the kernels tests (odd shapes in fp32, bf16/fp32 at DiT widths on CUDA) and the
#    model through the `kernels` switch (DiT3D forward + gradients, triton vs torch).
#    The image may lack pytest; bench_kernels re-checks correctness at benchmark shapes anyway.
#    --noconftest: other tests' conftest files may import packages the image lacks.
if "$PY" -c "import pytest" 2>/dev/null; then
  echo "=== tests: kernels, model kernels, attention backends, CUDA-graph sampling ==="
  timeout 150 "$PY" -m pytest tests/test_kernels.py tests/test_model_kernels.py tests/test_attention.py \
    "tests/test_compiled_blocks.py::test_cuda_graph_sampling_equals_eager" -q --noconftest \
    -p no:cacheprovider || status=1
else
  echo "=== pytest not installed: skipping tests/test_kernels.py tests/test_model_kernels.py ==="
fi

# 1b. The shipped k700 training step as `deepspeed dfm_video/train.py` runs it (benchmarks/bench_train_step.py:
#     real shard writer, memory planner, fused AdamW, EMA; old vs new settings, then ZeRO-1 and ZeRO-3;
#     per-category profile). Needs the deepspeed wheel. ~35 s per row, 4 rows + profile: cap 200 s; rows
#     that would pass the cap are skipped and say so.
TRAIN_CAP=200
left=$((TOTAL - (SECONDS - start)))
if ((left < 60)); then
  echo "!!! benchmarks.bench_train_step skipped: $((SECONDS - start)) s of the ${TOTAL} s budget used"; status=1
else
  limit=$((left < TRAIN_CAP ? left : TRAIN_CAP))
  echo "=== benchmarks.bench_train_step ($((SECONDS - start)) s elapsed, limit ${limit} s) ==="
  GPU_CHECK_SECTION_BUDGET_S=$((limit - 20)) timeout "$limit" "$PY" -m benchmarks.bench_train_step --zero-stages 1,3 "$@" \
    || { echo "!!! benchmarks.bench_train_step failed"; status=1; }
fi

# 2. Sections, in order; each prints its own tables.
for section in "${SECTIONS[@]}"; do
  elapsed=$((SECONDS - start))
  left=$((TOTAL - elapsed))
  if ((left < 30)); then
    echo "!!! $section skipped: ${elapsed} s of the ${TOTAL} s budget used"; status=1; continue
  fi
  cap="${CAP[$section]:-${SECTION_TIMEOUT:-300}}"
  limit=$((left < cap ? left : cap))
  echo "=== $section (${elapsed} s elapsed, limit ${limit} s) ==="
  # A section may start work until 20 s before its limit (bench_step: rows that fit).
  GPU_CHECK_SECTION_BUDGET_S=$((limit - 20)) timeout "$limit" "$PY" -m "$section" "$@" ${ARGS[$section]:-} \
    || { echo "!!! $section failed"; status=1; }
done
echo "=== gpu_check done in $((SECONDS - start)) s, status $status ==="
exit $status
