"""--channels-last and --compile: a tiny run trains with them, with finite metrics and the
state_dict keys of the plain model (so checkpoints load with the option on or off)."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from tests.tasks.classification.conftest import small_config
from finetune_kit.tasks.classification.train import run_training


def _run_and_keys(data, tmp_path, **kw) -> tuple[dict, list[str], list[str]]:
    """One 1-epoch ``full`` run with ``kw``: (metrics, its checkpoint's model keys, a fresh model's keys)."""
    from finetune_kit.runs.checkpoint import load_checkpoint
    from finetune_kit.tasks.classification.model import build_model

    res = run_training(small_config(data, tmp_path, ft_strategy="full", label_preset="acrima", num_epochs=1,
                                    ood=False, **kw))
    saved = sorted(load_checkpoint(Path(res["run_dir"]) / "checkpoints" / "last.pt")["model"])
    fresh = sorted(build_model(kw.get("model_name", "resnet18"), 2, pretrained=False)[0].state_dict())
    return res, saved, fresh


def _check(res: dict, saved: list[str], fresh: list[str]) -> None:
    assert res["status"] == "completed"
    assert math.isfinite(res["test"]["nll"]) and math.isfinite(res["val"]["nll"])
    assert 0.0 <= res["test"]["accuracy"] <= 1.0
    assert saved == fresh and not any("_orig_mod" in k for k in saved)


def test_channels_last_trains_with_finite_metrics_and_same_keys(acrima_flat, tmp_path):
    _check(*_run_and_keys(acrima_flat, tmp_path, channels_last=True))


@pytest.mark.slow
def test_compile_trains_with_finite_metrics_and_same_keys(acrima_flat, tmp_path):
    """Slow: even for timm's tiny ``test_resnet`` at 32 px, inductor's C++ code generation and gcc
    took about 10 min on 2 shared CPU cores (forward + backward, the last smaller batch, eval)."""
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("torch.compile (inductor) needs a C++ compiler on CPU; none on PATH")
    _check(*_run_and_keys(acrima_flat, tmp_path, compile=True, model_name="test_resnet", img_size=32))
