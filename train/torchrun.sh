#!/usr/bin/env bash
# Launch graft training with torchrun on one node or many.
#   one node:   NPROC_PER_NODE=8 train/torchrun.sh train/sentinel2_image.yaml
#   multi-node: run on every node with NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT set
#               (rendezvous via c10d), e.g. from train/slurm.sbatch.
# Extra arguments go to `graft train` (e.g. --set data.batch_size=32).
set -euo pipefail
CONFIG=${1:?usage: train/torchrun.sh CONFIG [graft train args...]}; shift
NPROC_PER_NODE=${NPROC_PER_NODE:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec torchrun \
  --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" --node_rank="$NODE_RANK" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="${RDZV_ID:-graft}" \
  -m graft.cli train "$CONFIG" --resume latest "$@"
