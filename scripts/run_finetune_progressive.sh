#!/usr/bin/env bash
# Workflow 2 of the guides (phase 4): hierarchical loss + per-scale early stopping + progressive
# unfreezing (g_a+g_s, then +h_a+h_s+entropy bottleneck after epoch 100, then +context after 200).
#
#   scripts/run_finetune_progressive.sh CHECKPOINT DATA [compress finetune options...]
#
# = finetune-kit compress finetune --checkpoint CHECKPOINT --data DATA --lambda ${LAMBDA:-0.013}
#   --epochs ${EPOCHS:-500} --learning-rate ${LR:-1e-5} --use_hierarchical --scale_modulation guides
#   --scale_early_stopping --early_stopping_patience 50 --progressive_unfreeze
#   --unfreeze_schedule ${UNFREEZE:-100,200} [options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_finetune_kit.sh"
usage "$0" 2 $# "${1:-}"
ckpt="$1" data="$2"; shift 2
fk compress finetune --checkpoint "$ckpt" --data "$data" --lambda "${LAMBDA:-0.013}" --epochs "${EPOCHS:-500}" \
  --learning-rate "${LR:-1e-5}" --use_hierarchical --scale_modulation guides --scale_early_stopping \
  --early_stopping_patience 50 --progressive_unfreeze --unfreeze_schedule "${UNFREEZE:-100,200}" "$@"
