# Sourced by the guides' run_*.sh scripts: fk runs the finetune-kit command (installed, the
# repository's .venv, or python -m), usage prints a script's header comment.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fk() {
  if command -v finetune-kit >/dev/null 2>&1; then
    finetune-kit "$@"
  elif [[ -x "$here/.venv/bin/finetune-kit" ]]; then
    "$here/.venv/bin/finetune-kit" "$@"
  else
    python -m finetune_kit.tasks.cli "$@"
  fi
}
usage() {  # usage SCRIPT NEEDED_ARGS GIVEN_ARGS FIRST_ARG
  if [[ "$3" -lt "$2" || "$4" == "-h" || "$4" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "$1" | sed '$d' | sed 's/^# \{0,1\}//'
    exit $(( $3 < $2 ? 2 : 0 ))
  fi
}
