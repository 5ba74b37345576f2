"""The dialect helper: option names, config files, --set values, device resolution."""
from __future__ import annotations

import pytest

from finetune_kit.tasks.cli_options import option, parse_assignments, read_config_file, resolve_device


def test_option_names_and_refused_alias():
    opt = option(3, "num_epochs", "--epochs", help="x")
    assert list(opt.param_decls) == ["--num-epochs", "--num_epochs", "--epochs"]
    assert list(option(True, "feature_cache", negatable=True).param_decls) == [
        "--feature-cache/--no-feature-cache", "--feature_cache/--no_feature_cache"]
    assert list(option(None, "seed").param_decls) == ["--seed"]
    with pytest.raises(ValueError, match="not in cli_options.ALIASES"):
        option(3, "num_epochs", "--n-epochs")


def test_config_files_and_assignments(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("num-epochs: 3\nlambda: 0.01\n")
    assert read_config_file(y, renames={"lambda": "lmbda"}) == {"num_epochs": 3, "lmbda": 0.01}
    j = tmp_path / "c.json"
    j.write_text('{"learning_rate": 1e-4, "data": {"data": "x"}}')
    assert read_config_file(j) == {"learning_rate": 1e-4, "data": {"data": "x"}}
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="mapping"):
        read_config_file(tmp_path / "list.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_config_file(tmp_path / "none.yaml")
    assert parse_assignments(["seed=3", "lr=1e-4", "amp=true", "tag=null", "schedule=2,4", "model-name=resnet18"]) == {
        "seed": 3, "lr": 1e-4, "amp": True, "tag": None, "schedule": "2,4", "model_name": "resnet18"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments(["seed"])


def test_resolve_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == ("cpu", "device: cpu (auto: no CUDA device)")
    assert resolve_device("cpu") == ("cpu", "device: cpu")
    assert resolve_device("auto", cuda=True) == ("cuda", "device: cuda (--cuda)")
