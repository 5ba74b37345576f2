"""A metric's direction, as its task declares it (:func:`metric_mode`), and its per-epoch key (:func:`epoch_key`).

The core guesses nothing from a metric's words: every task declares the direction of each
metric it writes in its :class:`~finetune_kit.experiments.profiles.TaskProfile` (``metric`` +
``mode``, and ``metric_modes`` for the others: names or ``fnmatch`` patterns such as
``val_rd_s*``), the composition root merges them
(:func:`~finetune_kit.experiments.profiles.metric_directions`) and hands them in as ``modes``.
A metric no task declares has no direction: it gets no ``best.*`` column and ``analyze``/``sweep``
ask for ``--mode`` (:func:`undeclared_message` says how to declare it).
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Mapping

__all__ = ["METRIC_PREFIXES", "epoch_key", "metric_mode", "strip_prefix", "undeclared_message"]

#: Column prefixes of the runs table (:mod:`finetune_kit.experiments.results`), longest first
#: where one is the start of another (``best_epoch.`` before ``best.``).
METRIC_PREFIXES = ("final.", "best_epoch.", "best.", "last.", "wandb.summary.")
_PATTERN_CHARS = frozenset("*?[")


def strip_prefix(name: str) -> str:
    """``name`` without its runs-table column prefix (``best.val_x`` -> ``val_x``); unchanged without one."""
    for prefix in METRIC_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def metric_mode(name: str, modes: Mapping[str, str] | None = None) -> str | None:
    """Direction of a metric as declared in ``modes``: ``"max"``, ``"min"`` or ``None`` (undeclared).

    Args:
        name: a metric name or runs-table column (``val_auroc``, ``final.test.auroc``, ``best.val_rd``).
        modes: ``{metric name or fnmatch pattern: "max" | "min"}``, the directions the tasks
            declare (:func:`~finetune_kit.experiments.profiles.metric_directions`); default none.

    A name matches a key when, after its column prefix is dropped (``final.``, ``best.`` ...),
    it equals the key as written or with dots read as ``_`` (``final.test.auroc`` matches
    ``test_auroc``); exact keys win over patterns, and patterns are tried in their order.
    """
    if not modes:
        return None
    key = strip_prefix(name)
    candidates = (name, key, key.replace(".", "_"))
    for cand in candidates:
        if cand in modes:
            return modes[cand]
    for pattern, mode in modes.items():
        if _PATTERN_CHARS & set(pattern) and any(fnmatchcase(c, pattern) for c in candidates):
            return mode
    return None


def undeclared_message(name: str) -> str:
    """The one-line error for a metric without a declared direction: how to pass it, how to declare it."""
    key = strip_prefix(name).replace(".", "_")
    return (f"metric {name!r} has no declared direction: pass --mode max or --mode min, or declare it in its "
            f"task's profile (TaskProfile(metric_modes={{{key!r}: 'max'}}) in tasks/<task>/profile.py)")


def epoch_key(metric: str) -> str:
    """The per-epoch (``metrics.jsonl``) key matching a metric name or column.

    The column prefix goes (``best.val_auroc`` -> ``val_auroc``), dots become ``_``
    (``final.test.auroc`` -> ``test_auroc``) and a test metric maps to its validation
    counterpart (``test_auroc`` -> ``val_auroc``). Whether a task logs that key per epoch is
    up to the task; callers check the records.
    """
    key = strip_prefix(metric).replace(".", "_")
    return "val_" + key[len("test_"):] if key.startswith("test_") else key
