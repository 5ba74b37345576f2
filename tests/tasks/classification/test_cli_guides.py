"""The guides' classification command lines run verbatim (tiny sizes appended), and a run is
reproduced exactly by ``finetune-kit rerun`` and by ``classify --config RUN/config.json``."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_kit.tasks.classification.cli import classify_app
from finetune_kit.tasks.classification.config import ClassificationConfig
from finetune_kit.tasks.cli import app
from finetune_kit.tasks.config_base import flatten
from tests.conftest import without_volatile

runner = CliRunner()

#: The guides' lines (docs/classification.md and the issue), with DIR and W for data and weights.
GUIDE = ("--ft_strategy gradual --data DIR --label_preset acrima --model_name mobilenetv2_100 "
         "--custom_weights_path W --num_epochs 8 --learning_rate 3e-4 --head_lr_mult 10")
GUIDE_LINES = {
    "gradual": GUIDE + " --gradual_patience 1",
    "linear": GUIDE.replace("gradual", "linear") + " --linear_probe_epochs 10",
    "full": GUIDE.replace("gradual", "full") + " --llrd_decay 0.9",
    "progressive": GUIDE.replace("gradual", "progressive") + " --unfreeze_schedule 2,4",
    "tagged": GUIDE + " --gradual_patience 1 --experiment_tag guide-tag",
}
#: appended only to make the runs tiny (the last value of an option wins)
TINY = "--num-epochs 1 --linear-probe-epochs 1 --img-size 32 -b 8 --val-fraction 0.25 --test-fraction 0.25 " \
       "--wandb disabled --no-progress --threads 1"


def _line(name: str, data: Path, weights: Path, out: Path) -> list[str]:
    line = GUIDE_LINES[name].replace("DIR", str(data)).replace(" W ", f" {weights} ")
    return shlex.split(line) + shlex.split(TINY) + ["--output", str(out)]


@pytest.mark.parametrize("name", list(GUIDE_LINES))
def test_guide_command_lines_run_verbatim(name, acrima_flat, weights_file, tmp_path):
    res = runner.invoke(classify_app(), _line(name, acrima_flat, weights_file, tmp_path))
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == "device: cpu (auto: no CUDA device)" or \
        res.output.splitlines()[0].startswith("device: cuda")
    (run,) = tmp_path.glob("*/metrics.json")
    cfg = json.loads((run.parent / "config.json").read_text())
    assert cfg["strategy"]["ft_strategy"] == GUIDE_LINES[name].split()[1]  # the run records the nested config
    cfg = flatten(ClassificationConfig, cfg)
    assert Path(cfg["custom_weights_path"]).is_absolute() and Path(cfg["data"]).is_absolute()
    if name == "tagged":
        assert run.parent.name.startswith("guide-tag-")


_VOLATILE = ("time", "seconds", "wall", "run_dir", "path", "folder", "started", "finished", "date", "memory",
             "_mb", "throughput", "per_s", "output_dir")


def _stable(obj):
    return without_volatile(obj, _VOLATILE)


def test_rerun_and_config_file_reproduce_the_metrics(acrima_flat, tmp_path):
    args = ["classify", "--data", str(acrima_flat), "--label-preset", "acrima", "--model", "resnet18",
            "--ft-strategy", "full", "--epochs", "1", "--img-size", "32", "-b", "8", "--val-fraction", "0.25",
            "--test-fraction", "0.25", "--wandb", "disabled", "--no-progress", "--threads", "1",
            "--output-dir", str(tmp_path / "a"), "--device", "cpu"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == "device: cpu"
    (first,) = (tmp_path / "a").glob("*/metrics.json")
    res = runner.invoke(app, ["rerun", str(first.parent), "--output-dir", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    (again,) = (tmp_path / "b").glob("*/metrics.json")
    res = runner.invoke(app, ["classify", "--config", str(first.parent / "config.json"),
                              "--output-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    (third,) = (tmp_path / "c").glob("*/metrics.json")
    ref = _stable(json.loads(first.read_text()))
    assert ref and "test" in ref
    assert _stable(json.loads(again.read_text())) == ref
    assert _stable(json.loads(third.read_text())) == ref
    # --set changes one setting of the recorded config; the old folder is untouched
    res = runner.invoke(app, ["rerun", str(first.parent), "--set", "seed=1", "--set", "data.label_preset=acrima",
                              "--output-dir", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    (fourth,) = (tmp_path / "d").glob("*/config.json")
    assert json.loads(fourth.read_text())["runtime"]["seed"] == 1
    assert len(list((tmp_path / "a").iterdir())) == 1


def test_config_file_yaml_is_overridden_by_typed_options(acrima_flat, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {acrima_flat}\nlabel-preset: acrima\nmodel_name: resnet18\nft_strategy: linear\n"
                   "linear_probe_epochs: 3\nimg_size: 32\nbatch_size: 8\nval_fraction: 0.25\ntest_fraction: 0.25\n"
                   "wandb: disabled\nprogress: false\nnum_threads: 1\nmin_lr: 1.0e-5\nfeature_cache: false\n")
    res = runner.invoke(app, ["classify", "--config", str(cfg), "--linear_probe_epochs", "1", "--output", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (run,) = tmp_path.glob("*/config.json")
    saved = flatten(ClassificationConfig, json.loads(run.read_text()))
    assert saved["linear_probe_epochs"] == 1 and saved["min_lr"] == 1e-5 and saved["feature_cache"] is False
    assert saved["model_name"] == "resnet18" and saved["label_preset"] == "acrima"
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_epoch: 3\n")
    res = runner.invoke(app, ["classify", "--config", str(bad)])
    assert res.exit_code == 2 and "num_epoch" in res.output


def test_compare_demo_fills_only_what_is_not_given(monkeypatch, tmp_path):
    import finetune_kit.tasks.classification.compare as compare_mod

    seen = {}

    def fake_run(cfg, names, output_dir, *, per_strategy, console, title, resume=None):
        seen.update(cfg=cfg, names=names, per_strategy=per_strategy, resume=resume)
        return {"markdown": "table", "folder": str(tmp_path)}

    monkeypatch.setattr(compare_mod, "run_comparison", fake_run)
    res = runner.invoke(app, ["compare", "--demo", "--num_epochs", "2", "--linear_probe_epochs", "2",
                              "--output-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.optim.num_epochs == 2 and cfg.strategy.linear_probe_epochs == 2
    assert cfg.model.model_name == "resnet18" and cfg.transforms.img_size == 64 and cfg.output.wandb == "offline"
    (filled,) = [ln for ln in res.output.splitlines() if ln.startswith("--demo filled:")]
    assert "--model-name resnet18" in filled and "--num-epochs" not in filled and "linear-probe" not in filled
    assert seen["resume"] is None  # a fresh comparison (compare --resume FOLDER continues one)


def test_evaluate_takes_the_runs_config_for_its_data(finished_run):
    res = runner.invoke(app, ["evaluate", str(finished_run), "--config", str(finished_run / "config.json"),
                              "--name", "fromcfg", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == "device: cpu"
    assert (finished_run / "eval-fromcfg" / "metrics.json").is_file()
