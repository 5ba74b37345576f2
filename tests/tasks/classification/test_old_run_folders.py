"""Run folders written before the config was nested in sections still work.

``tests/fixtures/classification/*_2d64b94.json`` are ``config.json`` files written by main at
2d64b94 (flat keys, a nested ``data``): one of ``classify --data synthetic --num-epochs 1 ...`` and
one of the README's ACRIMA ``compare``. A run folder holding such a file still works with
``--resume``, ``predict``, ``evaluate``, ``rerun`` and ``--config RUN/config.json``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_kit.tasks.classification.config import ClassificationConfig, CompareOptions
from finetune_kit.tasks.classification.config_files import classification_file_values
from finetune_kit.tasks.cli import app, detect_task
from finetune_kit.tasks.config_base import nest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "classification"
CLASSIFY = FIXTURES / "classify_config_2d64b94.json"
COMPARE = FIXTURES / "compare_config_2d64b94.json"
runner = CliRunner()


def test_the_fixtures_validate_into_the_nested_config():
    old = json.loads(CLASSIFY.read_text())
    assert "ft_strategy" in old and "optim" not in old and isinstance(old["data"], dict)  # the flat layout
    cfg = ClassificationConfig.model_validate(old)
    assert (cfg.model.model_name, cfg.strategy.ft_strategy, cfg.optim.num_epochs, cfg.optim.batch_size) == \
        ("resnet18", "gradual", 1, 16)
    assert (cfg.data.synthetic_size, cfg.transforms.img_size, cfg.calibration.ood, cfg.output.run_dir) == \
        (48, 32, False, old["run_dir"])
    assert ClassificationConfig.model_validate(cfg.model_dump()) == cfg  # the nested layout round-trips
    assert detect_task(old) == "classify" and detect_task(cfg.model_dump()) == "classify"

    assert detect_task(json.loads(COMPARE.read_text())) == "compare"
    values = classification_file_values(COMPARE)
    assert (values["strategies"], values["head_learning_rate"], values["label_preset"]) == ("linear,full", 5e-3,
                                                                                          "acrima")
    nested = nest([ClassificationConfig, CompareOptions], values)
    options = CompareOptions.model_validate({k: nested.pop(k) for k in list(nested)
                                             if k in CompareOptions.model_fields})
    base = ClassificationConfig.model_validate(nested)
    assert options.strategies == "linear,full" and base.transforms.img_size == 96 and base.calibration.ood is False


def _old_config(run: Path, data: Path, out: Path) -> None:
    """Write the fixture (2d64b94's flat layout) as ``run``'s config.json, pointing at this run and data."""
    old = json.loads(CLASSIFY.read_text())
    old.update(ft_strategy="full", num_epochs=2, img_size=32, batch_size=8, run_dir=str(run), output_dir=str(out),
               stop_after_epoch=None, num_threads=1)
    old["data"].update(data=str(data), label_preset="acrima", val_fraction=0.25, test_fraction=0.25)
    (run / "config.json").write_text(json.dumps(old, indent=2))


@pytest.mark.slow
def test_a_run_folder_with_a_flat_config_json_still_works(acrima_flat, tmp_path):
    res = runner.invoke(app, ["classify", "--data", str(acrima_flat), "--label-preset", "acrima", "--model", "resnet18",
                              "--img-size", "32", "--ft-strategy", "full", "--epochs", "2", "--stop-after-epoch", "1",
                              "-b", "8", "--val-fraction", "0.25", "--test-fraction", "0.25", "--no-ood", "--wandb",
                              "disabled", "--no-progress", "--threads", "1", "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "a").iterdir()
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"

    _old_config(run, acrima_flat, tmp_path / "a")
    res = runner.invoke(app, ["classify", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2

    _old_config(run, acrima_flat, tmp_path / "a")  # the resumed run wrote its config nested; back to the old one
    res = runner.invoke(app, ["predict", str(run), str(acrima_flat), "--device", "cpu", "-o", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "p.csv") as f:
        assert len(list(csv.DictReader(f))) == 24

    res = runner.invoke(app, ["evaluate", str(run), "--config", str(run / "config.json"), "--name", "old"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "eval-old" / "metrics.json").read_text())["n_images"] == 24

    res = runner.invoke(app, ["rerun", str(run), "--set", "num_epochs=1", "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["classify", "--config", str(run / "config.json"), "--epochs", "1",
                              "-o", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    (b,) = (tmp_path / "b").glob("*/metrics.json")
    (c,) = (tmp_path / "c").glob("*/metrics.json")
    assert json.loads(b.read_text())["test"] == json.loads(c.read_text())["test"]  # the same settings, twice
    saved = json.loads((b.parent / "config.json").read_text())
    assert saved["optim"]["num_epochs"] == 1 and saved["data"]["data"] == str(acrima_flat)  # written nested


def test_analyze_reads_old_and_new_run_folders_side_by_side(tmp_path):
    from finetune_kit.experiments.results import load_runs

    old = json.loads(CLASSIFY.read_text())
    new = ClassificationConfig.model_validate({**old, "ft_strategy": "full", "seed": 1}).model_dump()
    for name, config, auroc in (("old", old, 0.6), ("new", new, 0.7)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps(config))
        (run / "metrics.json").write_text(json.dumps({"test": {"auroc": auroc}}))
        (run / "status.json").write_text(json.dumps({"status": "completed"}))
    results = load_runs(tmp_path)
    df = results.df.set_index("run")
    column = results.resolve_param("ft_strategy")
    assert column == "config.ft_strategy" and df[column].to_dict() == {"old": "gradual", "new": "full"}
    assert df[results.resolve_param("seed")].to_dict() == {"old": 0, "new": 1}
    assert df["config.data.synthetic_size"].to_dict() == {"old": 48, "new": 48}  # data was nested before too
    assert not [c for c in df.columns if c.startswith(("config.strategy.", "config.runtime."))]
