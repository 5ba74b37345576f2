"""Labelled image lists from three layouts, stratified seeded splits, and decoding checks.

Layouts (``DataConfig.layout``):

- ``imagefolder``: ``DATA/<class>/*.jpg`` (class names sorted; sub-folders searched recursively).
  With exactly the two classes ``normal``/``glaucoma`` (any case) glaucoma is class 1.
- ``csv``: a CSV with columns ``path,label`` and optionally ``split`` (``train``/``val``/``test``);
  relative paths are relative to the CSV's folder. Other column names are given with
  ``--path-column`` / ``--label-column`` (and ``--group-column`` for the patient id);
  :func:`read_csv_table` is the one reader.
- ``regex``: a flat folder whose file names carry the label; a file whose name matches
  ``label_regex`` (``re.search``) is the positive class. Preset ``acrima``: ``_g_`` = glaucoma.

Extensions are matched case-insensitively (ACRIMA has ``.JPG``).

Integrity checks (:func:`check_integrity`, run by :func:`discover`): the same image (resolved
path) listed twice, with the same or contradictory labels, is an error listing the rows; so are
class names that differ only in case (``Normal`` / ``normal``) and, in a CSV that holds the
declared ``--negative_class`` / ``--positive_class``, any other label. :func:`write_split`
checks the split is disjoint (no image in two of train/val/test) and records the check in
``RUN/split_check.json``.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.tasks.classification.config import DataConfig
from finetune_kit.tasks.classification.synthetic import ensure_synthetic_dataset

__all__ = ["Sample", "LabelledImages", "DataError", "LABEL_PRESETS", "discover", "read_csv_table", "stratified_split",
           "write_split", "read_split", "list_images", "check_integrity", "check_disjoint"]

LABEL_PRESETS = {"acrima": r"_g_"}
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Bad data input; the message names the path and the fix."""


@dataclass
class Sample:
    """One labelled image: ``path`` (absolute), ``label`` (class index) and optional ``split``."""

    path: str
    label: int
    split: str | None = None


@dataclass
class LabelledImages:
    """Samples plus class names (``class_names[label]``) and where they came from."""

    samples: list[Sample]
    class_names: list[str]
    layout: str
    skipped: list[str] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """Labels as an int64 array of shape ``(N,)``."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def subset(self, split: str) -> list[Sample]:
        """Samples of ``split`` (``train``/``val``/``test``)."""
        return [s for s in self.samples if s.split == split]


def list_images(folder: Path, extensions: Sequence[str], recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` whose extension is in ``extensions`` (case-insensitive), sorted."""
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


def _order_classes(names: list[str]) -> list[str]:
    low = [n.lower() for n in names]
    if sorted(low) == ["glaucoma", "normal"]:
        return sorted(names, key=lambda n: 0 if n.lower() == "normal" else 1)  # normal=0, glaucoma=1
    return sorted(names)


def _from_imagefolder(root: Path, cfg: DataConfig) -> LabelledImages:
    classes = [d.name for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
               and list_images(d, cfg.extensions)]
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class sub-folder(s) with images; the ImageFolder layout needs "
                        "one sub-folder per class (e.g. normal/, glaucoma/), or pass --label_preset acrima / "
                        "--label_regex for a flat folder, or a CSV of path,label")
    classes = _order_classes(classes)
    samples = [Sample(str(p.resolve()), i, None) for i, c in enumerate(classes) for p in list_images(root / c, cfg.extensions)]
    return LabelledImages(samples, classes, "imagefolder")


