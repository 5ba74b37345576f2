"""What a metric's name says: its direction (:func:`metric_mode`) and its per-epoch key (:func:`epoch_key`).

Both read only the name, so they work for any task. A task whose metric names do not tell
their direction hands the directions in (``modes``: a
:attr:`~finetune_kit.experiments.profiles.TaskProfile.metric_modes` mapping, merged over tasks by
:func:`~finetune_kit.experiments.profiles.metric_directions`).
"""
from __future__ import annotations

import re
from typing import Mapping

__all__ = ["METRIC_PREFIXES", "epoch_key", "metric_mode", "strip_prefix"]

#: Words of a metric name (split at ``_``/``-``) meaning lower is better. "rate" is a weak one
#: (bit rate, BD-rate) that a hyperparameter word overrides (learning_rate, drop_path_rate).
_MIN_WORDS = {"loss", "bpp", "ece", "nll", "error", "err", "mse", "mae", "rmse", "brier", "distortion", "rd",
              "cost", "bdrate", "time", "seconds", "memory", "mem", "latency"}
_WEAK_MIN_WORDS = {"rate", "bitrate"}
_MAX_WORDS = {"auroc", "auc", "acc", "accuracy", "psnr", "ssim", "msssim", "f1", "kappa", "precision", "recall",
              "sensitivity", "specificity", "map", "iou", "dice", "score", "throughput"}
#: Words of hyperparameters and bookkeeping values that are logged beside metrics but have no direction.
_PARAM_WORDS = {"lr", "learning", "decay", "drop", "dropout", "momentum", "warmup", "weight", "weights", "gamma",
                "lambda", "lmbda", "temperature", "patience", "seed", "epoch", "epochs", "step", "steps", "batch",
                "grad", "norm", "params", "trainable", "contrib", "delta", "beta", "wd"}
#: Column prefixes of the runs table (:mod:`finetune_kit.experiments.results`), longest first
#: where one is the start of another (``best_epoch.`` before ``best.``).
METRIC_PREFIXES = ("final.", "best_epoch.", "best.", "last.", "wandb.summary.")


def strip_prefix(name: str) -> str:
    """``name`` without its runs-table column prefix (``best.val_x`` -> ``val_x``); unchanged without one."""
    for prefix in METRIC_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def metric_mode(name: str, modes: Mapping[str, str] | None = None) -> str | None:
    """Direction of a metric: ``"max"``, ``"min"`` or ``None`` when unknown.

    ``modes`` (default none) are directions handed in by the tasks, ``{metric name: "max" |
    "min"}``; they win over the name's words. A name matches when it equals the key after
    its column prefix is dropped (``final.x``, ``best.x`` ...), as written or with dots read
    as ``_`` (``final.test.x`` matches ``test_x``).

    Otherwise the name decides. Only the last dotted part counts (``final.test.auroc`` ->
    ``auroc``), and of a ``quantity/task`` key the quantity (``task_weight/distortion`` ->
    ``task_weight``). Its words (split at ``_`` and ``-``) decide: a last word naming a cost
    (``loss``, ``rd``, ``bpp``, ``ece``, ``nll``, ``mse``, ``cost``, ``time``, ``seconds``,
    ...) gives ``"min"``, one naming a score (``auroc``, ``accuracy``, ``psnr``, ``ssim``,
    ``f1``, ...) ``"max"``; otherwise a hyperparameter word (``lr``, ``learning``, ``decay``,
    ``weight``, ``gamma``, ``epoch``, ...) gives ``None`` (``learning_rate``, ``gamma_s1``,
    ``loss_weight``), then any cost word (including ``rate``: ``bd_rate``) ``"min"`` and any
    score word ``"max"`` (``ece_after`` -> ``"min"``, ``val_rd_s1`` -> ``"min"``).
    """
    if modes:
        key = strip_prefix(name)
        for cand in (name, key, key.replace(".", "_")):
            if cand in modes:
                return modes[cand]
    base = name.split(".")[-1].split("/")[0].lower()
    words = [w for w in re.split(r"[_\-\s]+", base) if w]
    if not words:
        return None
    if words[-1] in _MIN_WORDS:
        return "min"
    if words[-1] in _MAX_WORDS:
        return "max"
    found = set(words)
    if found & _PARAM_WORDS:
        return None
    if found & (_MIN_WORDS | _WEAK_MIN_WORDS):
        return "min"
    if found & _MAX_WORDS:
        return "max"
    return None


def epoch_key(metric: str) -> str:
    """The per-epoch (``metrics.jsonl``) key matching a metric name or column.

    The column prefix goes (``best.val_auroc`` -> ``val_auroc``), dots become ``_``
    (``final.test.auroc`` -> ``test_auroc``) and a test metric maps to its validation
    counterpart (``test_auroc`` -> ``val_auroc``). Whether a task logs that key per epoch is
    up to the task; callers check the records.
    """
    key = strip_prefix(metric).replace(".", "_")
    return "val_" + key[len("test_"):] if key.startswith("test_") else key
