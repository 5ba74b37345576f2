"""Axis helpers shared by every figure of the toolkit (matplotlib axes in, nothing drawn on its own)."""
from __future__ import annotations

import re
from typing import Iterable

__all__ = ["integer_epoch_axis", "is_log_scale_param", "LOG_SCALE_PARAMS"]

#: Parameters searched on a log scale (learning rates, weight decay, the rate-distortion lambda): a
#: comparison against one of them gets a log x axis whatever its span. Matched against the parameter's
#: last name part (``config.optim.learning_rate`` -> ``learning_rate``).
LOG_SCALE_PARAMS = re.compile(r"^(.*_)?(lr|learning_rate|learning-rate|min_lr|weight_decay|lmbda|lambda_?|"
                              r"source_lmbda)$")


def integer_epoch_axis(ax, epochs: Iterable[float], axis: str = "x") -> None:
    """Epoch ticks on whole numbers only, also for a one- or two-epoch run (matplotlib's integer locator
    falls back to fractional ticks when the axis spans less than one): an axis spanning under two epochs
    is widened to half an epoch beyond the first and last. ``epochs``: the epoch values drawn."""
    from matplotlib.ticker import MaxNLocator  # start-up time: matplotlib loads only when a figure is drawn

    values = [float(e) for e in epochs]
    if not values:
        return
    lo, hi = min(values), max(values)
    target = ax.xaxis if axis == "x" else ax.yaxis
    if hi - lo < 2:
        (ax.set_xlim if axis == "x" else ax.set_ylim)(lo - 0.5, hi + 0.5)
    target.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def is_log_scale_param(name: str) -> bool:
    """Whether a parameter (a column such as ``config.learning_rate`` or a name) is learning-rate-like,
    i.e. drawn on a log axis (:data:`LOG_SCALE_PARAMS`)."""
    return bool(LOG_SCALE_PARAMS.match(str(name).rsplit(".", 1)[-1]))
