"""The class-level part of a run's test report: per-class metrics (multi-class), the ordinal
kappa, the operating point and the confusion-matrix figure (:func:`class_report`), and an
operating point's thresholds applied to new probabilities (:func:`apply_operating_point`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay

from finetune_kit.tasks.classification.classes_config import parse_operating_point
from finetune_kit.tasks.classification.operating_point import OperatingPointError, operating_point_report
from finetune_kit.tasks.classification.per_class import ordinal_indices, ordinal_kappa, per_class_metrics

__all__ = ["class_report", "class_lines", "plot_confusion", "apply_operating_point", "check_class_options"]


def plot_confusion(labels, probs, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix of the argmax predictions with counts (rows: true class, columns: predicted),
    scikit-learn ``ConfusionMatrixDisplay``; saved to ``path`` (PNG)."""
    y, p = np.asarray(labels).astype(int), np.asarray(probs)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ConfusionMatrixDisplay.from_predictions(y, p.argmax(axis=1), labels=list(range(k)), display_labels=list(class_names),
                                            cmap="Blues", colorbar=False, ax=ax)
    ax.set_title(title or f"confusion matrix (test, n = {len(y)})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def class_report(out_dir: Path, *, val_labels, val_probs, test_labels, test_probs, class_names: Sequence[str],
                 ordinal_classes: str | None = None, operating_point: str | None = None, n_boot: int = 1000,
                 seed: int = 0, prefix: str = "", title: str = "") -> dict:
    """The class-level test report on calibrated probabilities ``(N, K)``.

    - ``per_class`` (K > 2): :func:`~finetune_kit.tasks.classification.per_class.per_class_metrics`;
      and ``confusion.png`` (counts) in ``out_dir``, for every K.
    - ``ordinal_kappa`` with ``ordinal_classes``: :func:`~finetune_kit.tasks.classification.per_class.ordinal_kappa`.
    - ``operating_point`` with ``operating_point`` (``"sensitivity=0.9"``): thresholds chosen on the
      validation probabilities, test metrics with intervals
      (:func:`~finetune_kit.tasks.classification.operating_point.operating_point_report`); with no
      validation images (``evaluate``) nothing is chosen here.

    Raises:
        OrdinalClassError, OperatingPointError: an unknown ordinal class, a class without validation images.
    """
    out: dict = {}
    yt, pt = np.asarray(test_labels), np.asarray(test_probs)
    if pt.shape[1] > 2 and len(yt):
        out["per_class"] = per_class_metrics(yt, pt, class_names, n_boot=n_boot, seed=seed)
    if ordinal_classes and len(yt):
        out["ordinal_kappa"] = ordinal_kappa(yt, pt, class_names, ordinal_classes, n_boot=n_boot, seed=seed)
    if operating_point and len(val_labels):
        kind, target = parse_operating_point(operating_point)
        out["operating_point"] = operating_point_report(val_labels, val_probs, yt, pt, class_names, kind, target,
                                                        n_boot=n_boot, seed=seed)
    if len(yt):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        plot_confusion(yt, pt, class_names, Path(out_dir) / f"{prefix}confusion.png", title=title)
    return out


def apply_operating_point(probs, class_names: Sequence[str], operating_point: dict) -> dict[str, np.ndarray]:
    """Decisions at a run's operating point (``metrics.json`` ``operating_point``): for each class
    with a threshold, ``probs[:, c] >= threshold`` as an ``(N,)`` bool array, keyed by class name."""
    p = np.asarray(probs)
    return {name: p[:, list(class_names).index(name)] >= row["threshold"]
            for name, row in operating_point["classes"].items()}


def check_class_options(classes_cfg, class_names: Sequence[str], val_labels) -> None:
    """Fail before training on class options the data cannot serve: ``--ordinal-classes`` naming
    an unknown class, and ``--operating-point`` with a class that has no validation image (or
    only validation images of one class).

    Raises:
        OrdinalClassError, OperatingPointError: one line naming the class and the fix.
    """
    if classes_cfg.ordinal_classes:
        ordinal_indices(classes_cfg.ordinal_classes, class_names)
    if classes_cfg.operating_point:
        y = np.asarray(val_labels).astype(int)
        classes = [1] if len(class_names) == 2 else range(len(class_names))
        for c in classes:
            if not np.any(y == c) or np.all(y == c):
                raise OperatingPointError(f"--operating-point {classes_cfg.operating_point}: class {class_names[c]!r} "
                                          f"has {int(np.sum(y == c))} of {len(y)} validation images; the threshold is "
                                          "chosen on validation, so every class needs validation examples (raise "
                                          "--val-fraction or add images of it)")


def class_lines(test: dict) -> list[str]:
    """Console lines of the class-level report in ``test`` (``metrics.json`` ``test``): per-class
    AUROC with the macro average, the ordinal kappa, and the operating point's test sensitivity,
    specificity, PPV and NPV per class with 95 % CIs."""
    f = lambda d: f"{d['value']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]" if d.get("ci95") else f"{d['value']:.3f}"  # noqa: E731
    lines = []
    pc = test.get("per_class")
    if pc:
        per = "  ".join(f"{c} {row['auroc']['value']:.3f}" for c, row in pc["classes"].items())
        lines.append(f"per-class AUROC: {per}  (macro {f(pc['macro']['auroc'])})")
    if test.get("ordinal_kappa"):
        k = test["ordinal_kappa"]
        lines.append(f"quadratic weighted kappa over {','.join(k['classes'])} (n = {k['n']}): {f(k)}")
    op = test.get("operating_point")
    if op:
        lines.append(f"operating point {op['kind']}={op['target']:g} (thresholds chosen on validation), test:")
        for c, row in op["classes"].items():
            lines.append(f"  {c}: threshold {row['threshold']:.4f}  " + "  ".join(
                f"{m} {f(v)}" for m, v in row["test"].items()))
    return lines
