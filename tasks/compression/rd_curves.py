"""Rate-distortion curves: anchors, BD-rate / BD-PSNR and plots.

BD-rate (average bitrate difference at equal PSNR, %; negative = fewer bits than the anchor)
and BD-PSNR (average PSNR difference at equal rate, dB) follow Bjontegaard (VCEG-M33, 2001)
as computed by the ``bjontegaard`` package (Akima interpolation by default, as in JVET's
CTC spreadsheets since 2022).

Anchors file format (``../shared/data/anchors/kodak_rd.json``)::

    {"dataset": "kodak", "curves": {"VTM": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...]}, ...}}

A bare ``{"name": {"bpp": [...], "psnr-rgb": [...]}}`` mapping and CompressAI results files
(``{"name": ..., "results": {"bpp": [...], "psnr-rgb": [...]}}``) are accepted too.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = ["load_anchors", "bd_metrics", "plot_rd", "rd_figure"]

Curve = Mapping[str, list]


def load_anchors(path: str | Path) -> dict[str, dict[str, list]]:
    """Read R-D curves from ``path``; returns ``{name: {"bpp": [...], "psnr-rgb": [...], ...}}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or a curve lacks equal-length ``bpp`` and ``psnr-rgb`` lists.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"anchors file {path} does not exist: pass --anchors with a JSON of R-D curves")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"anchors file {path} is not valid JSON ({exc})") from exc
    if "results" in data and "name" in data:  # a CompressAI results file
        curves = {data["name"]: data["results"]}
    else:
        curves = data.get("curves", data)
    out = {}
    for name, c in curves.items():
        if not isinstance(c, Mapping):
            continue
        if "bpp" not in c or "psnr-rgb" not in c or len(c["bpp"]) != len(c["psnr-rgb"]):
            raise ValueError(f"curve {name!r} in {path} needs 'bpp' and 'psnr-rgb' lists of equal length")
        out[name] = {k: list(v) for k, v in c.items() if isinstance(v, list)}
    if not out:
        raise ValueError(f"no R-D curves in {path}: expected {{'curves': {{name: {{'bpp': [...], 'psnr-rgb': [...]}}}}}}")
    return out


def bd_metrics(anchor: Optional[Curve], test: Curve, *, method: str = "akima",
               anchor_name: str = "anchor") -> dict[str, Any]:
    """BD-rate (%) and BD-PSNR (dB) of ``test`` against ``anchor`` (``bpp``/``psnr-rgb`` lists).

    Returns ``{"anchor", "method", "points", "bd_rate", "bd_psnr", "reason"?, "warnings"?}``;
    ``bd_rate``/``bd_psnr`` are None (with ``reason``) when there is no anchor, fewer than two
    test points (one checkpoint gives one point: train one per lambda) or no overlap: when the
    PSNR ranges of the two curves do not overlap, BD-rate is undefined and BD-PSNR (which would
    be an extrapolation over a rate range with no comparable quality) is reported as None too,
    the reason naming both ranges. Overlap warnings of the ``bjontegaard`` package are kept in
    ``warnings``.
    """
    res: dict[str, Any] = {"anchor": anchor_name, "method": method, "points": len(test["bpp"]),
                           "bd_rate": None, "bd_psnr": None}
    if anchor is None:
        res["reason"] = f"anchor {anchor_name!r} not available"
        return res
    pts = sorted(zip(test["bpp"], test["psnr-rgb"]))
    if len(pts) < 2:
        res["reason"] = "BD needs at least 2 R-D points (one checkpoint per lambda); got 1"
        return res
    import bjontegaard as bd  # local: loads scipy, only for BD metrics (start-up time)

    r, d = [p[0] for p in pts], [p[1] for p in pts]
    a_lo, a_hi = min(anchor["psnr-rgb"]), max(anchor["psnr-rgb"])
    if min(a_hi, max(d)) <= max(a_lo, min(d)):
        res["reason"] = (f"curves do not overlap in PSNR (ours {min(d):.2f}-{max(d):.2f} dB, {anchor_name} "
                         f"{a_lo:.2f}-{a_hi:.2f} dB): BD-rate undefined, so no BD-PSNR either")
        return res
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rate = bd.bd_rate(anchor["bpp"], anchor["psnr-rgb"], r, d, method=method, require_matching_points=False)
        dist = bd.bd_psnr(anchor["bpp"], anchor["psnr-rgb"], r, d, method=method, require_matching_points=False)
    res["bd_rate"] = None if rate is None or math.isnan(rate) else float(rate)
    res["bd_psnr"] = None if dist is None or math.isnan(dist) else float(dist)
    if res["bd_rate"] is None:
        res["bd_psnr"] = None
        res["reason"] = "curves do not overlap in PSNR: BD-rate undefined, so no BD-PSNR either"
    if caught:
        res["warnings"] = sorted({str(w.message) for w in caught})
    return res