def _from_regex(root: Path, cfg: DataConfig) -> LabelledImages:
    pattern = cfg.label_regex or LABEL_PRESETS[cfg.label_preset or "acrima"]
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--label_regex {pattern!r} is not a valid regular expression ({exc}); e.g. '_g_'") from None
    files = list_images(root, cfg.extensions, recursive=False)
    if not files:
        raise DataError(f"{root}: no images with extensions {', '.join(cfg.extensions)} (case-insensitive); "
                        "check --data or --extensions")
    classes = [cfg.negative_class, cfg.positive_class]
    samples = [Sample(str(p.resolve()), int(bool(rx.search(p.name))), None) for p in files]
    counts = np.bincount([s.label for s in samples], minlength=2)
    if counts.min() == 0:
        raise DataError(f"{root}: the file-name rule {pattern!r} puts all {len(files)} images in one class "
                        f"({classes[int(counts.argmax())]}); check --label_regex / --label_preset")
    return LabelledImages(samples, classes, "regex")


#: label cells that mean "no label" (an empty cell, or what pandas and spreadsheets write for one)
MISSING_LABELS = ("", "nan", "na", "n/a", "null", "none")


def read_csv_table(path: str | Path, columns: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The rows of a CSV as dicts (cells stripped of ``None``; a UTF-8 byte-order mark ignored),
    after checking that every column of ``columns`` exists.

    Args:
        path: the CSV file. columns: ``{option: column}``, e.g. ``{"--label-column": "label"}``;
            the option names the fix in the error.

    Returns:
        one ``{column: cell}`` dict per data row (cells are strings, ``""`` when empty).

    Raises:
        DataError: not UTF-8, no rows, or a named column missing (one line listing the CSV's columns
            and the option to change).
    """
    path = Path(path)
    try:  # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = [{k: (v or "") for k, v in r.items() if k is not None} for r in reader]
            header = list(reader.fieldnames or [])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV") from None
    if not rows:
        raise DataError(f"{path}: the CSV has no rows; a CSV needs a header with columns path,label and one row "
                        "per image")
    for option, column in (columns or {}).items():
        if column not in header:
            raise DataError(f"{path}: no column {column!r} ({option}); a CSV needs a header with columns path,label "
                            f"or its own names given with --path-column/--label-column; it has the columns "
                            f"{', '.join(header)}: pass one of them with {option}")
    return rows


def _from_csv(path: Path, cfg: DataConfig) -> LabelledImages:
    pc, lc = cfg.path_column, cfg.label_column
    rows = read_csv_table(path, {"--path-column": pc, "--label-column": lc})
    rows = [{**r, "path": r[pc], "label": r[lc]} for r in rows]
    labels = [r["label"].strip() for r in rows]
    unlabelled = [i for i, lab in enumerate(labels) if lab.lower() in MISSING_LABELS]
    if unlabelled:
        raise DataError(f"{path}: {len(unlabelled)} rows have no label (empty or NaN; rows "
                        f"{', '.join(str(i + 2) for i in unlabelled[:6])}{' ...' if len(unlabelled) > 6 else ''}); "
                        "label them or delete those rows")
    no_path = [i for i, r in enumerate(rows) if not r["path"].strip()]
    if no_path:
        raise DataError(f"{path}: {len(no_path)} rows have an empty path (rows "
                        f"{', '.join(str(i + 2) for i in no_path[:6])}); fill them or delete those rows")
    _check_label_spelling(path, labels, cfg)
    classes = _order_classes(sorted(set(labels)))
    if len(classes) < 2:
        raise DataError(f"{path}: only one label ({classes}) in the CSV; a classifier needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for line, r in enumerate(rows, start=2):
        p = Path(r["path"].strip())
        p = p if p.is_absolute() else (path.parent / p)
        split = (r.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise DataError(f"{path}:{line}: split {split!r} is not one of train, val, test")
        if not p.is_file():
            raise DataError(f"{path}:{line}: image {p} does not exist; fix the path (relative paths are relative "
                            "to the CSV's folder)")
        samples.append(Sample(str(p.resolve()), index[r["label"].strip()], split))
    _check_duplicates(samples, [f"{path}:{i}" for i in range(2, len(rows) + 2)], classes)
    with_split = sum(s.split is not None for s in samples)
    if 0 < with_split < len(samples):
        raise DataError(f"{path}: {len(samples) - with_split} rows have no split while others do; fill the split "
                        "column for every row or leave it empty everywhere")
    return LabelledImages(samples, classes, "csv")


def _check_label_spelling(path: Path, labels: list[str], cfg: DataConfig) -> None:
    """Case variants of one class name, and labels outside the declared pair, are errors."""
    by_low: dict[str, list[str]] = {}
    for lab in labels:
        by_low.setdefault(lab.lower(), [])
        if lab not in by_low[lab.lower()]:
            by_low[lab.lower()].append(lab)
    variants = {k: v for k, v in by_low.items() if len(v) > 1}
    if variants:
        parts = []
        for spellings in variants.values():
            rows = [i + 2 for i, lab in enumerate(labels) if lab in spellings[1:]]
            parts.append(f"{' / '.join(map(repr, spellings))} (rows {', '.join(map(str, rows[:6]))}"
                         f"{' ...' if len(rows) > 6 else ''})")
        raise DataError(f"{path}: class names that differ only in case: {'; '.join(parts)}; write each class "
                        "with one spelling")
    declared = {cfg.negative_class.lower(), cfg.positive_class.lower()}
    if declared <= set(by_low):
        extra = [i for i, lab in enumerate(labels) if lab.lower() not in declared]
        if extra:
            names = sorted({labels[i] for i in extra})
            raise DataError(f"{path}: {len(extra)} rows have a label outside the declared classes "
                            f"{cfg.negative_class!r}/{cfg.positive_class!r}: {', '.join(map(repr, names))} (rows "
                            f"{', '.join(str(i + 2) for i in extra[:6])}{' ...' if len(extra) > 6 else ''}); fix "
                            "them or delete those rows")


def _check_duplicates(samples: list[Sample], where: list[str], class_names: list[str]) -> None:
    """The same image (resolved path) twice is an error listing the rows (contradictory labels named)."""
    seen: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        seen.setdefault(s.path, []).append(i)
    dups = {p: idx for p, idx in seen.items() if len(idx) > 1}
    if not dups:
        return
    contradictory = {p: idx for p, idx in dups.items() if len({samples[i].label for i in idx}) > 1}
    p, idx = next(iter((contradictory or dups).items()))
    labels = ", ".join(f"{where[i]} {class_names[samples[i].label]}" for i in idx[:4])
    kind = (f"{len(contradictory)} with contradictory labels" if contradictory else "same labels")
    raise DataError(f"{len(dups)} images listed more than once ({kind}), e.g. {p} at {labels}; list each image "
                    "once with one label (a duplicate could land in both train and test)")


def check_integrity(images: LabelledImages, cfg: DataConfig | None = None) -> None:
    """Duplicate images and case-variant class names in any layout (see the module docstring).

    Raises:
        DataError: names the offending images/classes and the fix.
    """
    low: dict[str, list[str]] = {}
    for c in images.class_names:
        low.setdefault(c.lower(), []).append(c)
    variants = [v for v in low.values() if len(v) > 1]
    if variants:
        raise DataError(f"class names that differ only in case: {'; '.join(' / '.join(v) for v in variants)}; "
                        "merge them into one class folder (or label) with one spelling")
    _check_duplicates(images.samples, [s.path for s in images.samples], images.class_names)


def check_disjoint(samples: Sequence[Sample]) -> dict:
    """Check that no image (resolved path) is in two of train/val/test.

    Returns:
        ``{"disjoint": True, "images": {"train": n, "val": n, "test": n}, "overlap": 0, "key": "resolved path"}``.

    Raises:
        DataError: an image in two splits (names it).
    """
    where: dict[str, set] = {}
    for s in samples:
        where.setdefault(str(Path(s.path).resolve()), set()).add(s.split)
    overlap = {p: sp for p, sp in where.items() if len(sp) > 1}
    if overlap:
        p, sp = next(iter(overlap.items()))
        raise DataError(f"the split is not disjoint: {len(overlap)} images are in more than one split, e.g. {p} in "
                        f"{' and '.join(sorted(map(str, sp)))}; list each image once")
    counts = {k: sum(s.split == k for s in samples) for k in SPLITS}
    return {"disjoint": True, "images": counts, "overlap": 0, "key": "resolved path"}


def discover(cfg: DataConfig) -> LabelledImages:
    """Find the labelled images described by ``cfg`` (no decoding yet).

    Returns:
        :class:`LabelledImages` with absolute paths; ``split`` set only when a CSV gives it.

    Raises:
        DataError: missing folder/CSV, no images, a single class, bad CSV rows or regex, an image
            listed twice, case-variant class names, labels outside the declared classes.
    """
    if cfg.data == "synthetic":
        root = ensure_synthetic_dataset(size=cfg.synthetic_size)
        return _from_imagefolder(root, cfg)
    root = Path(cfg.data).expanduser()
    if not root.exists():
        raise DataError(f"--data {root}: no such folder or CSV file; pass a folder of images (class sub-folders, "
                        "or flat with --label_preset acrima) or a CSV of path,label")
    layout = cfg.layout
    if layout == "auto":
        if root.is_file():
            layout = "csv"
        elif cfg.label_regex or cfg.label_preset:
            layout = "regex"
        elif any(d.is_dir() for d in root.iterdir()):
            layout = "imagefolder"
        else:
            raise DataError(f"--data {root}: a flat folder without class sub-folders; say how labels are given with "
                            "--label_preset acrima or --label_regex REGEX (matching files are the positive class)")
    if layout == "csv":
        if not root.is_file():
            raise DataError(f"--data {root}: --layout csv needs a CSV file of path,label[,split]")
        images = _from_csv(root, cfg)
    elif not root.is_dir():
        raise DataError(f"--data {root}: layout {layout} needs a folder; pass a CSV only with the csv layout")
    else:
        images = _from_regex(root, cfg) if layout == "regex" else _from_imagefolder(root, cfg)
    check_integrity(images, cfg)
    return images


def stratified_split(images: LabelledImages, *, val_fraction: float, test_fraction: float, seed: int) -> None:
    """Assign ``train``/``val``/``test`` in place, stratified by label, reproducible from ``seed``.

    Samples that already carry a split (CSV ``split`` column) are left as they are.

    Raises:
        DataError: a class too small to appear in every split.
    """

    if all(s.split is not None for s in images.samples):
        return
    idx = np.arange(len(images.samples))
    y = images.labels
    counts = np.bincount(y)
    if counts[counts > 0].min() < 3:
        raise DataError(f"class {images.class_names[int(np.argmin(np.where(counts > 0, counts, 1 << 30)))]!r} has fewer "
                        "than 3 images; a stratified train/val/test split needs at least 3 per class")
    rest, test = (idx, np.array([], dtype=int)) if test_fraction == 0 else train_test_split(
        idx, test_size=test_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest],
                                  random_state=seed)
    for name, part in (("train", train), ("val", val), ("test", test)):
        for i in part:
            images.samples[i].split = name


def write_split(images: LabelledImages, path: Path) -> Path:
    """Write ``path,label,class,split`` rows (the split used by the run) to ``path`` atomically,
    after checking it is disjoint (:func:`check_disjoint`); the check goes to ``split_check.json``
    beside it.

    Raises:
        DataError: an image in two splits (nothing is written).
    """


    check = check_disjoint(images.samples)
    atomic_write_text(json.dumps(check, indent=2), Path(path).with_name("split_check.json"))

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "class", "split"])
    for s in images.samples:
        w.writerow([s.path, s.label, images.class_names[s.label], s.split])
    return atomic_write_text(buf.getvalue(), path)


def read_split(path: Path) -> tuple[list[Sample], list[str]]:
    """Read a split file written by :func:`write_split`: (samples, class names in label order)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    names: dict[int, str] = {int(r["label"]): r["class"] for r in rows}
    return [Sample(r["path"], int(r["label"]), r["split"] or None) for r in rows], [names[i] for i in sorted(names)]
