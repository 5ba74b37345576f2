"""Fixtures of the classification tests: small layouts built from real ACRIMA images.

ACRIMA lives beside the project (``../shared/data/acrima/images``, or ``$ACRIMA_DIR``);
tests that need it are skipped with a clear reason when it is absent.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("FINETUNE_KIT_SHARED", ROOT.parent / "shared"))
ACRIMA = SHARED / "data" / "acrima" / "images"
WEIGHTS = SHARED / "weights" / "mobilenetv2_100.in1k_int8dequant.pth"


def acrima_files() -> tuple[list[Path], list[Path]]:
    """(glaucoma files, normal files) of ACRIMA, sorted; skips the test when absent."""
    if not ACRIMA.is_dir():
        pytest.skip(f"ACRIMA images not found at {ACRIMA} (real data lives in ../shared beside the repo; "
                    "set FINETUNE_KIT_SHARED); real-data tests skipped")
    files = sorted(p for p in ACRIMA.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [p for p in files if "_g_" in p.name], [p for p in files if "_g_" not in p.name]


@pytest.fixture(scope="session")
def acrima_flat(tmp_path_factory) -> Path:
    """A flat folder of 24 real ACRIMA images (12 per class; labels in the names; one ``.JPG``)."""
    g, n = acrima_files()
    upper = [p for p in g + n if p.suffix == ".JPG"]
    pick = (upper + [p for p in g if p not in upper])[:12] + [p for p in n if p not in upper][:12]
    out = tmp_path_factory.mktemp("acrima_flat")
    for p in pick:
        os.symlink(p, out / p.name)
    return out


@pytest.fixture(scope="session")
def acrima_imagefolder(acrima_flat, tmp_path_factory) -> Path:
    """The same 24 images in the ImageFolder layout (``normal/``, ``glaucoma/``)."""
    out = tmp_path_factory.mktemp("acrima_if")
    for p in acrima_flat.iterdir():
        cls = "glaucoma" if "_g_" in p.name else "normal"
        (out / cls).mkdir(exist_ok=True)
        os.symlink(os.readlink(p), out / cls / p.name)
    return out


@pytest.fixture(scope="session")
def weights_file() -> Path:
    """The real ImageNet MobileNetV2 weights (skip when absent)."""
    if not WEIGHTS.is_file():
        pytest.skip(f"MobileNetV2 weights not found at {WEIGHTS} (set FINETUNE_KIT_SHARED)")
    return WEIGHTS


def small_config(data: Path | str, tmp_path: Path, **overrides):
    """A tiny, fast run config: resnet18 (random init) at 64 px, 2 epochs, wandb off, no bars."""
    from finetune_kit.tasks.classification.config import ClassificationConfig, DataConfig

    data_kw = {k: overrides.pop(k) for k in list(overrides) if k in DataConfig.model_fields}
    data_kw.setdefault("val_fraction", 0.25)
    data_kw.setdefault("test_fraction", 0.25)
    kw = dict(model_name="resnet18", img_size=64, num_epochs=2, linear_probe_epochs=2, batch_size=8,
              learning_rate=1e-3, warmup_epochs=0.5, wandb="disabled", progress=False, output_dir=str(tmp_path),
              num_threads=1)
    kw.update(overrides)
    return ClassificationConfig(data=DataConfig(data=str(data), **data_kw), **kw)


@pytest.fixture(scope="session")
def finished_run(acrima_flat, tmp_path_factory) -> Path:
    """One finished linear-probe run on the 24-image ACRIMA folder (for predict/evaluate tests)."""
    from finetune_kit.tasks.classification.train import run_training

    tmp = tmp_path_factory.mktemp("finished")
    res = run_training(small_config(acrima_flat, tmp, ft_strategy="linear", label_preset="acrima"))
    return Path(res["run_dir"])
