#!/usr/bin/env bash
# Multi-host GPU launch: maps SLURM or torchrun-style variables to jax.distributed.
# Needs JAX's CUDA plugin: pip install -r requirements.txt "jax[cuda13]==0.10.2" (or jax[cuda12]).
# Under SLURM, one process per GPU (JAX gives each task the GPU of its SLURM_LOCALID):
#   srun --nodes=N --ntasks-per-node=G --gpus-per-node=G launch/gpu_multihost.sh WORKDIR CONFIG [flags]
# Elsewhere, one command per host, each process using all of its host's GPUs:
#   MASTER_ADDR=host0 MASTER_PORT=1234 WORLD_SIZE=N RANK=i launch/gpu_multihost.sh WORKDIR CONFIG [flags]
# The workdir and the data (--config.data.path, --config.eval.data_dir) must be on a filesystem every
# host mounts.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 WORKDIR CONFIG [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
workdir=$1 config=$2
shift 2
if [ -n "${SLURM_PROCID:-}" ]; then
  head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  export JAX_COORDINATOR_ADDRESS="${head}:${MASTER_PORT:-12355}"
  export JAX_NUM_PROCESSES="$SLURM_NTASKS" JAX_PROCESS_ID="$SLURM_PROCID"
else
  : "${MASTER_ADDR:?set MASTER_ADDR (or run under SLURM)}" "${WORLD_SIZE:?set WORLD_SIZE}" "${RANK:?set RANK}"
  export JAX_COORDINATOR_ADDRESS="${MASTER_ADDR}:${MASTER_PORT:-12355}"
  export JAX_NUM_PROCESSES="$WORLD_SIZE" JAX_PROCESS_ID="$RANK"
fi
# lr_jax and configs/ (whose variants import configs.qwen_math) from this checkout, from any directory
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m lr_jax.main --config="$config" --workdir="$workdir" "$@"
