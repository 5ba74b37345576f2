"""The multi-label parts of building a run (``--task multilabel``), called from
:mod:`~finetune_kit.tasks.classification.setup`: reading the CSV (or a resumed run's ``split.csv``),
the grouped split, the masked loss, and mixup/cutmix.

Mixup and CutMix are turned OFF for multi-label runs, with a logged warning: timm's ``Mixup``
mixes one-hot class targets, and a mixed pair of images where one label is not graded has no
correct mixed target (the blank cannot be mixed with a 0 or a 1 without inventing a label).
"""
from __future__ import annotations

from pathlib import Path

from finetune_kit.runs.run_dir import RunDir
from finetune_kit.tasks.classification.data import DataError
from finetune_kit.tasks.classification.multilabel_data import (MultiLabelImages, check_learnable, grouped_split, read_multilabel_csv,
                                                               read_multilabel_split, targets_of,
                                                               write_multilabel_split)
from finetune_kit.tasks.classification.multilabel_loss import multilabel_criterion

__all__ = ["read_multilabel_images", "split_multilabel", "multilabel_criterion_and_mixup", "write_run_split"]


def read_multilabel_images(cfg, resume: bool) -> MultiLabelImages:
    """The run's multi-label images: a resumed run's ``split.csv``, else ``--data`` (a CSV).

    Raises:
        DataError: ``--data`` is not a CSV file, a bad CSV (see
            :func:`~finetune_kit.tasks.classification.multilabel_data.read_multilabel_csv`), or a label
            column without graded 0 and 1 rows.
    """
    if resume:
        return read_multilabel_split(RunDir(cfg.output.run_dir).path / "split.csv", cfg.data.label_columns)
    if not Path(cfg.data.data).is_file():
        raise DataError(f"--data {cfg.data.data}: --task multilabel reads a CSV of path plus the --label-columns "
                        "(0, 1 or blank); pass such a CSV, e.g. ../shared/data/fundus-dr/labels.csv")
    images = read_multilabel_csv(cfg.data.data, cfg.data.label_columns, group_column=cfg.data.group_column)
    check_learnable(images, cfg.data.data)
    return images


def split_multilabel(cfg, images: MultiLabelImages) -> None:
    """Train/val/test by patient (``--group-column``), label combinations balanced
    (:func:`~finetune_kit.tasks.classification.multilabel_data.grouped_split`)."""
    grouped_split(images, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
                  seed=cfg.data.split_seed)


def multilabel_criterion_and_mixup(cfg, train_samples, console):
    """``(criterion, None)``: the masked loss of ``--loss``/``--class-weights`` on the training
    targets, and no mixup (a warning is printed when ``--mixup``/``--cutmix`` was asked for)."""
    if cfg.transforms.mixup > 0 or cfg.transforms.cutmix > 0:
        console.print("[yellow]--mixup/--cutmix are off for --task multilabel: a mixed pair with an ungraded label "
                      "has no correct target[/]")
    return multilabel_criterion(cfg, targets_of(train_samples)), None


def write_run_split(images, path: Path, default_writer) -> Path:
    """Write the run's ``split.csv``: multi-label images with their targets and groups
    (:func:`~finetune_kit.tasks.classification.multilabel_data.write_multilabel_split`), others
    with ``default_writer``."""
    if isinstance(images, MultiLabelImages):
        return write_multilabel_split(images, path)
    return default_writer(images, path)
