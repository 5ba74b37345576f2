"""The dialect helper: option names, config files, --set values, device resolution."""
from __future__ import annotations

import pytest

from finetune_kit.tasks.cli_options import option, parse_assignments, read_config_file, resolve_device


def test_option_names():
    opt = option(3, "num_epochs", "--epochs", help="x")
    assert list(opt.param_decls) == ["--num-epochs", "--num_epochs", "--epochs"]
    assert list(option(True, "feature_cache", negatable=True).param_decls) == [
        "--feature-cache/--no-feature-cache", "--feature_cache/--no_feature_cache"]
    assert list(option(None, "seed").param_decls) == ["--seed"]


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
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_assignments(["seed"])


def test_resolve_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == ("cpu", "device: cpu (auto: no CUDA device)")
    assert resolve_device("cpu") == ("cpu", "device: cpu")
    assert resolve_device("auto", cuda=True) == ("cuda", "device: cuda (--cuda)")


# -- the adapter: config fields -> typer options ------------------------------------------------

import re  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Literal, Optional  # noqa: E402

import typer  # noqa: E402
from pydantic import ValidationError, field_validator  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from finetune_kit.tasks.cli_options import CONFIG_OPTION, config_command, config_options, nest  # noqa: E402
from finetune_kit.tasks.config_base import ConfigSection, absolute_path, option_field  # noqa: E402


class _Data(ConfigSection):
    data: str = option_field("synthetic", "Images.", aliases=("-d", "--dataset"))
    layout: Literal["auto", "csv"] = option_field("auto", "How labels are given.")
    label_preset: Optional[Literal["acrima"]] = option_field(None, "File-name rule.")
    extensions: tuple[str, ...] = option_field((".jpg", ".png"), "Comma-separated extensions.", cli="text")
    layer_patterns: Optional[list[str]] = option_field(None, "Regex per group, repeatable.")
    custom_weights_path: Optional[str] = option_field(None, "Weights file.", metavar="PATH")

    @field_validator("extensions", mode="before")
    @classmethod
    def _split(cls, v):
        return tuple("." + e.strip().lstrip(".") for e in v.split(",")) if isinstance(v, str) else v


class _Optim(ConfigSection):
    learning_rate: float = option_field(1e-3, "Peak learning rate.", aliases=("--lr",), gt=0)
    num_epochs: int = option_field(20, "Epochs.", aliases=("--epochs",), ge=1)
    feature_cache: bool = option_field(True, "Train the head on cached features.")
    probe_init: Optional[bool] = option_field(None, "Start from the linear probe.")
    allow_partial_weights: bool = option_field(False, "Accept backbone key mismatches.")
    monitor: Literal["auroc", "accuracy", "balanced_accuracy", "loss"] = option_field("auroc", "Best-epoch metric.")
    strategy_kwargs: dict[str, Any] = option_field(default_factory=dict, description="NAME=VALUE, repeatable.")


class _Config(ConfigSection):
    data: _Data = _Data()
    optim: _Optim = _Optim()


def _app(**kw):
    app = typer.Typer()
    seen = {}

    @config_command(app, "run", _Config, **kw)
    def run(ctx: typer.Context, values: dict, config: Optional[Path] = CONFIG_OPTION) -> None:
        """Run it."""
        seen["values"] = values
        seen["ctx"] = ctx

    @app.command("other")
    def other() -> None:
        """Another command (keeps `run` a sub-command)."""

    return app, seen, run


def test_generated_options_names_types_defaults_and_panels():
    app, _, run = _app(defaults={"num_epochs": 8})
    cmd = typer.main.get_command(app).commands["run"]
    opts = {p.name: p for p in cmd.params}
    assert opts["learning_rate"].opts == ["--learning-rate", "--learning_rate", "--lr"]
    assert opts["data"].opts == ["--data", "-d", "--dataset"]
    assert opts["feature_cache"].secondary_opts == ["--no-feature-cache", "--no_feature_cache"]
    assert opts["num_epochs"].default == 8 and opts["learning_rate"].default == 1e-3  # the command's, the field's
    assert opts["extensions"].default == "jpg,png"
    assert opts["layer_patterns"].multiple and opts["strategy_kwargs"].multiple
    assert run.__config_options__["learning_rate"] == ("optim", "learning_rate")
    assert set(run.__config_options__) == {o.name for o in config_options(_Config)}

    out = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"}).output
    assert "[default: 8]" in out and "[default: jpg,png]" in out and "[auto|csv]" in out and "PATH" in out
    assert "╭─ optim" in out and "╭─ data" in out  # the section names are the help panels
    assert "<bool>" not in out.replace("--help", "").split("Show this message")[-1]
    assert not re.search(r"<(str|int|float|list)", out)
    assert "…" not in out  # no option name cut at 80 columns
    words = set(re.findall(r"--?[\w-]+", out))
    for param in cmd.params:
        for name in param.opts + param.secondary_opts:
            assert name in words, name


