"""Run folders written before ``compress train`` and ``compress finetune`` became one run still work,
and the fine-tune of then is reproduced bit for bit.

``fixtures/before_merge`` holds what main (9391332) wrote for a fixed-seed ``compress train`` and a
``compress finetune`` (hierarchical + balanced + progressive) on photos-train 001-004: both
``config.json`` files, the train run's ``metrics.jsonl`` and the ``steps.jsonl``/``metrics.jsonl``
of the fine-tune of a seeded hpcm-tiny (``torch.manual_seed(0)``, compress-train layout).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from finetune_kit.runs.checkpoint import atomic_save
from finetune_kit.tasks.cli import detect_task
from finetune_kit.tasks.compression.cli import compression_file_values
from finetune_kit.tasks.compression.models.zoo import build_model
from finetune_kit.experiments.results import rename_metrics
from finetune_kit.tasks.compression.profile import OLD_METRIC_NAMES
from finetune_kit.tasks.compression.run.config import FinetuneConfig, OptionWarning, TrainConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "before_merge"
#: the command lines that made the fixtures (``cmds.sh`` of the before/after check), tiny sizes
TRAIN = ("compress train --data DATA --model hpcm-tiny --lambda 0.0067 --patch-size 64 --batch-size 2 --epochs 2 "
         "--steps-per-epoch 2 --lr 3e-4 --output-dir OUT/train --name t --seed 0 --num-threads 1 --device cpu "
         "--no-progress --wandb disabled")
FINETUNE = ("compress finetune --checkpoint CKPT --data DATA --lambda 0.013 --epochs 3 --steps-per-epoch 2 "
            "--batch-size 2 --patch-size 64 --learning-rate 1e-4 --use-hierarchical --scale-early-stopping "
            "--early-stopping-patience 5 --progressive-unfreeze --unfreeze-schedule 1,2 --use-balanced "
            "--adaptive-gamma --gamma-strategy hierarchical --seed 0 --num-threads 1 --device cpu --no-progress "
            "--output-dir OUT/ft --name f --wandb disabled")
#: what differs between two runs of the same numbers
_VOLATILE = {"seconds", "train_seconds", "checkpoint", "run_dir"}


def _old_config(name: str, tmp_path: Path, **paths: Path) -> Path:
    """The fixture ``config.json`` with its absolute paths moved to this machine's."""
    values = json.loads((FIXTURES / name).read_text())
    values.update({k: str(v) for k, v in paths.items()})
    out = tmp_path / name
    out.write_text(json.dumps(values))
    return out


def test_config_json_of_before_the_merge_validates(few_photos, tiny_base_checkpoint, tmp_path):
    train_file = _old_config("train_config.json", tmp_path, data=few_photos, output_dir=tmp_path)
    ft_file = _old_config("finetune_config.json", tmp_path, data=few_photos, output_dir=tmp_path,
                          checkpoint=tiny_base_checkpoint)
    assert detect_task(json.loads(train_file.read_text())) == "compress train"
    assert detect_task(json.loads(ft_file.read_text())) == "compress finetune"
    train = TrainConfig.model_validate(compression_file_values(train_file))
    assert train.optim.learning_rate == 3e-4 and train.optim.lr_schedule == "constant"  # "lr" of then
    assert train.source.lmbda == 0.0067 and train.run.keep_last == 1 and train.layer_lr.lr_mults == ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptionWarning)  # its unfreeze schedule reaches the last epoch
        ft = FinetuneConfig.model_validate(compression_file_values(ft_file))
    assert ft.source.checkpoint == tiny_base_checkpoint and ft.source.lmbda == 0.013
    assert ft.hierarchical.use_hierarchical and ft.balanced.use_balanced and ft.gamma_strategy == "hierarchical"
    assert ft.unfreeze.unfreeze_schedule == "1,2" and ft.early_stop.early_stopping_patience == 5
    # the same files through the command line: --config of an old run folder's config.json
    with_milestones = json.loads(train_file.read_text()) | {"lr_milestones": [1]}
    assert TrainConfig.model_validate(with_milestones).optim.lr_schedule == "multistep"


def test_old_train_metric_names_map_to_todays():
    old = json.loads((FIXTURES / "train_metrics.jsonl").read_text().splitlines()[0])
    new = rename_metrics(old, OLD_METRIC_NAMES)
    assert new["val_rd"] == old["val_loss"] and new["val_bpp"] == old["val_bpp_loss"]
    assert new["train_mse"] == old["train_mse_loss"] and not set(OLD_METRIC_NAMES) & set(new)


def _numbers(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in _VOLATILE} for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_fixed_seed_finetune_steps_are_bit_identical_to_before_the_merge(photos, tmp_path):
    """The before/after check of issue 23: the same two command lines, each in its own process as
    they were recorded, give the fine-tune's ``steps.jsonl`` of main bit for bit, and the train
    run's metrics under today's names. (In one process the second run can differ in the last bit:
    a float32 kernel of the first run's shapes is reused.)"""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("001.png", "002.png", "003.png", "004.png"):
        (data / name).symlink_to(photos / name)
    program = Path(sys.executable).parent / "finetune-kit"

    def invoke(line: str, **subs: Path) -> Path:
        for key, value in subs.items():
            line = line.replace(key, str(value))
        res = subprocess.run([str(program), *shlex.split(line)], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
        assert res.returncode == 0, res.stderr
        return Path(res.stdout.split("run folder: ")[1].split()[0])

    train = invoke(TRAIN, DATA=data, OUT=tmp_path)
    before = [rename_metrics(r, OLD_METRIC_NAMES) for r in _numbers(FIXTURES / "train_metrics.jsonl")]
    for old, new in zip(before, _numbers(train / "metrics.jsonl"), strict=True):
        for key in ("train_loss", "train_bpp", "train_mse", "val_rd", "val_bpp", "val_mse", "val_psnr", "val_aux_loss"):
            assert new[key] == old[key], key
    torch.manual_seed(0)
    base = tmp_path / "base.pt"
    atomic_save({"state_dict": build_model("hpcm-tiny").state_dict(), "model": "hpcm-tiny", "epoch": 1,
                 "config": {"model": "hpcm-tiny", "lmbda": 0.0067}}, base)
    ft = invoke(FINETUNE, DATA=data, OUT=tmp_path, CKPT=base)
    assert _numbers(ft / "steps.jsonl") == _numbers(FIXTURES / "finetune_steps.jsonl")
    assert _numbers(ft / "metrics.jsonl") == _numbers(FIXTURES / "finetune_metrics.jsonl")
