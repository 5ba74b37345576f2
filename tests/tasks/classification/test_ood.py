"""Out-of-distribution flags on real images: ACRIMA optic-disc crops (in distribution) against
Kodak and natural photographs, through the real MobileNetV2 ImageNet features."""
from __future__ import annotations

import numpy as np
import torch

from finetune_kit.tasks.classification.ood import MahalanobisOOD, detection_auroc, fit_ood, predict_with_features


def _features(model, tf, paths):
    from finetune_kit.tasks.classification.transforms import CachedImageDataset, ImageCache, normalize_batch

    cache = ImageCache(tf.cache_size)
    cache.load(paths)
    dl = torch.utils.data.DataLoader(CachedImageDataset(cache, paths, [0] * len(paths), tf.eval), batch_size=32)
    model.eval()
    return predict_with_features(model, dl, lambda x: normalize_batch(x, tf.mean, tf.std))[1]


def test_mahalanobis_flags_non_fundus_images(acrima_dir, kodak_dir, photos_train_dir, mobilenetv2_weights, tmp_path):
    from finetune_kit.tasks.classification.model import build_model
    from finetune_kit.tasks.classification.transforms import build_transforms

    torch.set_num_threads(1)
    files = sorted(str(p) for p in acrima_dir.iterdir() if p.suffix.lower() == ".jpg")
    rng = np.random.default_rng(0)
    pick = [files[i] for i in rng.permutation(len(files))[:150]]
    train, val, test = pick[:90], pick[90:115], pick[115:]
    labels = np.array(["_g_" in p for p in train], dtype=int)
    ood = sorted(str(p) for d in (kodak_dir, photos_train_dir) for p in d.iterdir() if p.suffix.lower() == ".png")
    model, _ = build_model("mobilenetv2_100", 2, custom_weights_path=str(mobilenetv2_weights), img_size=128)
    tf = build_transforms(model, 128, augment="none")
    ft, fv, fs, fo = (_features(model, tf, p) for p in (train, val, test, ood))
    det = fit_ood(ft, labels, fv)
    auroc = detection_auroc(det.score(fs), det.score(fo))
    assert auroc > 0.9, auroc
    _, in_dist = det.flags(fo)
    assert np.mean(~in_dist) > 0.8  # most non-fundus images flagged
    assert np.mean(~det.flags(fv)[1]) <= 0.1  # ~5 % of validation by construction
    det.save(tmp_path / "ood.npz")
    again = MahalanobisOOD.load(tmp_path / "ood.npz")
    assert np.allclose(again.score(fs), det.score(fs)) and MahalanobisOOD.load(tmp_path / "none.npz") is None
