"""Stratified (patient-grouped) K-fold splits: the test fold rotates, validation is carved from the rest.

Fundus sets often hold both eyes of one patient (``1234_left.jpg`` / ``1234_right.jpg``); a random
split then puts the same patient in training and test. :func:`group_ids` reads a patient id per
image (``--group-regex`` on the file name, or a ``group`` column of a CSV) and
:func:`fold_splits` uses scikit-learn's ``StratifiedGroupKFold`` twice (test folds, then one
validation fold of the rest), so no group ever spans two splits of one fold. Without groups every
image is its own group (plain stratified K-fold).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.tasks.classification.data import read_csv_table

__all__ = ["group_ids", "fold_splits", "write_fold_csv", "GroupError", "grouped_split"]


class GroupError(ValueError):
    """A patient id could not be read for an image; the message names the file and the fix."""


def _group_regex_mismatch(regex: str, name: str) -> str:
    """The one-line error for a ``--group-regex`` that does not match the file name ``name``: the fix
    never repeats the regex that failed, and names the way out for data without patient ids."""
    example = "'^(\\d+)_' for 1234_left.jpg" if regex != r"^(\d+)_" else "'^([A-Za-z]+\\d+)' for P017_left.jpg"
    return (f"--group-regex {regex!r} does not match {name}; give a regex whose first group is the patient id in "
            f"every file name (e.g. {example}), or a CSV with a group column; data without patient ids "
            "(e.g. ACRIMA): leave --group-regex out, each image is then its own group")


def group_ids(paths: Sequence[str], *, regex: str | None = None, csv_path: str | Path | None = None,
              column: str | None = None, path_column: str = "path") -> list[str]:
    """One group (patient) id per image path.

    Args:
        paths: absolute image paths.
        regex: searched in each file name (not the folder); its first capture group, else the whole
            match, is the id (``^(\\d+)_`` gives ``1234`` for ``1234_left.jpg``).
        csv_path: a CSV of ``path,label[,split],group`` (``--data labels.csv``); its ``group`` column
            is used when present (relative paths relative to the CSV).
        column: the CSV's patient-id column (``--group-column``, e.g. ``patient_id``); it must exist.
            Default: ``group`` when the CSV has one. path_column: the CSV's path column (``--path-column``).

    Returns:
        ids in the order of ``paths``; each image its own group when neither is given.

    Raises:
        GroupError: a bad regex, a file name it does not match, or a CSV row without a group.
    """
    if regex:
        try:
            rx = re.compile(regex)
        except re.error as exc:
            raise GroupError(f"--group-regex {regex!r}: not a valid regular expression ({exc})") from None
        out = []
        for p in paths:
            m = rx.search(Path(p).name)
            if m is None:
                raise GroupError(_group_regex_mismatch(regex, Path(p).name))
            out.append(m.group(1) if m.groups() else m.group(0))
        return out
    if csv_path is not None and str(csv_path).lower().endswith(".csv"):
        base = Path(csv_path).parent
        rows = read_csv_table(csv_path, {"--group-column": column} if column else None)
        name = column or "group"
        if rows and name in rows[0]:
            by_path = {}
            for i, r in enumerate(rows, start=2):
                g = (r.get(name) or "").strip()
                if not g:
                    raise GroupError(f"{csv_path}:{i}: empty {name}; fill the {name} column on every row or drop it")
                p = Path(r[path_column].strip())
                by_path[str((p if p.is_absolute() else base / p).resolve())] = g
            return [by_path.get(str(Path(p).resolve()), str(p)) for p in paths]
    return [str(p) for p in paths]


def fold_splits(labels: Sequence[int], groups: Sequence[str], k: int, *, val_fraction: float = 0.15,
                seed: int = 0) -> list[np.ndarray]:
    """Split names per image for each of ``k`` folds: fold ``i`` holds out test fold ``i`` of a
    ``StratifiedGroupKFold(k, shuffle=True, random_state=seed)``, and validation is one fold of a
    second ``StratifiedGroupKFold`` of the rest with ``round(1 / val_fraction')`` folds, where
    ``val_fraction' = val_fraction * k / (k - 1)`` (the share of the non-test images).

    Args:
        labels: ``(N,)`` class indices. groups: ``(N,)`` group ids (:func:`group_ids`).
        k: folds, >= 2. val_fraction: share of all images for validation (default 0.15).
        seed: shuffling seed.

    Returns:
        ``k`` arrays of shape ``(N,)`` with values ``"train"``, ``"val"``, ``"test"``; every image is
        ``"test"`` in exactly one fold, and no group is in two splits of one fold.

    Raises:
        ValueError: ``k < 2``, fewer groups of a class than ``k``, or mismatched lengths.
    """

    y, g = np.asarray(labels), np.asarray(groups)
    if k < 2 or len(y) != len(g):
        raise ValueError(f"--folds {k}: needs k >= 2 and one group per image (got {len(y)} labels, {len(g)} groups)")
    for c in np.unique(y):
        if len(np.unique(g[y == c])) < k:
            raise ValueError(f"--folds {k}: class {c} has only {len(np.unique(g[y == c]))} patients/images; use "
                             "fewer folds")
    outer = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    n_val = max(2, round(1.0 / min(0.5, val_fraction * k / (k - 1))))
    out = []
    for i, (rest, test) in enumerate(outer.split(np.zeros(len(y)), y, g)):
        names = np.full(len(y), "train", dtype=object)
        names[test] = "test"
        inner = StratifiedGroupKFold(n_splits=n_val, shuffle=True, random_state=seed + 1 + i)
        _, val = next(inner.split(np.zeros(len(rest)), y[rest], g[rest]))
        names[rest[val]] = "val"
        out.append(names)
    return out


def write_fold_csv(paths: Sequence[str], class_names: Sequence[str], labels: Sequence[int], splits: Sequence[str],
                   groups: Sequence[str], out: str | Path) -> Path:
    """Write one fold as a ``path,label,split,group`` CSV (``--data`` reads it, split as given), atomically."""

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "split", "group"])
    for p, y, s, g in zip(paths, labels, splits, groups):
        w.writerow([p, class_names[int(y)], s, g])
    return atomic_write_text(buf.getvalue(), Path(out))


def grouped_split(images, groups: Sequence[str], *, val_fraction: float, test_fraction: float, seed: int) -> None:
    """Assign ``train``/``val``/``test`` in place (``images``: a ``LabelledImages``) with no group in
    two splits: fold 1 of :func:`fold_splits` with ``k = round(1 / test_fraction)`` folds (test is
    about ``test_fraction`` of the images), validation carved from the rest. Samples that already
    carry a split (a CSV ``split`` column) are left as they are.

    Raises:
        ValueError: ``test_fraction`` 0 (nothing to hold out by group), or a class with fewer groups than folds.
    """
    if all(s.split is not None for s in images.samples):
        return
    if not test_fraction:
        raise ValueError("--group-column with --test-fraction 0: a grouped split needs a test share; give "
                         "--test-fraction 0.2 or drop --group-column")
    k = max(2, round(1.0 / test_fraction))
    names = fold_splits(images.labels, groups, k, val_fraction=val_fraction, seed=seed)[0]
    for s, name in zip(images.samples, names):
        s.split = str(name)
