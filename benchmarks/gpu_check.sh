#!/usr/bin/env bash
# The one prepared GPU check: fits in 8 minutes on one H100/H200 whose image has torch and triton
# (but no deepspeed, ray, av, diffusers). Correctness first, then timings; each section is a
# python module printing its own table. To add a section, append its module to SECTIONS.
#
#   benchmarks/gpu_check.sh [--quick]        (--quick: smaller shapes, fewer repetitions)
#
# Expected time (estimate until measured): tests ~1-2 min, kernels section ~2-4 min (mostly
# torch.compile); hard limits 150 s for the tests and $SECTION_TIMEOUT (300 s) per section.
# Exit status: 0 when every step passed, 1 otherwise (every step still runs).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
SECTIONS=(
  benchmarks.bench_kernels
)
status=0
start=$SECONDS

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda)" || status=1

# 1. Correctness: the kernels test file (odd shapes in fp32, and bf16/fp32 at DiT widths on CUDA).
#    The image may lack pytest; bench_kernels re-checks correctness at benchmark shapes anyway.
#    --noconftest: other tests' conftest files may import packages the image lacks.
if "$PY" -c "import pytest" 2>/dev/null; then
  echo "=== tests/test_kernels.py ==="
  timeout 150 "$PY" -m pytest tests/test_kernels.py -q --noconftest -p no:cacheprovider || status=1
else
  echo "=== pytest not installed: skipping tests/test_kernels.py ==="
fi

# 2. Sections, in order; each prints its own tables.
for section in "${SECTIONS[@]}"; do
  echo "=== $section ($((SECONDS - start)) s elapsed) ==="
  timeout "${SECTION_TIMEOUT:-300}" "$PY" -m "$section" "$@" || { echo "!!! $section failed"; status=1; }
done
echo "=== gpu_check done in $((SECONDS - start)) s, status $status ==="
exit $status
