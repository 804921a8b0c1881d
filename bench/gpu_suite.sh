#!/usr/bin/env bash
# One GPU call: the accelerator suite with default XLA flags, then generation again with the decode
# loop captured as a CUDA graph (XLA command buffers with WHILE/CONDITIONAL), for comparison.
#   bash bench/gpu_suite.sh OUT_DIR [SUITE_BUDGET_S]      (from the repo root; ~8 minutes on one H100)
set -uo pipefail
out=${1:?usage: bench/gpu_suite.sh OUT_DIR [SUITE_BUDGET_S]}
budget=${2:-300}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$out/device.txt"
timeout $((budget + 130)) "$py" bench/accelerator_suite.py --out "$out/suite" --budget-seconds "$budget" 2>&1 \
  | tee "$out/suite.log"
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" \
  timeout 140 "$py" bench/accelerator_suite.py --out "$out/cmdbuf" --sections ceilings,generate --budget-seconds 90 2>&1 \
  | tee "$out/cmdbuf.log"
