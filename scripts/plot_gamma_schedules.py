"""Draw every gamma schedule of the balanced R-D optimizer (finetune_kit.tasks.compression.objectives.gamma_schedules).

Usage::

    python scripts/plot_gamma_schedules.py --epochs 500 --gamma 0.001 --gamma_final 0.0001 --out gamma_schedules.png

Left: the single-gamma schedules (constant, linear, cosine, step, adaptive, hpcm). Right: the
per-scale schedules of the hierarchical variant (fixed, linear, cosine, adaptive, hierarchical;
s1/s2/s3 solid/dashed/dotted). The adaptive schedules are fed a synthetic validation curve
(see finetune_kit.tasks.compression.objectives.gamma_plots), not a measured one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune_kit.tasks.compression.objectives.gamma_plots import gamma_curves, plot_gamma_schedules  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=500, help="run length in epochs (default 500)")
    ap.add_argument("--gamma", type=float, default=0.001, help="start gamma (default 0.001)")
    ap.add_argument("--gamma-final", "--gamma_final", dest="gamma_final", type=float, default=0.0001, help="end gamma (default 0.0001)")
    ap.add_argument("--window", type=int, default=5, help="adaptive rule's window, epochs (default 5)")
    ap.add_argument("--output", "--out", "-o", dest="out", type=Path, default=Path("gamma_schedules.png"), help="plot file (PNG)")
    args = ap.parse_args(argv)
    try:
        curves = gamma_curves(args.epochs, args.gamma, args.gamma_final, window=args.window)
    except ValueError as exc:
        ap.error(str(exc))
    plot = plot_gamma_schedules(args.out, curves)
    print(f"wrote {plot.path}")
    return plot.path


if __name__ == "__main__":
    main()
