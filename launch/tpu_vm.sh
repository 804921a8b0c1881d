#!/usr/bin/env bash
# Runs lr_jax on every worker of a TPU VM slice. The workdir must be a filesystem every host mounts,
# with atomic renames (e.g. NFS), so that every host sees the same store and checkpoints; the data
# too, since only this checkout (not ../shared) is copied to the workers.
# Usage: launch/tpu_vm.sh TPU_NAME ZONE WORKDIR CONFIG [extra flags...]
#   e.g. launch/tpu_vm.sh my-v5e-16 us-central2-b /mnt/nfs/runs/qwen15 configs/qwen_math.py \
#          --config.data.path=/mnt/nfs/data/gsm8k/train.jsonl --config.eval.data_dir=/mnt/nfs/data
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE WORKDIR CONFIG [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
name=$1 zone=$2 workdir=$3 config=$4
shift 4
extra=$(printf ' %q' "$@")
cd "$(dirname "$0")/.."
# This checkout goes to every worker; then the same command runs on all of them, and
# jax.distributed.initialize() reads the TPU environment itself (LR_JAX_DISTRIBUTED=1).
# The checkout as it is here: tracked and new (not ignored) files, without deleted ones.
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
  tar --null -czf /tmp/lr_jax_src.tgz -T -
gcloud compute tpus tpu-vm scp /tmp/lr_jax_src.tgz "$name":lr_jax_src.tgz --zone="$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e
  mkdir -p lr_jax && tar -xzf lr_jax_src.tgz -C lr_jax
  cd lr_jax && python3 -m pip install -q -r requirements.txt 'jax[tpu]==0.10.2'
  LR_JAX_DISTRIBUTED=1 python3 -m lr_jax.main --config=$config --workdir=$workdir$extra
"
