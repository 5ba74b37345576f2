"""Helpers for the analysis tests: write run folders through the real writer (RunDir)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from unittest import mock

import finetune_kit.runs.run_dir as run_dir_module
from finetune_kit.experiments.profiles import metric_directions
from finetune_kit.runs.run_dir import RunDir
from finetune_kit.tasks.classification.profile import CLASSIFICATION
from finetune_kit.tasks.compression.profile import PROFILES as COMPRESSION_PROFILES

SHARED = Path(os.environ.get("FINETUNE_KIT_SHARED", Path(__file__).resolve().parents[3].parent / "shared"))
ACRIMA = SHARED / "data" / "acrima" / "images"
KODAK = SHARED / "data" / "kodak"
#: the metric directions the tasks declare (what ``analyze`` hands to the core)
MODES = metric_directions([CLASSIFICATION, *COMPRESSION_PROFILES])


def light_environment() -> dict[str, Any]:
    """environment.json content without importing timm/compressai/sklearn (about 25 s on a
    loaded 2-core machine): the analysis does not read those versions."""
    import platform
    import sys

    return {"python": sys.version.split()[0], "host": platform.node(), "argv": sys.argv}


def make_run(root: Path, name: str, config: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = (),
             final: Mapping[str, Any] | None = None, status: str = "completed", error: str | None = None) -> Path:
    """Write a run folder as a task would: start (config/env/status), epochs, final metrics, status."""
    run = RunDir(root / name)
    with mock.patch.object(run_dir_module, "environment_info", light_environment):
        run.start(dict(config))
    for rec in history:
        run.log_epoch(rec)
    if final is not None:
        run.write_json("metrics.json", final)
    if status != "running":
        run.set_status(status, error)
    else:  # a run left "running" by a process that died: record a pid that no longer exists
        import subprocess

        dead = subprocess.Popen(["true"])
        dead.wait()
        data = run.read_json("status.json")
        run.write_json("status.json", {**data, "pid": dead.pid})
    return run.path


def classification_grid(root: Path, seeds: Sequence[int] = (0,)) -> dict[tuple, float]:
    """A synthetic strategy x learning-rate grid; returns {(strategy, lr, seed): test_auroc}."""
    truth = {}
    base = {"linear": 0.80, "full": 0.90}
    for strategy in ("linear", "full"):
        for i, lr in enumerate((1e-4, 1e-3, 1e-2)):
            for seed in seeds:
                auroc = base[strategy] + 0.03 * i - (0.08 if (strategy == "full" and lr == 1e-2) else 0) + 0.002 * seed
                hist = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1) + 0.01 * i,
                         "val_auroc": auroc - 0.05 * (2 - e), "lr": lr} for e in range(3)]
                final = {"test_auroc": auroc, "test_accuracy": auroc - 0.1,
                         "calibration": {"ece_before": 0.1, "ece_after": 0.02 + 0.001 * i},
                         "confusion_matrix": [[5, 1], [2, 4]]}
                make_run(root, f"{strategy}-lr{lr:g}-s{seed}",
                         {"ft_strategy": strategy, "learning_rate": lr, "seed": seed, "num_epochs": 3,
                          "model": {"name": "resnet18", "image_size": 64},
                          "output_dir": str(root), "experiment_tag": f"{strategy}-{lr}"},
                         hist, final)
                truth[(strategy, lr, seed)] = auroc
    return truth
