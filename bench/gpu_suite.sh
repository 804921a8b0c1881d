#!/usr/bin/env bash
# One GPU call (its stage timeouts sum to 9.1 minutes), each stage a process of its own so that a
# kernel that faults or hangs costs only its stage:
#   1. bench/hopper_gemms.py at batch 256: the decode step's projection GEMMs through XLA's dot and
#      through JAX's Hopper Mosaic GPU matmul (a tiling sweep), then a step's projections with the
#      faster of each; it writes its choices (`gemm_tilings`).
#   2. The accelerator suite's `mosaic` section: generation at batch 256 with XLA's GEMMs, then with
#      the projections through the Mosaic GPU GEMMs stage 1 chose: the gap to the 60% roofline
#      target is in those GEMMs (bench/RESULTS.md, run 4).
#   3. The suite's lockstep sampling, distillation and the paper workload's projection, fresh.
#      (contrastive_step is unchanged since run 4 and not rerun.)
#   4. A per-op profile of a batch-256 decode step with CUDA graphs off, with what time is left.
# Everything lands in OUT_DIR/r.tgz after each stage (a later timeout keeps what finished), with the
# suites' and the profile's markdown beside it.
#   bash bench/gpu_suite.sh OUT_DIR      (from the repo root)
# Earlier runs (bench/RESULTS.md) used earlier forms of this script: run 1 timed generation with
# CUDA graphs for WHILE/CONDITIONAL; run 3 profiled XLA's decode attention; run 4 ran one suite
# process with every section, profiled both decode batches and ran bench/decode_gemms.py (merged
# weights, cuBLAS, exhaustive tiling), whose answers are in RESULTS.md.
set -uo pipefail
out=${1:?usage: bench/gpu_suite.sh OUT_DIR}
py=${PYTHON:-python3}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
pack() { tar czf "$out/.r.tgz" -C "$work" . && mv "$out/.r.tgz" "$out/r.tgz"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$work/device.txt"
timeout 120 "$py" bench/hopper_gemms.py --batches 256 --budget-seconds 90 --out "$work/hopper_gemms.json" 2>&1 \
  | tee "$work/hopper_gemms.log"; pack
timeout 150 "$py" bench/accelerator_suite.py --out "$work/mosaic" --budget-seconds 100 \
  --sections ceilings,mosaic --gemm-tilings "$work/hopper_gemms.json" 2>&1 | tee "$work/mosaic.log"; pack
timeout 220 "$py" bench/accelerator_suite.py --out "$work/suite" --budget-seconds 140 \
  --sections ceilings,lockstep,distill,projection 2>&1 | tee "$work/suite.log"; pack
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 55 "$py" bench/profile_steps.py --out "$work/profile" \
  --no-command-buffers --targets decode --decode-batches 256 2>&1 | tee "$work/profile.log"; pack
cp "$work/mosaic/results.md" "$out/mosaic.md" 2>/dev/null; cp "$work/suite/results.md" "$out/suite.md" 2>/dev/null
cp "$work/profile/summary.md" "$out/profile.md" 2>/dev/null
exit 0
