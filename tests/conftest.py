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


#: A user's strategy plugin (a module of their own): head only, with an option of its own that it
#: records in its state. Tests register it in-process (exec) or declare it under the
#: ``finetune_kit.strategies`` entry-point group of a throwaway distribution.
PLUGIN_SOURCE = '''
from finetune_kit.strategy import FineTuneStrategy, register_strategy


@register_strategy("myplugin")
class MyPlugin(FineTuneStrategy):
    """Head only, with an option of its own recorded in the strategy state."""

    description = "test plugin: head only"

    def __init__(self, *, myopt: int = 1, **common):
        super().__init__(**common)
        self.myopt = myopt

    def initial_trainable(self, groups):
        return [g.name for g in groups.head]

    def state_dict(self):
        return {**super().state_dict(), "myopt": self.myopt}
'''


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


def _shared(path: Path, what: str):
    """A session fixture returning ``path`` of the shared data, skipping (with the reason) when absent."""

    @pytest.fixture(scope="session")
    def fixture() -> Path:
        return _need(path, what)

    fixture.__doc__ = f"{what} at {path}."
    return fixture


acrima_dir = _shared(DATA / "acrima" / "images", "ACRIMA fundus photographs (label in the file name: _g_ = glaucoma)")
kodak_dir = _shared(DATA / "kodak", "the 24 Kodak test images")
photos_train_dir = _shared(DATA / "photos-train", "50 natural photographs for compression training")
anchors_file = _shared(DATA / "anchors" / "kodak_rd.json", "published R-D points on Kodak")
mobilenetv2_weights = _shared(WEIGHTS / "mobilenetv2_100.in1k_int8dequant.pth",
                              "ImageNet MobileNetV2 weights for timm (BatchNorm folded: identity statistics)")


@pytest.fixture(autouse=True)
def _no_leaked_trust(monkeypatch):
    """``finetune-kit --trust-pickled-weights`` sets ``FINETUNE_KIT_TRUST_PICKLED_WEIGHTS`` for its
    process; a command invoked in-process (typer's CliRunner) must not leave it on for later tests."""
    monkeypatch.delenv("FINETUNE_KIT_TRUST_PICKLED_WEIGHTS", raising=False)
    yield
