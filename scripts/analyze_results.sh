#!/usr/bin/env bash
# Analyse a folder of runs (or a sweep folder): thin wrapper over `finetune-kit analyze`.
#
#   scripts/analyze_results.sh RUNS_DIR [finetune-kit analyze options...]
#
# Examples:
#   scripts/analyze_results.sh runs/ --metric test_auroc --group-by ft_strategy \
#       --heatmap learning_rate llrd_decay --compare-param learning_rate
#   scripts/analyze_results.sh sweeps/hpcm --metric loss --mode min --where lambda=0.0018 \
#       --heatmap gamma w_lr
# Writes RUNS_DIR/analysis/{report.md,runs.csv,*.png} unless --output DIR is given.
set -euo pipefail
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit $(( $# < 1 ? 2 : 0 ))
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if command -v finetune-kit >/dev/null 2>&1; then
  exec finetune-kit analyze "$@"
elif [[ -x "$here/.venv/bin/finetune-kit" ]]; then
  exec "$here/.venv/bin/finetune-kit" analyze "$@"
else
  exec python -m finetune_kit.tasks.cli analyze "$@"
fi
