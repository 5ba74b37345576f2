"""Shared test fixtures: paths to the real data beside the project, skipping when absent."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FINETUNE_KIT_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
WEIGHTS = SHARED / "weights"


def without_volatile(obj, words):
    """``obj`` (nested dicts/lists of metrics) without the keys that contain any of ``words``
    (timings, paths, timestamps, memory: they differ between two runs of the same config)."""
    if isinstance(obj, dict):
        return {k: without_volatile(v, words) for k, v in obj.items() if not any(w in k.lower() for w in words)}
    if isinstance(obj, list):
        return [without_volatile(v, words) for v in obj]
    return obj


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (real data lives in ../shared beside the repo; "
                    "set FINETUNE_KIT_SHARED to its location)")
    return path


@pytest.fixture(scope="session")
def acrima_dir() -> Path:
    """ACRIMA fundus photographs (label in the file name: _g_ = glaucoma)."""
    return _need(DATA / "acrima" / "images", "ACRIMA images")


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    """The 24 Kodak test images."""
    return _need(DATA / "kodak", "Kodak images")


@pytest.fixture(scope="session")
def photos_train_dir() -> Path:
    """50 natural photographs for compression training."""
    return _need(DATA / "photos-train", "training photographs")


@pytest.fixture(scope="session")
def anchors_file() -> Path:
    """Published R-D points on Kodak."""
    return _need(DATA / "anchors" / "kodak_rd.json", "R-D anchors")


@pytest.fixture(scope="session")
def mobilenetv2_weights() -> Path:
    """Real ImageNet MobileNetV2 weights for timm (BatchNorm folded: identity statistics)."""
    return _need(WEIGHTS / "mobilenetv2_100.in1k_int8dequant.pth", "pretrained MobileNetV2 weights")
