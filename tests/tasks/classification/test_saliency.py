"""Saliency maps: the Grad-CAM target layer comes from the layer groups, ViT tokens are put back on
the patch grid, the maps of a real pretrained model on a real fundus image point somewhere, and
``predict --explain`` / ``evaluate`` write their figures."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from finetune_kit.tasks.classification.config import DataConfig
from finetune_kit.tasks.classification.evaluate import evaluate_run
from finetune_kit.tasks.classification.model import build_model
from finetune_kit.tasks.classification.predict import predict_images
from finetune_kit.tasks.classification.saliency import (pick_cases, saliency_maps, target_classes, target_layer,
                                                        vit_reshape_transform)
from finetune_kit.tasks.classification.transforms import ImageCache, build_transforms, normalize_batch


def test_target_layer_is_the_last_backbone_group_output():
    mnet = timm.create_model("mobilenetv2_100", num_classes=2)
    assert target_layer(mnet) is mnet.bn2  # group blocks.6+conv_head+bn2: its last module
    rn = timm.create_model("resnet18", num_classes=2)
    assert target_layer(rn) is rn.layer4[1]
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=64)
    assert target_layer(vit) is vit.blocks[11].norm1


def test_vit_tokens_back_on_the_patch_grid():
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=48, reg_tokens=2)  # 3 x 3 grid, 3 prefix
    t = torch.arange(2 * 12 * 4, dtype=torch.float32).reshape(2, 12, 4)
    out = vit_reshape_transform(vit)(t)
    assert out.shape == (2, 4, 3, 3)
    assert torch.equal(out[1, :, 2, 1], t[1, 3 + 2 * 3 + 1])  # token (row 2, col 1) after 3 prefix tokens


def test_target_classes_and_cases():
    p = np.array([[0.9, 0.1], [0.45, 0.55], [0.2, 0.8], [0.7, 0.3]])
    assert target_classes(p) == [[0], [1], [1], [0]]
    assert target_classes(np.array([[0.7, 0.6, 0.1], [0.2, 0.1, 0.3]]), multi_label=True) == [[0, 1], [2]]
    cases = pick_cases(p, np.array([0, 1, 0, 1]), k=2)
    assert cases == {"most confident correct": [0, 1], "most confident wrong": [2, 3], "borderline": [1, 3]}


def test_pretrained_mobilenet_map_on_a_fundus_image(weights_file, acrima_flat):
    """ImageNet MobileNetV2 on a real ACRIMA image: the map of its top ImageNet class is 0-1, of the
    input size and not flat, and the second class's map differs from it."""
    model, _ = build_model("mobilenetv2_100", 1000, custom_weights_path=str(weights_file))
    tf = build_transforms(model, 128, augment="none")
    path = str(sorted(acrima_flat.iterdir())[0].resolve())
    cache = ImageCache(tf.cache_size)
    cache.load([path])
    img = tf.eval(image=cache.get(path))["image"]
    x = normalize_batch(torch.from_numpy(img[None]).repeat(2, 1, 1, 1), tf.mean, tf.std)
    with torch.no_grad():
        top = model.eval()(x[:1])[0].argsort(descending=True)[:2].tolist()
    cams = saliency_maps(model, x, top)
    assert cams.shape == (2, 128, 128) and cams[0].max() > 0.99 and cams[0].min() >= 0 and cams[0].std() > 0.05
    assert np.abs(cams[0] - cams[1]).mean() > 0.01


def test_predict_explain_and_evaluate_grid(finished_run, acrima_flat, acrima_imagefolder, tmp_path):
    images = sorted(str(p.resolve()) for p in acrima_flat.iterdir())[:4]
    out = predict_images(finished_run, images, output=tmp_path / "p.csv", explain=True)
    pngs = sorted((tmp_path / "p-explain").glob("*.png"))
    rows = list(csv.DictReader(open(out)))
    assert len(pngs) == 4
    for row in rows:
        stem = Path(row["path"]).stem
        png = next(p for p in pngs if p.name.startswith(stem + "_"))
        assert png.name == f"{stem}_{row['predicted']}_p{float(row['p_' + row['predicted']]):.2f}.png"
        assert Image.open(png).size[0] > 400
    evaluate_run(finished_run, DataConfig(data=str(acrima_imagefolder)), name="grid")
    grid = Path(finished_run) / "eval-grid" / "saliency_grid.png"
    assert grid.is_file() and Image.open(grid).size[1] > 600
