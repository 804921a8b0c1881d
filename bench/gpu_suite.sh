#!/usr/bin/env bash
# One GPU call (its stage timeouts sum to 9.7 minutes): bench/hopper_gemms.py (the decode step's
# projection GEMMs through XLA's dot and through JAX's Hopper Mosaic GPU matmul, a tiling sweep, and
# a step's projections with the faster of each); then the accelerator suite, whose generation section
# on a Hopper GPU also times batch 256 with each projection through the faster kernel the sweep
# measured (`decode_gemm="mosaic"`, `--gemm-tilings`); then a per-op profile of a batch-256 decode
# step with CUDA graphs off, so the trace times each HLO op. Everything lands in OUT_DIR/r.tgz after
# each stage (a later timeout keeps what finished), with the suite's and the profile's markdown
# beside it.
#   bash bench/gpu_suite.sh OUT_DIR [SUITE_BUDGET_S]      (from the repo root)
# Earlier runs (bench/RESULTS.md) used earlier forms of this script: run 1 timed generation with
# CUDA graphs for WHILE/CONDITIONAL; run 3 profiled XLA's decode attention; run 4 profiled both
# decode batches and ran bench/decode_gemms.py (merged weights, cuBLAS, exhaustive tiling), whose
# answers are in RESULTS.md, where hopper_gemms.py now runs (first, since the suite reads it).
set -uo pipefail
out=${1:?usage: bench/gpu_suite.sh OUT_DIR [SUITE_BUDGET_S]}
budget=${2:-320}  # leaves the suite room for the XLA distill variant (cuDNN's backward checked against it)
                  # and the Mosaic GEMM generation row
py=${PYTHON:-python3}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
pack() { tar czf "$out/r.tgz" -C "$work" . ; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$work/device.txt"
timeout 150 "$py" bench/hopper_gemms.py --budget-seconds 110 --out "$work/hopper_gemms.json" 2>&1 \
  | tee "$work/hopper_gemms.log"; pack
timeout $((budget + 40)) "$py" bench/accelerator_suite.py --out "$work/suite" --budget-seconds "$budget" \
  --sections ceilings,generate,contrastive,lockstep,distill,projection --gemm-tilings "$work/hopper_gemms.json" \
  2>&1 | tee "$work/suite.log"; pack
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 70 "$py" bench/profile_steps.py --out "$work/profile" \
  --no-command-buffers --targets decode --decode-batches 256 2>&1 | tee "$work/profile.log"; pack
cp "$work/suite/results.md" "$out/suite.md" 2>/dev/null; cp "$work/profile/summary.md" "$out/profile.md" 2>/dev/null
