#!/usr/bin/env bash
# The guides' entry point: run one workflow by name, or all of them against the honest baselines.
#
#   scripts/run_finetune.sh standard|hierarchical|progressive|balanced CHECKPOINT DATA [options...]
#   scripts/run_finetune.sh compare CHECKPOINT DATA --eval-data KODAK [compress compare options...]
#
# standard -> run_finetune_standard.sh, hierarchical -> run_finetune_hierarchical.sh, progressive ->
# run_finetune_progressive.sh, balanced -> run_balanced_adaptive.sh; compare -> finetune-kit compress
# compare --checkpoint CHECKPOINT --data DATA --lambda ${LAMBDAS:-0.0035,0.013} --steps ${STEPS:-500} [options].
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_finetune_kit.sh"
usage "$0" 3 $# "${1:-}"
dir="$(dirname "${BASH_SOURCE[0]}")"
workflow="$1"; shift
case "$workflow" in
  standard|hierarchical|progressive) exec bash "$dir/run_finetune_$workflow.sh" "$@" ;;
  balanced) exec bash "$dir/run_balanced_adaptive.sh" "$@" ;;
  compare)
    ckpt="$1" data="$2"; shift 2
    fk compress compare --checkpoint "$ckpt" --data "$data" --lambda "${LAMBDAS:-0.0035,0.013}" --steps "${STEPS:-500}" "$@" ;;
  *) echo "error: unknown workflow '$workflow': use standard, hierarchical, progressive, balanced or compare" >&2; exit 2 ;;
esac
