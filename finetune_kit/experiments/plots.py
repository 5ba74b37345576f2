"""Figures for the analysis report: annotated heatmaps, metric-vs-parameter comparisons, curves.

matplotlib is imported inside each function with the non-interactive ``Agg`` backend, so
these work on a headless machine and importing this module is cheap. The ``plot_*``
functions write a PNG and return its path; :func:`draw_heatmap` draws on given axes (what
:func:`plot_heatmap` saves), so its cells can be read back.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from finetune_kit.experiments.analysis import fmt, short_name
from finetune_kit.plot_axes import integer_epoch_axis, is_log_scale_param

__all__ = ["draw_heatmap", "plot_comparison", "plot_curves", "plot_heatmap"]


def _save(fig, path: str | os.PathLike) -> Path:
    """Lay out, write and close ``fig``; returns the path (parent folders created)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def draw_heatmap(ax, values: pd.DataFrame, *, counts: pd.DataFrame | None = None, metric: str = "metric",
                 mode: str = "max", title: str | None = None, x_label: str | None = None,
                 y_label: str | None = None):
    """Draw ``values`` (rows = y parameter, columns = x) on the matplotlib axes ``ax`` with
    every cell annotated; returns the image (``AxesImage``, for a colour bar).

    Cell ``(row i, column j)`` gets a text at ``(j, i)``: the value (:func:`~finetune_kit.experiments.analysis.fmt`),
    plus a line ``n=K`` when ``counts`` says it aggregates K > 1 runs; an empty cell (no run)
    is grey and marked ``-``. The best cell (by ``mode``) is outlined in red. Colours:
    brighter is better in both modes.

    Raises:
        ValueError: ``values`` is empty.
    """
    if values.empty:
        raise ValueError(f"no data for heatmap of {metric}: no completed run has both parameters and the metric")
    plt = _plt()
    data = values.to_numpy(dtype=float)
    cmap = plt.get_cmap("viridis" if mode == "max" else "viridis_r").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, aspect="auto")
    ax.set_xticks(range(data.shape[1]), [fmt(c) for c in values.columns])
    ax.set_yticks(range(data.shape[0]), [fmt(i) for i in values.index])
    ax.set_xlabel(x_label or short_name(str(values.columns.name)))
    ax.set_ylabel(y_label or short_name(str(values.index.name)))
    ax.set_title(title or f"{metric} ({'higher' if mode == 'max' else 'lower'} is better)", fontsize=10)
    finite = data[np.isfinite(data)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            if not math.isfinite(v):
                ax.text(j, i, "-", ha="center", va="center", color="#666666", fontsize=9)
                continue
            frac = (v - lo) / (hi - lo) if hi > lo else 0.5
            frac = frac if mode == "max" else 1 - frac
            label = fmt(v)
            if counts is not None and int(counts.iloc[i, j]) > 1:
                label += f"\nn={int(counts.iloc[i, j])}"
            ax.text(j, i, label, ha="center", va="center", fontsize=9, color="black" if frac > 0.55 else "white")
    if finite.size:
        flat = np.where(np.isfinite(data), data, -np.inf if mode == "max" else np.inf)
        bi, bj = np.unravel_index(np.argmax(flat) if mode == "max" else np.argmin(flat), data.shape)
        ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    return im


def plot_heatmap(values: pd.DataFrame, path: str | os.PathLike, *, counts: pd.DataFrame | None = None,
                 metric: str = "metric", mode: str = "max", title: str | None = None,
                 x_label: str | None = None, y_label: str | None = None) -> Path:
    """Write the heatmap of :func:`draw_heatmap` (same arguments) with a colour bar to ``path``
    (PNG; parent folders are created). Returns the path.

    Raises:
        ValueError: ``values`` is empty.
    """
    if values.empty:
        raise ValueError(f"no data for heatmap {path}: no completed run has both parameters and {metric}")
    plt = _plt()
    w = max(4.0, 1.1 * values.shape[1] + 2.5)
    h = max(3.0, 0.7 * values.shape[0] + 1.8)
    fig, ax = plt.subplots(figsize=(w, h), dpi=110)
    im = draw_heatmap(ax, values, counts=counts, metric=metric, mode=mode, title=title, x_label=x_label,
                      y_label=y_label)
    fig.colorbar(im, ax=ax, label=metric)
    return _save(fig, path)


def plot_comparison(comp: pd.DataFrame, param_col: str, path: str | os.PathLike, *, group_col: str | None = None,
                    metric: str = "metric", mode: str = "max", title: str | None = None) -> Path:
    """``metric`` (mean, with ±std error bars where several runs share a point) against one
    parameter, one line per group; ``comp`` comes from :func:`finetune_kit.experiments.analysis.comparison_data`.

    A learning-rate-like parameter (:func:`~finetune_kit.plot_axes.is_log_scale_param`: learning rates,
    weight decay, lambda) or a numeric one spanning more than a decade (all positive) gets a log x axis;
    a categorical one is drawn at evenly spaced positions. The legend (one entry per group) stands
    beside the axes, never over the data.

    Raises:
        ValueError: ``comp`` is empty.
    """
    if comp.empty:
        raise ValueError(f"no data for comparison plot {path}: no completed run has {param_col} and {metric}")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    xs_all = comp[param_col]
    numeric = pd.api.types.is_numeric_dtype(xs_all)
    categories = list(dict.fromkeys(sorted(xs_all.astype(str)))) if not numeric else []
    groups = [None] if not group_col else list(dict.fromkeys(comp[group_col]))
    for g in groups:
        part = comp if g is None else comp[comp[group_col] == g]
        xs = part[param_col].to_numpy(dtype=float) if numeric else \
            np.array([categories.index(str(v)) for v in part[param_col]], dtype=float)
        order = np.argsort(xs)
        std = part["std"].fillna(0).to_numpy()[order]
        label = fmt(g) if g is not None else None  # the legend's title names the group
        ax.errorbar(xs[order], part["mean"].to_numpy()[order], yerr=std, marker="o", capsize=3, label=label)
    if numeric:
        vals = xs_all.to_numpy(dtype=float)
        if (vals > 0).all() and (is_log_scale_param(param_col) or vals.max() / vals.min() > 10):
            ax.set_xscale("log")
            ticks = sorted(set(vals))
            if len(ticks) <= 8:  # each value tried labelled as written (1e-4, 5e-4), no unlabelled points
                from matplotlib.ticker import NullFormatter  # start-up time: matplotlib loads with a figure

                ax.set_xticks(ticks, [fmt(v) for v in ticks])
                ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(short_name(param_col))
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs {short_name(param_col)} ({'higher' if mode == 'max' else 'lower'} is better)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    if group_col:
        fig.set_size_inches(8.4, 4.2)
        ax.legend(fontsize=8, title=short_name(group_col), loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def plot_curves(df: pd.DataFrame, key: str, path: str | os.PathLike, *, group_col: str | None = None,
                label_cols: Sequence[str] = ()) -> Path | None:
    """Per-epoch curves of ``key`` (a ``metrics.jsonl`` key such as ``val_auroc``) for every
    run in ``df`` (which needs ``path`` and ``run`` columns), coloured by ``group_col``.

    Unfinished runs are drawn dashed. The legend stands beside the axes: one entry per value of
    ``group_col`` (the colours) when grouped, else one per run (up to 16 runs; more are not labelled).
    Epoch ticks are whole numbers. Returns None (and writes nothing) when no run logged ``key``.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    groups = list(dict.fromkeys(df[group_col])) if group_col else [None]
    colors = plt.get_cmap("tab10")
    drawn, epochs = 0, []
    for _, row in df.iterrows():
        hist = Path(row["path"]) / "metrics.jsonl"
        if not hist.is_file():
            continue
        pts = []
        for line in hist.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            v = rec.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                pts.append((rec.get("epoch", len(pts)), float(v)))
        if not pts:
            continue
        gi = groups.index(row[group_col]) if group_col else 0
        cols = ([group_col] if group_col else []) + [c for c in label_cols if c != group_col]
        label = ", ".join(f"{short_name(c)}={fmt(row[c])}" for c in cols if c in row) or row["run"]
        ax.plot(*zip(*pts), marker=".", color=colors(gi % 10), alpha=0.8,
                linestyle="-" if row.get("status") == "completed" else "--", label=label)
        drawn += 1
        epochs += [e for e, _ in pts]
    if not drawn:
        plt.close(fig)
        return None
    integer_epoch_axis(ax, epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(f"{key} per epoch" + (f" (colour: {short_name(group_col)}; dashed: unfinished)" if group_col else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    if group_col:  # the colours are the groups: one entry each (a legend per run would hide that)
        from matplotlib.lines import Line2D  # start-up time: matplotlib loads only when a figure is drawn

        fig.set_size_inches(9.0, 4.2)
        handles = [Line2D([], [], color=colors(i % 10), marker=".") for i in range(len(groups))]
        ax.legend(handles, [fmt(g) for g in groups], title=short_name(group_col), fontsize=8, title_fontsize=8,
                  loc="center left", bbox_to_anchor=(1.01, 0.5))
    elif drawn <= 16:
        fig.set_size_inches(9.0, 4.2)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)
