"""K-class data done properly, on real fundus photographs (``../shared/data/fundus-dr``: normal, dme,
npdr, pdr; ``labels.csv`` with ``patient_id``): CSV column mapping, grouped folds, per-class metrics
against scikit-learn, the ordinal kappa, the operating point, class weights / focal loss / the
balanced sampler, predict and evaluate, and an interrupted K-class run resumed."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_score, recall_score, roc_auc_score

from finetune_kit.calibration import Calibrator
from finetune_kit.tasks.classification.config import DataConfig
from finetune_kit.tasks.classification.data import DataError, discover
from finetune_kit.tasks.classification.folds import fold_splits, group_ids
from finetune_kit.tasks.classification.imbalance import WeightedSoftmaxLoss, class_weight_vector
from finetune_kit.tasks.classification.operating_point import choose_threshold
from finetune_kit.tasks.classification.train import resume_config, run_training
from tests.tasks.classification.conftest import SHARED, small_config

FUNDUS = SHARED / "data" / "fundus-dr"
LABELS = FUNDUS / "labels.csv"
CLASSES = ["dme", "normal", "npdr", "pdr"]  # sorted: the class order of a CSV


def fundus_rows() -> list[dict]:
    if not LABELS.is_file():
        pytest.skip(f"fundus-dr not found at {FUNDUS} (real data lives in ../shared beside the repo; set "
                    "FINETUNE_KIT_SHARED); real-data tests skipped")
    with open(LABELS, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def subset_csv(tmp_path_factory) -> Path:
    """16 real images per class (whole patients), absolute paths, fundus-dr's own column names
    renamed (``file``, ``grade``, ``pid``) so the column options are needed."""
    rows, out = fundus_rows(), []
    for c in CLASSES:
        out += [r for r in rows if r["label"] == c][:16]
    path = tmp_path_factory.mktemp("fundus") / "subset.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "grade", "pid"])
        for r in out:
            w.writerow([str(FUNDUS / r["path"]), r["label"], r["patient_id"]])
    return path


@pytest.fixture(scope="module")
def probe_run(subset_csv, tmp_path_factory) -> Path:
    """A finished exact-linear-probe run on the subset (real MobileNetV2 weights, 64 px) with the
    ordinal kappa and an operating point at 90 % sensitivity."""
    weights = SHARED / "weights" / "mobilenetv2_100.in1k_int8dequant.pth"
    if not weights.is_file():
        pytest.skip(f"weights not found at {weights}")
    res = run_training(small_config(subset_csv, tmp_path_factory.mktemp("probe"), model_name="mobilenetv2_100",
                                    custom_weights_path=str(weights), ft_strategy="linear", path_column="file",
                                    label_column="grade", group_column="pid", ordinal_classes="normal,npdr,pdr",
                                    operating_point="sensitivity=0.9", class_weights="balanced"))
    assert res["status"] == "completed"
    return Path(res["run_dir"])


def _calibrated(run: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    m = json.loads((run / "metrics.json").read_text())
    z = np.load(run / "logits.npz")
    cal = Calibrator.from_dict(m["calibration"], m["temperature"])
    return z[f"{part}_labels"], cal.probs(z[f"{part}_logits"])


def test_csv_columns_are_named_by_options_and_an_unknown_one_lists_the_columns():
    fundus_rows()
    images = discover(DataConfig(data=str(LABELS)))
    assert images.class_names == CLASSES and len(images.samples) == 845
    with pytest.raises(DataError, match=r"no column 'grade' \(--label-column\).*path, label, patient_id, eye, DME"):
        discover(DataConfig(data=str(LABELS), label_column="grade"))


def test_grouped_folds_never_split_a_patient():
    rows = fundus_rows()
    images = discover(DataConfig(data=str(LABELS)))
    paths = [s.path for s in images.samples]
    groups = group_ids(paths, csv_path=str(LABELS), column="patient_id")
    truth = {str((FUNDUS / r["path"]).resolve()): r["patient_id"] for r in rows}
    assert groups == [truth[p] for p in paths] and len(set(groups)) == 524
    splits = fold_splits(images.labels, groups, 5, seed=0)
    tested = np.zeros(len(paths), int)
    for names in splits:
        by_patient: dict[str, set] = {}
        for g, s in zip(groups, names):
            by_patient.setdefault(g, set()).add(s)
        assert all(len(v) == 1 for v in by_patient.values())  # no patient in two splits of a fold
        tested += names == "test"
        assert set(np.asarray(images.labels)[names == "val"]) == {0, 1, 2, 3}  # every class validated
    assert (tested == 1).all()
    with pytest.raises(DataError, match="no column 'pid'"):
        group_ids(paths, csv_path=str(LABELS), column="pid")


def test_a_single_run_with_group_column_keeps_each_patient_in_one_split(probe_run, subset_csv):
    pid = {str(Path(r["file"]).resolve()): r["pid"] for r in csv.DictReader(open(subset_csv))}
    where: dict[str, set] = {}
    for r in csv.DictReader(open(probe_run / "split.csv")):
        where.setdefault(pid[r["path"]], set()).add(r["split"])
    assert all(len(v) == 1 for v in where.values()) and len(where) > 20


def test_per_class_metrics_equal_scikit_learn(probe_run):
    m = json.loads((probe_run / "metrics.json").read_text())
    y, p = _calibrated(probe_run, "test")
    pred = p.argmax(1)
    pc = m["test"]["per_class"]
    cm = confusion_matrix(y, pred, labels=range(4))
    recall = recall_score(y, pred, average=None, labels=range(4), zero_division=np.nan)
    precision = precision_score(y, pred, average=None, labels=range(4), zero_division=np.nan)
    for c, name in enumerate(CLASSES):
        row = pc["classes"][name]
        tn = cm.sum() - cm[c].sum() - cm[:, c].sum() + cm[c, c]
        assert row["auroc"]["value"] == pytest.approx(roc_auc_score(y == c, p[:, c]))
        assert row["sensitivity"]["value"] == pytest.approx(recall[c])
        assert row["ppv"]["value"] == pytest.approx(precision[c], nan_ok=True)
        assert row["specificity"]["value"] == pytest.approx(tn / (tn + cm[:, c].sum() - cm[c, c]))
        assert row["npv"]["value"] == pytest.approx(tn / (tn + cm[c].sum() - cm[c, c]))
        lo, hi = row["auroc"]["ci95"]
        assert lo <= row["auroc"]["value"] <= hi
    assert pc["macro"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert pc["weighted"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr",
                                                                          average="weighted"))
    spec = m["test"]["specificity_per_class"]  # metrics.json: real per-class values (softmax probabilities)
    assert m["test"]["specificity"] is not None and len(spec) == 4 and all(0 <= s <= 1 for s in spec)
    # kappa over the ordinal subset: true class in normal,npdr,pdr, prediction among them only
    order = [CLASSES.index(c) for c in ("normal", "npdr", "pdr")]
    keep = np.isin(y, order)
    yt = np.searchsorted(order, y[keep]) if order == sorted(order) else np.array([order.index(v) for v in y[keep]])
    kappa = cohen_kappa_score(yt, p[keep][:, order].argmax(1), weights="quadratic", labels=[0, 1, 2])
    assert m["test"]["ordinal_kappa"]["value"] == pytest.approx(kappa)
    assert m["test"]["ordinal_kappa"]["n"] == int(keep.sum())
    assert m["class_weights"] == pytest.approx(list(class_weight_vector("balanced", _train_labels(probe_run), 4)))
    assert json.loads((probe_run / "config.json").read_text())["classes"]["class_weights"] == "balanced"
    assert (probe_run / "confusion.png").is_file()


def _train_labels(run: Path) -> list[int]:
    with open(run / "split.csv", newline="") as fh:
        return [int(r["label"]) for r in csv.DictReader(fh) if r["split"] == "train"]


def test_operating_point_reproduces_the_requested_sensitivity_on_validation(probe_run):
    m = json.loads((probe_run / "metrics.json").read_text())
    y, p = _calibrated(probe_run, "val")
    op = m["test"]["operating_point"]
    assert op["kind"] == "sensitivity" and set(op["classes"]) == set(CLASSES)
    for c, name in enumerate(CLASSES):
        thr = op["classes"][name]["threshold"]
        pos = p[y == c, c]
        assert np.mean(pos >= thr) >= 0.9  # the requested sensitivity is met on validation
        higher = pos[pos > thr]
        if len(higher):  # and the next higher score would miss it: the most specific such threshold
            assert np.mean(pos >= higher.min()) < 0.9
        assert thr == choose_threshold(y == c, p[:, c], "sensitivity", 0.9)
        t = op["classes"][name]["test"]
        assert set(t) == {"sensitivity", "specificity", "ppv", "npv"} and all(len(v["ci95"]) == 2 for v in t.values())


def test_choose_threshold_for_specificity_on_real_scores(probe_run):
    y, p = _calibrated(probe_run, "test")
    for c in range(4):
        thr = choose_threshold(y == c, p[:, c], "specificity", 0.8)
        neg = p[y != c, c]
        assert np.mean(neg < thr) >= 0.8
        lower = neg[neg < thr]
        if len(lower):  # the most sensitive threshold meeting it
            assert np.mean(neg < lower.max()) < 0.8
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        choose_threshold(y == 0, p[:, 0], "sensitivity", 1.0)


def test_predict_and_evaluate_with_four_classes(probe_run, subset_csv):
    from finetune_kit.tasks.classification.evaluate import evaluate_run
    from finetune_kit.tasks.classification.predict import predict_images

    images = [str(FUNDUS / "pdr" / f) for f in sorted(p.name for p in (FUNDUS / "pdr").iterdir())[:3]]
    out = predict_images(probe_run, images)
    rows = list(csv.DictReader(open(out)))
    thr = json.loads((probe_run / "metrics.json").read_text())["test"]["operating_point"]["classes"]
    for r in rows:
        assert r["predicted"] in CLASSES and sum(float(r[f"p_{c}"]) for c in CLASSES) == pytest.approx(1, abs=1e-4)
        assert r["decision"] == ";".join(c for c in CLASSES if float(r[f"p_{c}"]) >= thr[c]["threshold"] - 1e-6)
        assert r["in_distribution"] in ("true", "false")
    res = evaluate_run(probe_run, DataConfig(data=str(subset_csv), path_column="file", label_column="grade"))
    assert set(res["metrics"]["per_class"]["classes"]) == set(CLASSES) and res["n_images"] == 64
    assert res["metrics"]["ordinal_kappa"]["n"] == 48 and "operating_point" in res["metrics"]


def test_weighted_focal_loss_against_torch_and_the_formula():
    torch.manual_seed(0)
    logits, y = torch.randn(12, 4), torch.tensor([0, 1, 2, 3] * 3)
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    ours = WeightedSoftmaxLoss(w)(logits, y)
    assert ours == pytest.approx(torch.nn.functional.cross_entropy(logits, y, weight=w).item(), rel=1e-6)
    onehot = torch.nn.functional.one_hot(y, 4).float()
    assert WeightedSoftmaxLoss(w, gamma=2.0)(logits, onehot) == pytest.approx(
        WeightedSoftmaxLoss(w, gamma=2.0)(logits, y).item(), rel=1e-6)
    p = logits.softmax(1)[torch.arange(12), y]
    focal = (-(w[y] * (1 - p) ** 2 * p.log()).sum() / w[y].sum()).item()  # Lin et al. 2017, eq. 5
    assert WeightedSoftmaxLoss(w, gamma=2.0)(logits, y) == pytest.approx(focal, rel=1e-6)
    assert class_weight_vector("balanced", [0, 0, 0, 1], 2) == pytest.approx([4 / 6, 4 / 2])
    with pytest.raises(ValueError, match="3 weights for 4 classes"):
        class_weight_vector("1.0,2.0,3.0", [0, 1, 2, 3], 4)


@pytest.mark.slow
def test_four_class_run_with_imbalance_options_resumes_to_the_uninterrupted_result(subset_csv, tmp_path):
    """Class weights, focal loss, the balanced sampler and mixup (soft targets) on 4 real classes:
    stopped after epoch 1 and resumed, the run equals the uninterrupted one."""
    kw = dict(ft_strategy="full", num_epochs=2, img_size=32, path_column="file", label_column="grade",
              class_weights="balanced", loss="focal", sampler="balanced", mixup=0.2, batch_size=8,
              operating_point="specificity=0.9", ood=False, measure_forgetting=False)
    full = run_training(small_config(subset_csv, tmp_path / "a", **kw))
    part = run_training(small_config(subset_csv, tmp_path / "b", stop_after_epoch=1, **kw))
    assert part["status"] == "interrupted"
    resumed = run_training(resume_config(Path(part["run_dir"])), resume=True)
    drop = {"epoch_time_s", "train_images_per_s"}
    hist = lambda r: [{k: v for k, v in json.loads(x).items() if k not in drop}  # noqa: E731
                      for x in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert hist(full) == hist(resumed) and len(hist(full)) == 2
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (NaN == NaN)
    assert same(full["test"], resumed["test"]) and full["class_weights"] == resumed["class_weights"]
    assert "per_class" in full["test"] and "operating_point" in full["test"]


def test_vectorised_bootstraps_equal_scikit_learn_per_resample(probe_run):
    from finetune_kit.tasks.classification.bootstrap import bootstrap_indices, resampled_auroc
    from finetune_kit.tasks.classification.per_class import quadratic_kappa

    y, p = _calibrated(probe_run, "test")
    idx = bootstrap_indices(y, 40, seed=3)
    expected = [roc_auc_score(y[i], p[i], multi_class="ovr", average="macro") for i in idx]
    assert np.allclose(resampled_auroc(y, p, idx), expected, atol=1e-12)
    a, b = y % 3, p[:, :3].argmax(1)
    kappas = [cohen_kappa_score(a[i], b[i], weights="quadratic", labels=[0, 1, 2]) for i in idx]
    assert np.allclose(quadratic_kappa(a, b, 3, idx), kappas, atol=1e-12)
