"""One-off controls (``--stop-after-epoch``) belong to one invocation: a planned stop is printed on
the console, and ``rerun``/``--config`` of a stopped run's config.json do not copy it."""
from __future__ import annotations

import json
from pathlib import Path

from tests.tasks.classification.conftest import small_config
from rich.console import Console

from finetune_kit.tasks.classification.config_files import classification_file_values
from finetune_kit.tasks.classification.synthetic import ensure_synthetic_dataset


def test_stop_is_printed_and_rerun_values_drop_it(tmp_path):
    from finetune_kit.tasks.classification.train import run_training

    data = ensure_synthetic_dataset(tmp_path / "data", size=48, per_class=6)
    console = Console(record=True, width=200)
    part = run_training(small_config(data, tmp_path / "a", ft_strategy="full", num_epochs=3, stop_after_epoch=1),
                        console=console)
    text = console.export_text()
    assert part["status"] == "interrupted"
    assert f"stopped after epoch 1 of 3 (--stop-after-epoch 1): continue with finetune-kit classify --resume " \
           f"{part['run_dir']}" in text.replace("\n", "")
    config = Path(part["run_dir"]) / "config.json"
    assert json.loads(config.read_text())["runtime"]["stop_after_epoch"] == 1  # recorded ...
    values = classification_file_values(config)
    assert "stop_after_epoch" not in values and values["num_epochs"] == 3  # ... but not carried into a rerun
