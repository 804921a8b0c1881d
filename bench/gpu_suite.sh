#!/usr/bin/env bash
# One GPU call (its stage timeouts sum to 9.6 minutes): the accelerator suite, then per-op profiles of
# a decode step (the default Pallas decode attention) with CUDA graphs off, so the trace times each
# HLO op (run 3 profiled the distill update too: bench/RESULTS.md), then bench/decode_gemms.py (a
# decode step's projections: separate or merged weights, Triton GEMMs, cuBLAS or an exhaustive
# tiling search). Everything lands in OUT_DIR/r.tgz after each stage (a later timeout keeps what
# finished), with the suite's and the profile's markdown beside it.
#   bash bench/gpu_suite.sh OUT_DIR [SUITE_BUDGET_S]      (from the repo root)
# Run 1 of bench/RESULTS.md used an earlier form of this script (suite, then generation with CUDA
# graphs for WHILE/CONDITIONAL); run 3 one that profiled XLA's decode attention where
# decode_gemms.py now runs; run 4's first call ran it as it is (431 s on the H200).
set -uo pipefail
out=${1:?usage: bench/gpu_suite.sh OUT_DIR [SUITE_BUDGET_S]}
budget=${2:-340}  # leaves the suite room for the XLA distill variant (cuDNN's backward checked against it)
py=${PYTHON:-python3}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
pack() { tar czf "$out/r.tgz" -C "$work" . ; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$work/device.txt"
timeout $((budget + 40)) "$py" bench/accelerator_suite.py --out "$work/suite" --budget-seconds "$budget" \
  --sections ceilings,generate,contrastive,lockstep,distill,projection 2>&1 | tee "$work/suite.log"; pack
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 70 "$py" bench/profile_steps.py --out "$work/profile" \
  --no-command-buffers --targets decode 2>&1 | tee "$work/profile.log"; pack
timeout 120 "$py" bench/decode_gemms.py --out "$work/decode_gemms.json" 2>&1 | tee "$work/decode_gemms.log"; pack
cp "$work/suite/results.md" "$out/suite.md" 2>/dev/null; cp "$work/profile/summary.md" "$out/profile.md" 2>/dev/null
