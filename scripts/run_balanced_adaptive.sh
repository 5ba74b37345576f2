#!/usr/bin/env bash
# Workflow 3 of the guides: balanced R-D with an adaptive gamma (HPCM strategy). With a checkpoint
# it fine-tunes (compress finetune, LR ${LR:-1e-5}); with "scratch" instead of a checkpoint it trains
# from random weights (compress train, LR ${LR:-1e-4}, model ${MODEL:-hpcm-tiny}).
#
#   scripts/run_balanced_adaptive.sh CHECKPOINT|scratch DATA [options...]
#
# = finetune-kit compress finetune --checkpoint CHECKPOINT --data DATA --lambda ${LAMBDA:-0.013}
#   --epochs ${EPOCHS:-500} --learning-rate ${LR:-1e-5} --use_balanced --adaptive_gamma --gamma_strategy hpcm
#   --gamma 0.003 --gamma_final 0.001 --w_lr 0.025 [options]
# or (scratch) finetune-kit compress train --data DATA --model ${MODEL:-hpcm-tiny} --lambda ${LAMBDA:-0.013}
#   --epochs ${EPOCHS:-3000} --learning-rate ${LR:-1e-4} --use_balanced --adaptive_gamma ... [options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_finetune_kit.sh"
usage "$0" 2 $# "${1:-}"
ckpt="$1" data="$2"; shift 2
balanced=(--use_balanced --adaptive_gamma --gamma_strategy hpcm --gamma 0.003 --gamma_final 0.001 --w_lr 0.025)
if [[ "$ckpt" == "scratch" ]]; then
  fk compress train --data "$data" --model "${MODEL:-hpcm-tiny}" --lambda "${LAMBDA:-0.013}" --epochs "${EPOCHS:-3000}" \
    --learning-rate "${LR:-1e-4}" "${balanced[@]}" "$@"
else
  fk compress finetune --checkpoint "$ckpt" --data "$data" --lambda "${LAMBDA:-0.013}" --epochs "${EPOCHS:-500}" \
    --learning-rate "${LR:-1e-5}" "${balanced[@]}" "$@"
fi
