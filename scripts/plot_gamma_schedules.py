"""Draw every gamma schedule of the balanced R-D optimizer (tasks.compression.gamma_schedules).

Usage::

    python scripts/plot_gamma_schedules.py --epochs 500 --gamma 0.001 --gamma_final 0.0001 --out gamma_schedules.png

Left: the single-gamma schedules (constant, linear, cosine, step, adaptive on a synthetic
validation curve that plateaus at 40 % of the run, hpcm). Right: the per-scale schedules of the
hierarchical variant (fixed, linear, cosine, hierarchical; s1/s2/s3 as solid/dashed/dotted).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.compression.gamma_schedules import GAMMA_STRATEGIES, gamma_at, scale_gammas_at  # noqa: E402


def synthetic_history(epochs: int) -> list[float]:
    """A validation R-D cost that falls quickly, then plateaus from 40 % of the run on."""
    knee = int(0.4 * epochs)
    return [1.0 + math.exp(-min(e, knee) / (0.1 * epochs)) for e in range(epochs)]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--gamma", type=float, default=0.001)
    ap.add_argument("--gamma_final", type=float, default=0.0001)
    ap.add_argument("--out", type=Path, default=Path("gamma_schedules.png"))
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    E = args.epochs
    epochs = list(range(E))
    hist = synthetic_history(E)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in GAMMA_STRATEGIES:
        a.plot(epochs, [gamma_at(s, e, epochs=E, gamma=args.gamma, gamma_final=args.gamma_final, history=hist,
                                 **({"window": max(5, E // 50)} if s == "adaptive" else {})) for e in epochs], label=s)
    a.set_title(f"single gamma: {args.gamma:g} -> {args.gamma_final:g}")
    a.set_xlabel("epoch")
    a.set_ylabel("gamma")
    a.legend()
    styles = {"s1": "-", "s2": "--", "s3": ":"}
    ratio = args.gamma_final / args.gamma
    for i, s in enumerate(("fixed", "linear", "cosine", "hierarchical")):
        vals = [scale_gammas_at(s, e, epochs=E, final_ratio=ratio) for e in epochs]
        for sc, ls in styles.items():
            b.plot(epochs, [v[sc] for v in vals], ls, color=f"C{i}", label=f"{s} {sc}" if sc == "s1" else None)
    b.set_title(f"per scale (s1/s2/s3 solid/dashed/dotted), end = start x {ratio:g}")
    b.set_xlabel("epoch")
    b.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
