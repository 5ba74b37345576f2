"""The vectorised bootstrap AUROC equals scikit-learn's roc_auc_score on every resample (ties included)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from finetune_kit.tasks.classification.bootstrap import bootstrap_indices, resampled_auroc


def test_resampled_auroc_equals_sklearn_with_ties_and_missing_classes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40), 1)  # many ties
    p = np.stack([1 - s, s], axis=1)
    idx = bootstrap_indices(y, 300, seed=0)
    expected = np.array([roc_auc_score(y[i], s[i]) for i in idx])
    assert np.allclose(resampled_auroc(y, p, idx), expected, atol=1e-12)
    one_class = np.tile(np.flatnonzero(y == 1)[:5], (2, 1))  # resamples with positives only: undefined
    assert np.isnan(resampled_auroc(y, p, one_class)).all()