def test_only_typed_values_over_file_over_command_defaults(tmp_path):
    app, seen, _ = _app(defaults={"num_epochs": 8})
    runner = CliRunner()
    res = runner.invoke(app, ["run", "--lr", "0.1", "-d", "x", "--no-feature-cache", "--extensions", "a,B",
                              "--layer-patterns", "p", "--layer_patterns", "q", "--strategy-kwargs", "k=1",
                              "--layout", "csv", "--no-probe-init"])
    assert res.exit_code == 0, res.output
    assert seen["values"] == {"optim": {"num_epochs": 8, "learning_rate": 0.1, "feature_cache": False,
                                        "strategy_kwargs": ["k=1"], "probe_init": False},
                              "data": {"data": "x", "extensions": "a,B", "layer_patterns": ["p", "q"],
                                       "layout": "csv"}}
    assert seen["ctx"].get_parameter_source("learning_rate").name == "COMMANDLINE"
    # a flat config file and a nested one; typed options win over the file
    (tmp_path / "flat.yaml").write_text("num-epochs: 3\nlearning_rate: 0.5\ndata: imgs\n")
    res = runner.invoke(app, ["run", "--config", str(tmp_path / "flat.yaml"), "--lr", "0.2"])
    assert res.exit_code == 0, res.output
    assert seen["values"] == {"optim": {"num_epochs": 3, "learning_rate": 0.2}, "data": {"data": "imgs"}}
    (tmp_path / "nested.json").write_text('{"optim": {"epochs": 4}, "data": {"data": "d", "layout": "csv"}}')
    assert runner.invoke(app, ["run", "--config", str(tmp_path / "nested.json")]).exit_code == 0
    cfg = _Config.model_validate(seen["values"])
    assert (cfg.optim.num_epochs, cfg.data.layout, cfg.optim.learning_rate) == (4, "csv", 1e-3)
    # refused input: one line, exit 2
    res = runner.invoke(app, ["run", "--config", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "does not exist" in res.output
    res = runner.invoke(app, ["run", "--layout", "tsv"])
    assert res.exit_code == 2


def test_nest_maps_flat_keys_aliases_and_old_nested_sections():
    got = nest(_Config, {"learning_rate": 1e-4, "epochs": 3, "data": {"data": "x", "feature_cache": False},
                         "layout": "csv", "nonsense": 1, "optim": {"typo": 2}})
    assert got == {"optim": {"learning_rate": 1e-4, "num_epochs": 3, "feature_cache": False, "typo": 2},
                   "data": {"data": "x", "layout": "csv"}, "nonsense": 1}
    assert nest(_Config, {"data": "imgs"}) == {"data": {"data": "imgs"}}
    with pytest.raises(ValidationError, match="nonsense"):
        _Config.model_validate(got)
    cfg = _Config.model_validate(nest(_Config, {"extensions": "PNG", "strategy_kwargs": {"a": 1}}))
    assert cfg.data.extensions == (".PNG",) and cfg.optim.strategy_kwargs == {"a": 1}


def test_declaration_errors():
    class Twice(ConfigSection):
        a: _Optim = _Optim()
        b: _Optim = _Optim()

    with pytest.raises(ValueError, match="unique across sections"):
        config_options(Twice)
    with pytest.raises(ValueError, match="also config fields"):
        @config_command(None, "x", _Config)
        def clash(values: dict, seed: int = 0, learning_rate: float = 1.0) -> None:
            """Clash."""
    with pytest.raises(ValueError, match="unknown options"):
        config_command(None, "x", _Config, defaults={"nope": 1})
    with pytest.raises(ValueError, match="'text' or 'repeat'"):
        option_field(1, "x", cli="csv")


def test_option_field_and_absolute_path(tmp_path, monkeypatch):
    field = _Optim.model_fields["learning_rate"]
    assert field.description == "Peak learning rate." and field.json_schema_extra == {"aliases": ["--lr"]}
    with pytest.raises(ValidationError, match="greater than 0"):
        _Optim(learning_rate=0)
    with pytest.raises(ValidationError, match="finite"):
        _Optim(learning_rate=float("inf"))
    monkeypatch.chdir(tmp_path)
    assert absolute_path("a/b") == str(tmp_path / "a" / "b") and absolute_path(None) is None
    assert absolute_path("~/x") == str(Path.home() / "x")
