"""Multi-label images from a CSV with missing labels (``--task multilabel --label-columns A,B,C``).

A CSV such as ``fundus-dr/labels.csv`` (columns ``path,label,patient_id,eye,DME,NPDR,PDR``) gives
each image one cell per label column: ``1`` (present), ``0`` (absent) or blank (NOT GRADED: a
missing label, never a negative). :func:`read_multilabel_csv` turns it into
:class:`MultiLabelImages`: every :class:`MultiLabelSample` carries ``targets``, a tuple of floats
with NaN for a blank cell (:func:`targets_of` stacks them into ``(N, L)``), and ``label``, the index
of its label combination (``"1,?,?"``, ``"0,1,0"`` ...) in ``MultiLabelImages.combinations``,
which stratifies the splits. ``class_names`` are the label columns, so the model gets one output
per label.

Splits keep patients whole: :func:`grouped_split` uses scikit-learn's ``StratifiedGroupKFold`` on the
label combination with the ``--group-column`` (e.g. ``patient_id``) as groups, so no patient is in
two splits and each split's label mix stays close to the whole set's. The run's ``split.csv``
(:func:`write_multilabel_split`) keeps the targets and groups, so ``--resume`` reads them back.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.tasks.classification.data import (MISSING_LABELS, SPLITS, DataError, LabelledImages, Sample,
                                                    check_disjoint, discover, read_csv_table)

__all__ = ["MultiLabelSample", "MultiLabelImages", "read_multilabel_csv", "targets_of", "label_values",
           "grouped_split", "write_multilabel_split", "read_multilabel_split", "is_multilabel", "combination_key",
           "check_learnable", "image_paths", "stratification_labels"]


@dataclass
class MultiLabelSample(Sample):
    """One image with ``targets`` (one float per label column: 1.0, 0.0 or NaN = not graded) and its
    ``group`` (patient id, or None)."""

    targets: tuple[float, ...] = ()
    group: str | None = None


@dataclass
class MultiLabelImages(LabelledImages):
    """Multi-label samples; ``class_names`` are the label columns, ``combinations[label]`` the label
    combination key of a sample (see :func:`combination_key`)."""

    combinations: list[str] = field(default_factory=list)

    @property
    def targets(self) -> np.ndarray:
        """Targets ``(N, L)`` float32, NaN where a label is not graded."""
        return targets_of(self.samples)


def is_multilabel(cfg) -> bool:
    """Whether a :class:`~finetune_kit.tasks.classification.config.ClassificationConfig` asks for
    multi-label data (``--task multilabel``)."""
    return cfg.data.task == "multilabel"


def image_paths(cfg) -> list[str]:
    """The image paths of ``cfg.data`` for either ``--task`` (multi-label: the CSV's path column)."""
    if is_multilabel(cfg):
        images = read_multilabel_csv(cfg.data.data, cfg.data.label_columns, group_column=cfg.data.group_column)
    else:
        images = discover(cfg.data)
    return [s.path for s in images.samples]


def combination_key(targets: Sequence[float]) -> str:
    """``(1.0, nan, 0.0)`` -> ``"1,?,0"``: the stratification key of a sample."""
    return ",".join("?" if math.isnan(t) else str(int(t)) for t in targets)


def targets_of(samples: Sequence[Sample]) -> np.ndarray:
    """Targets ``(N, L)`` float32 of multi-label samples (NaN = not graded)."""
    return np.array([s.targets for s in samples], dtype=np.float32).reshape(len(samples), -1)


def label_values(samples: Sequence[Sample]) -> list:
    """What a data loader yields as ``y`` per sample: the class index, or for a
    :class:`MultiLabelSample` its targets as a float32 array ``(L,)``."""
    return [np.asarray(s.targets, np.float32) if isinstance(s, MultiLabelSample) else s.label for s in samples]


def _cell(value: str, column: str, where: str) -> float:
    v = value.strip()
    if v.lower() in MISSING_LABELS:
        return math.nan
    try:
        x = float(v)
    except ValueError:
        x = 0.5  # not a number: reported below
    if x not in (0.0, 1.0):
        raise DataError(f"{where}: column {column} has {value!r}; a label column holds 0, 1 or blank (not graded)")
    return x


def read_multilabel_csv(path: str | Path, label_columns: Sequence[str], *, group_column: str | None = None,
                        path_column: str = "path") -> MultiLabelImages:
    """Read a multi-label CSV: one image per row, one 0/1/blank cell per label column.

    Args:
        path: the CSV; relative image paths are relative to its folder; an optional ``split`` column
            (train/val/test) is kept. label_columns: the label columns, in output order (>= 1).
        group_column: column of the group (patient) id, or None (each image its own group).
        path_column: column of the image path (default ``path``).

    Returns:
        :class:`MultiLabelImages` (layout ``csv-multilabel``).

    Raises:
        DataError: a missing column (lists the CSV's columns), a cell other than 0/1/blank (names the
            column and the row), an empty path or group, a missing image, or an image listed twice.
    """
    path = Path(path)
    rows = read_csv_table(path)  # UTF-8 (a byte-order mark ignored), at least one row
    header = list(rows[0])
    needed = [path_column, *label_columns] + ([group_column] if group_column else [])
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)}; the CSV's columns are {', '.join(header)} "
                        "(check --label-columns / --group-column)")
    samples, seen = [], {}
    for line, r in enumerate(rows, start=2):
        where = f"{path}:{line}"
        if not r[path_column].strip():
            raise DataError(f"{where}: empty {path_column}; fill it or delete the row")
        p = Path(r[path_column].strip())
        p = (p if p.is_absolute() else path.parent / p).resolve()
        if not p.is_file():
            raise DataError(f"{where}: image {p} does not exist; fix the path (relative paths are relative to the "
                            "CSV's folder)")
        if str(p) in seen:
            raise DataError(f"{where}: image {p} is already listed at row {seen[str(p)]}; list each image once")
        seen[str(p)] = line
        group = r[group_column].strip() if group_column else None
        if group_column and not group:
            raise DataError(f"{where}: empty {group_column}; fill the group column on every row")
        split = (r.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise DataError(f"{where}: split {split!r} is not one of train, val, test")
        targets = tuple(_cell(r[c], c, where) for c in label_columns)
        samples.append(MultiLabelSample(str(p), 0, split, targets=targets, group=group))
    return _with_combinations(samples, list(label_columns), "csv-multilabel")


def check_learnable(images: MultiLabelImages, where: str) -> None:
    """Every label column of a training set has graded 0 and 1 rows.

    Raises:
        DataError: names the column and the fix.
    """
    y = images.targets
    for j, c in enumerate(images.class_names):
        graded = y[:, j][~np.isnan(y[:, j])]
        if len(np.unique(graded)) < 2:
            raise DataError(f"{where}: column {c} has {len(graded)} graded rows, all "
                            f"{int(graded[0]) if len(graded) else '-'}; a label needs both 0 and 1 rows to be learned "
                            "(drop it from --label-columns)")


def _with_combinations(samples: list[MultiLabelSample], columns: list[str], layout: str) -> MultiLabelImages:
    keys = sorted({combination_key(s.targets) for s in samples})
    index = {k: i for i, k in enumerate(keys)}
    for s in samples:
        s.label = index[combination_key(s.targets)]
    return MultiLabelImages(samples, columns, layout, combinations=keys)


def stratification_labels(images: MultiLabelImages, k: int) -> np.ndarray:
    """The class that ``k``-fold stratification sees per image ``(N,)``: its label combination, with
    every combination held by fewer than ``k`` groups pooled into one "rare" class (merged into the
    largest class when the pool itself has fewer than ``k`` groups), so each class can be in every
    fold."""
    y, g = images.labels.copy(), _groups(images)
    rare = [c for c in np.unique(y) if len(np.unique(g[y == c])) < k]
    if rare:
        pool = np.isin(y, rare)
        y[pool] = -1
        if len(np.unique(g[pool])) < k:
            y[pool] = np.bincount(y[~pool]).argmax()
    return y


def _groups(images: MultiLabelImages) -> np.ndarray:
    return np.array([s.group if s.group is not None else s.path for s in images.samples])


def _one_fold(idx: np.ndarray, y: np.ndarray, g: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held) with about ``fraction`` held out, grouped and stratified."""
    k = max(2, int(round(1.0 / fraction)))
    n_groups = len(np.unique(g[idx]))
    k = min(k, n_groups)
    sgk = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    rest, held = next(sgk.split(idx, y[idx], g[idx]))
    return idx[rest], idx[held]


def grouped_split(images: MultiLabelImages, *, val_fraction: float, test_fraction: float, seed: int) -> None:
    """Assign ``train``/``val``/``test`` in place: groups (patients) kept whole, label combinations
    balanced as far as the groups allow (scikit-learn ``StratifiedGroupKFold``, shuffled with ``seed``;
    the held-out part is one fold of ``round(1 / fraction)``). Samples that already carry a split are
    left as they are.

    Raises:
        DataError: fewer than 3 groups.
    """
    if all(s.split is not None for s in images.samples):
        return
    g, y = _groups(images), images.labels
    if len(np.unique(g)) < 3:
        raise DataError(f"only {len(np.unique(g))} groups (patients); a train/val/test split needs at least 3")
    idx = np.arange(len(images.samples))
    rest, test = (idx, idx[:0]) if test_fraction == 0 else _one_fold(idx, y, g, test_fraction, seed)
    train, val = _one_fold(rest, y, g, val_fraction / (1 - test_fraction), seed)
    for name, part in (("train", train), ("val", val), ("test", test)):
        for i in part:
            images.samples[i].split = name


def write_multilabel_split(images: MultiLabelImages, path: Path) -> Path:
    """Write ``path,split,group,<label columns>`` (blank = not graded) to ``path`` atomically after
    :func:`~finetune_kit.tasks.classification.data.check_disjoint` (recorded in ``split_check.json``);
    :func:`read_multilabel_split` reads it back."""
    atomic_write_text(json.dumps(check_disjoint(images.samples), indent=2), Path(path).with_name("split_check.json"))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "split", "group", *images.class_names])
    for s in images.samples:
        w.writerow([s.path, s.split, s.group or s.path, *("" if math.isnan(t) else int(t) for t in s.targets)])
    return atomic_write_text(buf.getvalue(), path)


def read_multilabel_split(path: Path, label_columns: Sequence[str]) -> MultiLabelImages:
    """The run's ``split.csv`` written by :func:`write_multilabel_split` (split and groups kept)."""
    return read_multilabel_csv(path, label_columns, group_column="group")
