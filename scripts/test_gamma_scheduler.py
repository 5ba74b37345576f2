#!/usr/bin/env python
"""Print gamma at key epochs for every gamma schedule and save a comparison plot.

Thin wrapper over :mod:`finetune_kit.tasks.compression.objectives.gamma_plots` (the schedules the balanced R-D
optimizer of ``finetune-kit compress finetune --use_balanced --gamma_strategy ...`` uses):
every single-gamma strategy (constant, linear, cosine, step, adaptive, hpcm) and every
per-scale strategy of the hierarchical variant (fixed, linear, cosine, adaptive, hierarchical).
The adaptive schedules are fed a synthetic validation curve (plateau at 40 %; per scale
30 / 40 / 50 %), clearly not a measured one, so their plateau rule can be seen.

Usage:
    python scripts/test_gamma_scheduler.py [--epochs 500] [--gamma 0.001] [--gamma_final 0.0001]
        [--output gamma_schedules.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune_kit.tasks.compression.objectives.gamma_plots import format_gamma_table, gamma_curves, key_epochs, plot_gamma_schedules  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=500, help="run length in epochs (default 500, the guides' fine-tuning)")
    ap.add_argument("--gamma", type=float, default=0.001, help="start gamma (default 0.001)")
    ap.add_argument("--gamma-final", "--gamma_final", dest="gamma_final", type=float, default=None, help="end gamma (default gamma / 10)")
    ap.add_argument("--output", "-o", type=Path, default=Path("gamma_schedules.png"), help="plot file (PNG)")
    args = ap.parse_args(argv)
    try:
        curves = gamma_curves(args.epochs, args.gamma, args.gamma_final)
    except ValueError as exc:
        ap.error(str(exc))
    print(f"gamma per strategy at key epochs (epochs={args.epochs}, gamma={curves.gamma:g}, "
          f"gamma_final={curves.gamma_final:g}; adaptive fed a synthetic loss)")
    print(format_gamma_table(curves, key_epochs(args.epochs)))
    plot = plot_gamma_schedules(args.output, curves)
    print(f"\nwrote {plot.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
