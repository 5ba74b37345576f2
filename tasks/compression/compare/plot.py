"""The R-D figure of ``compress compare`` (``rd.png``): every workflow's points (one marker per
target lambda, joined), the base checkpoint, and the published anchors (thin lines)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from finetune_kit.tasks.compression.config import DEFAULT_ANCHORS
from finetune_kit.tasks.compression.rd_curves import load_anchors

__all__ = ["plot_compare"]

_MARKERS = {"finetune-all": "o", "wf1-basic": "s", "wf2-hierarchical": "^", "wf3-balanced": "D", "scratch": "x"}


def plot_compare(cfg: Any, state: Mapping, path: str | Path, *, anchors_path: Path | None = None) -> Path:
    """PSNR-RGB (dB) against real bpp; anchors from ``cfg.anchors`` (default: the shipped Kodak
    file). The axes span our points and the anchors below 1 bpp. Returns ``path``."""
    import matplotlib  # local: matplotlib loads only when a figure is drawn (start-up time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: drawn figures only (start-up time)

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    ours = []
    for wf in cfg.workflows:
        pts = sorted((c["eval"]["mean"]["bpp"], c["eval"]["mean"]["psnr-rgb"], l) for l in cfg.lambdas
                     if "eval" in (c := state["cells"].get(f"{l:g}/{wf}", {})))
        if pts:
            ours += pts
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=_MARKERS.get(wf, "o"), lw=1.5, label=wf)
    base = state.get("base")
    if base:
        b = base["mean"]
        ours.append((b["bpp"], b["psnr-rgb"], None))
        ax.plot([b["bpp"]], [b["psnr-rgb"]], "*", ms=14, color="black", label=f"base (lambda {state.get('base_lmbda')})")
    src = anchors_path or getattr(cfg, "anchors", None) or DEFAULT_ANCHORS
    if src and Path(src).is_file():
        for name, c in load_anchors(src).items():
            keep = [(r, d) for r, d in zip(c["bpp"], c["psnr-rgb"]) if r <= 1.0]
            if keep:
                ax.plot(*zip(*keep), "-", lw=0.8, alpha=0.6, label=name)
    if ours:
        lo = min(p[1] for p in ours)
        ax.set_ylim(lo - 1.5, None)
        ax.set_xlim(0, max(1.0, max(p[0] for p in ours) * 1.1))
    ax.set_xlabel("rate (bpp, real bitstreams)")
    ax.set_ylabel("PSNR-RGB (dB)")
    n = len((base or {}).get("images", []))
    ax.set_title(f"compress compare: {state.get('model')}, {cfg.steps} steps per workflow ({n} eval images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
