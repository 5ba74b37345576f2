"""The compression guides' command lines (docs/compression_finetuning.md and CompressAI's
``examples/train.py`` spelling) run verbatim with tiny sizes appended; ``finetune-kit rerun`` and
``--config RUN/config.json`` reproduce a run's metrics."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_kit.tasks.cli import app
from tests.conftest import without_volatile

runner = CliRunner()

#: appended only to make the runs tiny (the last value of an option wins)
TINY = "--epochs 1 --steps-per-epoch 1 -b 2 --patch-size 64 --val-fraction 0.2 --wandb disabled --no-progress " \
       "--threads 1"
#: CompressAI's examples/train.py spelling (hpcm-tiny for hpcm_base; --cuda dropped on a CPU)
COMPRESSAI_TRAIN = "compress train -m hpcm_tiny -d DIR --epochs 1 --lambda 0.0067 -b 8 --patch-size 256 --save_path OUT"
#: docs/compression_finetuning.md, the three workflows, and CompressAI's --finetune/--finetune_lr
FINETUNE_LINES = {
    "basic": "compress finetune --checkpoint B --lambda 0.013 --epochs 500 --learning-rate 1e-5 "
             "--freeze_entropy --context_lr_ratio 0.1 --data DIR",
    "hierarchical": "compress finetune --checkpoint B --lambda 0.013 --epochs 500 --learning-rate 1e-5 "
                    "--use_hierarchical --scale_early_stopping --early_stopping_patience 50 "
                    "--progressive_unfreeze --unfreeze_schedule 100,200 --data DIR",
    "balanced": "compress finetune --checkpoint B --lambda 0.013 --epochs 500 --learning-rate 1e-5 "
                "--use_balanced --adaptive_gamma --gamma_strategy hpcm --gamma 0.003 --gamma_final 0.001 --w_lr 0.025 "
                "--data DIR",
    "compressai": "compress finetune --finetune B --finetune_lr 1e-5 -d DIR",
}
#: the same workflows as docs/compression_finetuning.md now prints them, in the dashed spelling
FINETUNE_LINES.update({f"{k}-dashed": re.sub(r"--[a-z]+(?:_[a-z]+)+", lambda m: m.group(0).replace("_", "-"), v)
                       for k, v in list(FINETUNE_LINES.items()) if k != "compressai"})


def _run(line: str, **subs) -> tuple[str, Path]:
    for key, value in subs.items():
        line = line.replace(f" {key} ", f" {value} ") if f" {key} " in line else line.replace(f" {key}", f" {value}")
    res = runner.invoke(app, shlex.split(line) + shlex.split(TINY))
    assert res.exit_code == 0, res.output
    return res.output, Path(res.output.split("run folder: ")[1].split()[0])


@pytest.fixture(scope="module")
def base_run(few_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    output, run = _run(COMPRESSAI_TRAIN, DIR=few_photos, OUT=out)
    assert output.splitlines()[0].startswith("device: ")
    return run


def test_compressai_style_train_line(base_run, few_photos):
    cfg = json.loads((base_run / "config.json").read_text())
    assert cfg["model"] == "hpcm-tiny" and cfg["lmbda"] == 0.0067 and cfg["batch_size"] == 2
    assert Path(cfg["data"]).is_absolute() and Path(cfg["output_dir"]).is_absolute()
    assert (base_run / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize("name", list(FINETUNE_LINES))
def test_finetune_guide_lines(name, base_run, few_photos, tmp_path):
    _, run = _run(FINETUNE_LINES[name] + f" --output {tmp_path} --val-max-batches 1", B=base_run / "checkpoints" /
                  "best.pt", DIR=few_photos)
    cfg = json.loads((run / "config.json").read_text())
    assert Path(cfg["checkpoint"]).is_absolute()
    assert cfg["learning_rate"] == 1e-5
    if name.startswith("balanced"):
        assert cfg["use_balanced"] and cfg["gamma_strategy"] == "hpcm"


_VOLATILE = ("time", "seconds", "wall", "run_dir", "checkpoint", "path", "started", "finished", "per_s", "memory",
             "output_dir")


def _stable(obj):
    return without_volatile(obj, _VOLATILE)


def test_rerun_and_config_reproduce_train_and_finetune(base_run, few_photos, tmp_path):
    ref = _stable(json.loads((base_run / "metrics.json").read_text()))
    res = runner.invoke(app, ["rerun", str(base_run), "--output-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    (again,) = (tmp_path / "r").glob("*/metrics.json")
    assert ref and _stable(json.loads(again.read_text())) == ref
    res = runner.invoke(app, ["compress", "train", "--config", str(base_run / "config.json"),
                              "--output-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    (third,) = (tmp_path / "c").glob("*/metrics.json")
    assert _stable(json.loads(third.read_text())) == ref
    # a fine-tune run's own config.json is a valid --config (source_lmbda is recorded, not a setting)
    _, ft = _run(FINETUNE_LINES["balanced"] + f" --output {tmp_path / 'f'} --val-max-batches 1",
                 B=base_run / "checkpoints" / "best.pt", DIR=few_photos)
    assert "source_lmbda" in json.loads((ft / "config.json").read_text())
    res = runner.invoke(app, ["compress", "finetune", "--config", str(ft / "config.json"), "--output",
                              str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    (ft2,) = (tmp_path / "g").glob("*/metrics.json")
    assert _stable(json.loads(ft2.read_text())) == _stable(json.loads((ft / "metrics.json").read_text()))
    res = runner.invoke(app, ["rerun", str(ft), "--set", "seed=3", "--output", str(tmp_path / "h")])
    assert res.exit_code == 0, res.output
    (ft3,) = (tmp_path / "h").glob("*/config.json")
    assert json.loads(ft3.read_text())["seed"] == 3


def test_model_names_are_normalised(few_photos):
    from finetune_kit.tasks.compression.run.config import TrainConfig

    for spelling in ("hpcm_base", "HPCM-Base", " hpcm-base "):
        assert TrainConfig(data=few_photos, model=spelling).source.model == "hpcm-base"
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(data=few_photos, model="hpcm_huge")


def test_eval_takes_a_config_file(base_run, kodak, tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"checkpoints: [{base_run / 'checkpoints' / 'best.pt'}]\ndata: {kodak}\nlimit: 1\n"
                   f"output: {tmp_path / 'ignored'}\nprogress: false\nthreads: 1\n")
    res = runner.invoke(app, ["compress", "eval", "--config", str(cfg), "-o", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].startswith("device: ")
    assert (tmp_path / "ev" / "results.json").is_file() and not (tmp_path / "ignored").exists()
