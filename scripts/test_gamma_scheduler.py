#!/usr/bin/env python
"""Print gamma at key epochs for every gamma schedule and save a comparison plot.

Thin wrapper over :mod:`tasks.compression.gamma_schedules` (the schedules the balanced R-D
optimizer of ``finetune-kit compress finetune --use_balanced --gamma_strategy ...`` uses):
every single-gamma strategy (constant, linear, cosine, step, adaptive, hpcm) and every
per-scale strategy of the hierarchical variant (fixed, linear, cosine, adaptive, hierarchical).

The adaptive schedules need a validation history; this script feeds them a synthetic loss
curve (exponential decay that flattens into a plateau after 40 % of the run, per-scale curves
plateauing at 30 / 40 / 50 %), clearly not a measured one, so their plateau rule can be seen.

Usage:
    python scripts/test_gamma_scheduler.py [--epochs 500] [--gamma 0.001] [--gamma_final 0.0001]
        [--output gamma_schedules.png]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.compression.gamma_schedules import (  # noqa: E402
    GAMMA_STRATEGIES,
    SCALE_GAMMA_STRATEGIES,
    gamma_at,
    scale_gammas_at,
)


def synthetic_history(epochs: int, plateau_at: float) -> list[float]:
    """A validation loss per epoch that improves, then stays flat from ``plateau_at * epochs`` on."""
    stop = max(1, int(plateau_at * epochs))
    return [1.0 + math.exp(-min(e, stop) / max(1.0, epochs / 10)) for e in range(epochs)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=500, help="run length in epochs (default 500, the guides' fine-tuning)")
    ap.add_argument("--gamma", type=float, default=0.001, help="start gamma (default 0.001)")
    ap.add_argument("--gamma_final", type=float, default=None, help="end gamma (default gamma / 10)")
    ap.add_argument("--output", type=Path, default=Path("gamma_schedules.png"), help="plot file (PNG)")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error(f"--epochs {args.epochs}: need at least 2 epochs")
    E = args.epochs
    final = args.gamma / 10 if args.gamma_final is None else args.gamma_final
    history = synthetic_history(E, 0.4)
    histories = {s: synthetic_history(E, p) for s, p in (("s1", 0.3), ("s2", 0.4), ("s3", 0.5))}
    key = sorted({0, E // 10, E // 5, int(0.35 * E), E // 2, int(0.7 * E), E - 1})

    def single(strategy: str, e: int) -> float:
        return gamma_at(strategy, e, epochs=E, gamma=args.gamma, gamma_final=final, history=history)

    def scales(strategy: str, e: int) -> dict[str, float]:
        return scale_gammas_at(strategy, e, epochs=E, final_ratio=final / args.gamma, histories=histories)

    print(f"gamma per strategy at key epochs (epochs={E}, gamma={args.gamma:g}, gamma_final={final:g}; "
          "adaptive fed a synthetic loss that plateaus at 40 %)")
    print(f"{'strategy':<14}" + "".join(f"{'ep ' + str(e):>12}" for e in key))
    for s in GAMMA_STRATEGIES:
        print(f"{s:<14}" + "".join(f"{single(s, e):>12.3e}" for e in key))
    print("\nper-scale gammas s1/s2/s3 (hierarchical variant; adaptive plateaus at 30/40/50 %)")
    for s in SCALE_GAMMA_STRATEGIES:
        for scale in ("s1", "s2", "s3"):
            label = f"{s}:{scale}"
            print(f"{label:<18}" + "".join(f"{scales(s, e)[scale]:>12.3e}" for e in key))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(E))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for s in GAMMA_STRATEGIES:
        ax1.plot(epochs, [single(s, e) for e in epochs], label=s)
    ax1.set_title("single gamma (--gamma_strategy)")
    colors = plt.get_cmap("tab10")
    for i, s in enumerate(SCALE_GAMMA_STRATEGIES):
        per = [scales(s, e) for e in epochs]
        for scale, style in (("s1", "-"), ("s2", "--"), ("s3", ":")):
            ax2.plot(epochs, [p[scale] for p in per], style, color=colors(i), label=f"{s} {scale}")
    ax2.set_title("per-scale gamma (hierarchical; s1 solid, s2 dashed, s3 dotted)")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.set_ylabel("gamma")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
