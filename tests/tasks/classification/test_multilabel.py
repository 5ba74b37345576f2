"""Multi-label runs with missing labels on real fundus-dr photographs (``--task multilabel``).

fundus-dr (``../shared/data/fundus-dr``) grades DME on every image but DR (NPDR, PDR) not on the
``dme`` images: those cells are blank. The tests check that a blank never acts as a negative --
in the loss, its gradient and the metrics -- by comparing with the same batch where the blanks
are filled with 0, and that a multi-label run survives an interruption and ``--resume``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from finetune_kit.tasks.classification.multilabel_data import grouped_split, read_multilabel_csv, targets_of
from finetune_kit.tasks.classification.multilabel_loss import MaskedMultiLabelLoss, balanced_pos_weight
from finetune_kit.tasks.classification.multilabel_metrics import choose_thresholds, graded, multilabel_metrics
from finetune_kit.tasks.classification.operating_point import choose_threshold
from tests.tasks.classification.conftest import SHARED, small_config

FUNDUS = SHARED / "data" / "fundus-dr"
LABELS = ("DME", "NPDR", "PDR")


@pytest.fixture(scope="module")
def fundus_csv(tmp_path_factory) -> Path:
    """The first 12 images of each fundus-dr class as a multi-label CSV (absolute paths)."""
    if not (FUNDUS / "labels.csv").is_file():
        pytest.skip(f"fundus-dr not found at {FUNDUS} (set FINETUNE_KIT_SHARED); real-data tests skipped")
    with open(FUNDUS / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for c in ("normal", "dme", "npdr", "pdr") for r in [r for r in rows if r["label"] == c][:12]]
    out = tmp_path_factory.mktemp("fundus") / "labels.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient_id", *LABELS])
        for r in keep:
            w.writerow([str(FUNDUS / r["path"]), r["patient_id"], *(r[c] for c in LABELS)])
    return out


@pytest.fixture(scope="module")
def real_batch(fundus_csv, weights_file):
    """Targets (48, 3) with NaN for blanks, and logits (48, 3) of the real MobileNetV2 at 96 px with
    a seeded head, so the scores carry real image content."""
    from finetune_kit.tasks.classification.model import build_model

    images = read_multilabel_csv(fundus_csv, LABELS, group_column="patient_id")
    torch.manual_seed(0)
    model, _ = build_model("mobilenetv2_100", 3, custom_weights_path=str(weights_file), img_size=96)
    model.eval()
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(s.path).convert("RGB").resize((96, 96)), np.float32))
                     .permute(2, 0, 1) / 255.0 for s in images.samples])
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        logits = model((x - mean) / std)
    return torch.from_numpy(images.targets), logits


def test_csv_blank_is_nan_never_zero(fundus_csv):
    images = read_multilabel_csv(fundus_csv, LABELS, group_column="patient_id")
    y = images.targets
    dme = [i for i, s in enumerate(images.samples) if "/dme/" in s.path]
    assert np.isnan(y[dme][:, 1:]).all() and (y[dme][:, 0] == 1).all()  # DR not graded on the dme images
    assert not np.isnan(y[[i for i in range(len(y)) if i not in dme]]).any()


@pytest.mark.parametrize("kind", ["bce", "focal"])
def test_blank_labels_never_contribute_to_the_loss(real_batch, kind):
    targets, logits = real_batch
    mask = ~torch.isnan(targets)
    assert (~mask).sum() == 24  # 12 dme images x (NPDR, PDR)
    z = logits.clone().requires_grad_(True)
    loss = MaskedMultiLabelLoss(kind)(z, targets)
    loss.backward()
    assert torch.all(z.grad[~mask] == 0) and torch.all(z.grad[mask] != 0)  # a blank sends no gradient
    filled = MaskedMultiLabelLoss(kind)(logits, torch.nan_to_num(targets, nan=0.0))
    assert abs(float(loss.detach()) - float(filled)) > 1e-3  # reading blanks as 0 would change the loss
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], targets[mask], reduction="none")
    if kind == "bce":  # the mean over the graded entries only
        assert float(loss) == pytest.approx(float(per.mean()), rel=1e-6)
    moved = logits.clone()
    moved[~mask] += 10.0  # any output on a blank entry leaves the loss unchanged
    assert float(MaskedMultiLabelLoss(kind)(moved, targets)) == pytest.approx(float(loss), rel=1e-6)


def test_balanced_pos_weight_counts_graded_entries_only(real_batch):
    targets, _ = real_batch
    w = balanced_pos_weight(targets.numpy())
    # NPDR graded on 36 images (12 npdr positive), not on the 12 dme ones: 24 / 12, not 36 / 12
    assert w[1] == pytest.approx(24 / 12)


def test_per_label_metrics_equal_sklearn_on_the_graded_subset(real_batch):
    targets, logits = real_batch
    t, p = targets.numpy().astype(np.float64), torch.sigmoid(logits).numpy().astype(np.float64)
    m = multilabel_metrics(t, p, [0.5] * 3, LABELS, logits=logits.numpy(), n_boot=50)
    for j, name in enumerate(LABELS):
        keep = ~np.isnan(t[:, j])
        assert m["labels"][name]["n_graded"] == keep.sum()
        assert m["labels"][name]["auroc"]["value"] == pytest.approx(roc_auc_score(t[keep, j], p[keep, j]))
        assert m["labels"][name]["ap"]["value"] == pytest.approx(average_precision_score(t[keep, j], p[keep, j]))
        lo, hi = m["labels"][name]["auroc"]["ci95"]
        assert lo <= hi
    filled = np.nan_to_num(t, nan=0.0)
    assert roc_auc_score(filled[:, 1], p[:, 1]) != pytest.approx(m["labels"]["NPDR"]["auroc"]["value"])
    keep = ~np.isnan(t)
    assert m["micro"]["auroc"]["value"] == pytest.approx(roc_auc_score(t[keep], p[keep]))


def test_operating_point_reproduces_the_sensitivity_on_validation(real_batch):
    targets, logits = real_batch
    y, s = graded(targets.numpy(), torch.sigmoid(logits).numpy(), 0)
    for target in (0.5, 0.75, 0.9):
        thr = choose_threshold(y, s, "sensitivity", target)
        sens = np.mean(s[y == 1] >= thr)
        assert sens >= target and np.mean(s[y == 1] > thr) < target or sens == 1.0
    thr = choose_thresholds(targets.numpy(), torch.sigmoid(logits).numpy(), ("specificity", 0.8))
    for j in range(3):
        y, s = graded(targets.numpy(), torch.sigmoid(logits).numpy(), j)
        assert np.mean(s[y == 0] < thr[j]) >= 0.8


def test_grouped_split_never_splits_a_patient():
    if not (FUNDUS / "labels.csv").is_file():
        pytest.skip(f"fundus-dr not found at {FUNDUS}")
    images = read_multilabel_csv(FUNDUS / "labels.csv", LABELS, group_column="patient_id")
    grouped_split(images, val_fraction=0.15, test_fraction=0.25, seed=0)
    where: dict[str, set] = {}
    for s in images.samples:
        where.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in where.values())
    for part in ("train", "val", "test"):  # every label has graded positives and negatives in every split
        y = targets_of(images.subset(part))
        for j in range(3):
            g = y[:, j][~np.isnan(y[:, j])]
            assert 0 < g.sum() < len(g), (part, LABELS[j])


@pytest.mark.slow
def test_multilabel_run_survives_interrupt_and_resume(fundus_csv, tmp_path):
    """A 2-epoch multi-label run stopped after epoch 1 and resumed reports what the uninterrupted
    run reports; predict then writes one probability and one decision per label."""
    from finetune_kit.tasks.classification.predict import predict_images
    from finetune_kit.tasks.classification.train import resume_config, run_training

    kw = dict(task="multilabel", label_columns="DME,NPDR,PDR", group_column="patient_id", ft_strategy="full",
              augment="fundus", mixup=0.2, class_weights="balanced", img_size=48)
    full = run_training(small_config(fundus_csv, tmp_path / "a", **kw))
    part = run_training(small_config(fundus_csv, tmp_path / "b", stop_after_epoch=1, **kw))
    assert part["status"] == "interrupted"
    resumed = run_training(resume_config(part["run_dir"]), resume=True)
    drop = {"epoch_time_s", "train_images_per_s"}
    ha, hb = ([{k: v for k, v in json.loads(x).items() if k not in drop}
               for x in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()] for r in (full, resumed))
    assert ha == hb and len(ha) == 2
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (NaN != NaN)
    assert same(full["test"], resumed["test"]) and full["thresholds"] == resumed["thresholds"]
    assert full["mixup"].startswith("off") and set(full["test"]["labels"]) == set(LABELS)
    out = predict_images(resumed["run_dir"], [FUNDUS / "pdr"])
    header = out.read_text().splitlines()[0].split(",")
    assert header[:7] == ["path", "p_DME", "p_NPDR", "p_PDR", "DME", "NPDR", "PDR"]


@pytest.mark.slow
def test_multilabel_folds_keep_patients_whole_and_summarise_per_label(fundus_csv, tmp_path):
    """``--folds 2 --group-column patient_id`` on a multi-label CSV: no patient in two splits of a
    fold, every image tested once, and the summary has AUROC/AP per label for the strategy and
    the logistic-regression reference."""
    from finetune_kit.tasks.classification.cross_validation import run_cross_validation

    base = small_config(fundus_csv, tmp_path, task="multilabel", label_columns="DME,NPDR,PDR",
                        group_column="patient_id", folds=2, img_size=48, ft_strategy="linear")
    out = run_cross_validation(base, ["linear"], tmp_path, n_boot=50)
    tested = []
    for f in sorted(Path(out["folder"]).glob("folds/fold_*.csv")):
        with open(f, newline="") as fh:
            rows = list(csv.DictReader(fh))
        where: dict[str, set] = {}
        for r in rows:
            where.setdefault(r["group"], set()).add(r["split"])
        assert all(len(v) == 1 for v in where.values())
        tested += [r["path"] for r in rows if r["split"] == "test"]
    assert sorted(tested) == sorted({*tested}) and len(tested) == 48
    row = out["summary"]["strategies"]["linear"]
    assert set(row) == set(LABELS) and len(row["PDR"]["auroc"]["folds"]) == 2
    assert "logreg (reference)" in out["summary"]["strategies"] and "| linear |" in out["markdown"]
