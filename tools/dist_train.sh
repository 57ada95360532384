#!/usr/bin/env bash
# Multi-GPU (or multi-process CPU with gloo) training through torchrun and mmengine's launcher.
#   bash tools/dist_train.sh CONFIG NPROC [train.py args...]
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "error: usage: bash tools/dist_train.sh CONFIG NPROC [train.py args...]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
if ! [[ $NPROC =~ ^[1-9][0-9]*$ ]]; then
    echo "error: NPROC must be an integer >= 1, got '$NPROC'" >&2
    exit 2
fi
shift 2
exec python -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
