#!/usr/bin/env bash
# Workflow 1 of the guides (standard): layer-wise LRs, entropy models frozen, a new lambda.
#
#   scripts/run_finetune_standard.sh CHECKPOINT DATA [compress finetune options...]
#
# = finetune-kit compress finetune --checkpoint CHECKPOINT --data DATA --lambda ${LAMBDA:-0.013}
#   --epochs ${EPOCHS:-500} --learning-rate ${LR:-1e-5} --freeze_entropy --context_lr_ratio 0.1 [options]
# Options given after DATA are appended (the last value of an option wins).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_finetune_kit.sh"
usage "$0" 2 $# "${1:-}"
ckpt="$1" data="$2"; shift 2
fk compress finetune --checkpoint "$ckpt" --data "$data" --lambda "${LAMBDA:-0.013}" --epochs "${EPOCHS:-500}" \
  --learning-rate "${LR:-1e-5}" --freeze_entropy --context_lr_ratio 0.1 "$@"
