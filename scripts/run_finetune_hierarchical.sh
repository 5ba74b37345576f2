#!/usr/bin/env bash
# The guides' hierarchical fine-tune: per-scale R-D tasks (weighted by --scale_modulation guides,
# since without --use_balanced equal weights would change nothing) and per-scale early stopping.
#
#   scripts/run_finetune_hierarchical.sh CHECKPOINT DATA [compress finetune options...]
#
# = finetune-kit compress finetune --checkpoint CHECKPOINT --data DATA --lambda ${LAMBDA:-0.013}
#   --epochs ${EPOCHS:-500} --learning-rate ${LR:-1e-5} --use_hierarchical --scale_modulation guides
#   --scale_early_stopping --early_stopping_patience 50 [options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_finetune_kit.sh"
usage "$0" 2 $# "${1:-}"
ckpt="$1" data="$2"; shift 2
fk compress finetune --checkpoint "$ckpt" --data "$data" --lambda "${LAMBDA:-0.013}" --epochs "${EPOCHS:-500}" \
  --learning-rate "${LR:-1e-5}" --use_hierarchical --scale_modulation guides --scale_early_stopping \
  --early_stopping_patience 50 "$@"
