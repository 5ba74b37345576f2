"""--channels-last and --compile: one tiny epoch of our loop trains with them, with finite metrics
and the state_dict keys of the plain model (so checkpoints load with the option on or off)."""
from __future__ import annotations

import math
import os
import shutil

import pytest

from tests.tasks.classification.conftest import small_config


def _run_and_keys(data, tmp_path, **kw) -> tuple[dict, list[str], list[str]]:
    """One epoch of ``full`` with ``kw`` through our loop (``fit_one_epoch`` + ``end_epoch``; the
    report is left out to keep the test cheap): (the epoch's record, its checkpoint's model keys,
    a fresh model's keys)."""
    import io

    from rich.console import Console

    from finetune_kit.runs.checkpoint import load_checkpoint
    from finetune_kit.tasks.classification.loop import end_epoch, fit_one_epoch
    from finetune_kit.tasks.classification.model import build_model
    from finetune_kit.tasks.classification.setup import build, start_run

    cfg = small_config(data, tmp_path, ft_strategy="full", label_preset="acrima", num_epochs=1, ood=False, **kw)
    state = start_run(build(cfg, console=Console(file=io.StringIO())))
    record = fit_one_epoch(state, 0)
    end_epoch(state, record)
    saved = sorted(load_checkpoint(state.run.checkpoints / "last.pt")["model"])
    fresh = sorted(build_model(cfg.model.model_name, 2, pretrained=False)[0].state_dict())
    return record, saved, fresh


def _check(record: dict, saved: list[str], fresh: list[str]) -> None:
    for k in ("train_loss", "val_loss", "val_accuracy", "train_images_per_s"):
        assert math.isfinite(record[k]), k
    assert 0.0 <= record["val_accuracy"] <= 1.0
    assert saved == fresh and not any("_orig_mod" in k for k in saved)


def test_channels_last_trains_with_finite_metrics_and_same_keys(acrima_flat, tmp_path):
    _check(*_run_and_keys(acrima_flat, tmp_path, channels_last=True))


@pytest.mark.slow
def test_compile_trains_with_finite_metrics_and_same_keys(acrima_flat, tmp_path):
    """Slow: even for timm's tiny ``test_resnet`` at 32 px, inductor's C++ code generation and gcc
    took about 10 min on 2 shared CPU cores (forward + backward, the last smaller batch, eval), half
    the whole suite's budget: it runs when ``FK_TEST_COMPILE=1`` (and on GPU machines by hand)."""
    if os.environ.get("FK_TEST_COMPILE") != "1":
        pytest.skip("torch.compile takes ~10 min to compile on 2 CPU cores: set FK_TEST_COMPILE=1 to run it")
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("torch.compile (inductor) needs a C++ compiler on CPU; none on PATH")
    _check(*_run_and_keys(acrima_flat, tmp_path, compile=True, model_name="test_resnet", img_size=32))