def plot_rd(curves: Mapping[str, Curve], anchors: Mapping[str, Curve], path: str | Path, *,
            title: str = "Rate-distortion", bd: Optional[Mapping[str, Any]] = None) -> Path:
    """Write :func:`rd_figure` to ``path`` (PNG, the legend outside the axes) and return ``path``."""
    import matplotlib.pyplot as plt  # local: drawn figures only (start-up time)

    fig = rd_figure(curves, anchors, title=title, bd=bd)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


#: colour and marker of our curves, in order (anchors take matplotlib's default cycle)
_OURS = (("black", "o"), ("darkred", "s"), ("navy", "^"), ("darkgreen", "D"), ("saddlebrown", "v"))


def rd_figure(curves: Mapping[str, Curve], anchors: Mapping[str, Curve], *, title: str = "Rate-distortion",
              bd: Optional[Mapping[str, Any]] = None):
    """PSNR-RGB (dB) against rate (bpp) for ``curves`` (one solid line with markers each, its own
    colour: a base model and its fine-tune are two curves) over ``anchors`` (thin lines); returns
    the matplotlib Figure.

    ``bd``: one :func:`bd_metrics` result for every curve (a dict with ``"anchor"``), or
    ``{curve name: result}``; the BD-rate/BD-PSNR goes into that curve's legend entry ("BD
    undefined" with no overlap). The legend sits outside the axes, right of them, so it never
    covers a curve; the x axis spans our points (at least 0-1 bpp).
    """
    import matplotlib  # local: matplotlib loads only when a figure is drawn (start-up time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: drawn figures only (start-up time)

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for name, c in anchors.items():
        style = "--" if "paper" in name.lower() or "hpcm" in name.lower() else "-"
        ax.plot(c["bpp"], c["psnr-rgb"], style, lw=1, alpha=0.55, label=name)
    per_curve = bd if bd and "anchor" not in bd else {name: bd for name in curves}
    for k, (name, c) in enumerate(curves.items()):
        pts = sorted(zip(c["bpp"], c["psnr-rgb"]))
        label, b = name, per_curve.get(name)
        if b and b.get("bd_rate") is not None:
            psnr = f", BD-PSNR {b['bd_psnr']:+.2f} dB" if b.get("bd_psnr") is not None else ""
            label += f"\n(BD-rate {b['bd_rate']:+.1f} %{psnr} vs {b['anchor']})"
        elif b and "overlap" in str(b.get("reason", "")):
            label += f"\n(BD undefined vs {b['anchor']}: no PSNR overlap)"
        colour, marker = _OURS[k % len(_OURS)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", marker=marker, ms=7, lw=2.2, color=colour, label=label)
    all_bpp = [b for c in list(curves.values()) for b in c["bpp"]]
    if all_bpp:
        ax.set_xlim(0, max(1.0, max(all_bpp) * 1.1))
    ax.set_xlabel("rate (bpp)")
    ax.set_ylabel("PSNR-RGB (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig
