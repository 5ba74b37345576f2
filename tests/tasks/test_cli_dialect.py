"""Every option of every command is declared once, as a config field, in one dialect.

The adapter (``finetune_kit.tasks.cli_options.config_command``) generates a command's options from
config fields: a dashed long name first; its underscore spelling when the name has an underscore;
otherwise only the aliases declared on the field; on/off switches as ``--x/--no-x``. The only
parameters that are no config field are positional arguments and the ``--config FILE`` meta-option.
"""
from __future__ import annotations

import re

import pytest
import typer.main

from finetune_kit.tasks.cli import app
from finetune_kit.tasks.config_base import config_options

# typer may bring its own copy of click, so commands and options are recognised by duck typing

_DASHED = re.compile(r"--[a-z0-9]+(?:-[a-z0-9]+)*")


def _commands(group, prefix: str = ""):
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, path + " ")
        else:
            yield path, cmd


_ROOT = typer.main.get_command(app)
_ALL = dict(_commands(_ROOT))


def _options(cmd):
    return [p for p in cmd.params if getattr(p, "param_type_name", "") == "option" and p.name != "help"]


def _field_aliases(cmd) -> dict[str, tuple[str, ...]]:
    """Option name -> aliases declared on its config field (generated commands)."""
    paths = getattr(cmd.callback, "__config_options__", None) or {}
    models = getattr(cmd.callback, "__config_models__", ())
    return {o.name: tuple(o.extra("aliases", ())) for o in config_options(*models) if o.name in paths}


def _dialect_errors(cmd) -> list[str]:
    errors = []
    generated = hasattr(cmd.callback, "__config_options__")
    aliases = _field_aliases(cmd)
    for param in _options(cmd):
        names = list(param.opts)
        first = names[0]
        if not _DASHED.fullmatch(first):
            errors.append(f"{param.name}: first name {first} is not --dashed-lowercase")
            continue
        idea = first[2:].replace("-", "_")
        required = {first} | ({"--" + idea} if "_" in idea else set())
        declared = aliases.get(param.name, ()) if generated else ()
        allowed = required | set(declared)
        missing = required - set(names)
        extra = set(names) - allowed
        if missing:
            errors.append(f"{first}: missing {sorted(missing)}")
        if extra:
            errors.append(f"{first}: undeclared names {sorted(extra)}")
        if param.secondary_opts:
            want = {"--no-" + first[2:]} | ({"--no_" + idea} if "_" in idea else set())
            if set(param.secondary_opts) != want:
                errors.append(f"{first}: off switch {param.secondary_opts}, expected {sorted(want)}")
    return errors


def test_the_app_has_every_command():
    assert {"classify", "compare", "predict", "evaluate", "rerun", "compress train", "compress eval",
            "compress finetune", "compress convert-official", "analyze", "sweep", "strategies"} <= set(_ALL)


@pytest.mark.parametrize("path", sorted(_ALL))
def test_every_option_is_in_the_dialect(path):
    assert not _dialect_errors(_ALL[path])


@pytest.mark.parametrize("path", sorted(_ALL))
def test_every_option_comes_from_a_config_field(path):
    """Each option of each command is a config field (the adapter says which), except ``--config``."""
    cmd = _ALL[path]
    fields = getattr(cmd.callback, "__config_options__", {})
    models = getattr(cmd.callback, "__config_models__", ())
    leaves = {o.name: o.path for o in config_options(*models)}
    stray = [p.opts[0] for p in _options(cmd) if p.name != "config" and p.name not in fields]
    assert not stray, f"{path}: options declared outside a config: {stray}"
    assert all(leaves.get(name) == where for name, where in fields.items())
    for param in _options(cmd):
        if param.name in fields:  # the field's description is the help; the help shows a real default itself
            assert param.help, param.name
            restated = param.default not in (None, False, ()) and "default" in param.help.lower()
            assert not restated, f"{path} {param.opts[0]}: help restates the default: {param.help}"


def test_classify_compare_evaluate_share_one_generated_block():
    def block(path):
        return {p.name: (tuple(p.opts), tuple(p.secondary_opts), p.help, p.default) for p in _options(_ALL[path])}

    classify, compare, evaluate = block("classify"), block("compare"), block("evaluate")
    shared = set(classify) & set(compare)
    assert len(shared) >= 65 and set(evaluate) - {"name"} <= set(classify)
    differ = {n for n in shared if classify[n] != compare[n]}
    assert differ == {"num_epochs"}  # compare's own default (shorter runs); the LR defaults are shared, same help
    assert all(classify[n][:3] == compare[n][:3] for n in differ)
    assert all(classify[n] == evaluate[n] for n in set(evaluate) - {"name", "data"})


def test_the_guides_and_timm_compressai_spellings_are_accepted():
    def names(path):
        return {n for p in _options(_ALL[path]) for n in p.opts + p.secondary_opts}

    for flag in ("--ft_strategy", "--ft-strategy", "--linear_probe_epochs", "--gradual_patience", "--llrd_decay",
                 "--num_epochs", "--learning_rate", "--model_name", "--custom_weights_path", "--experiment_tag",
                 "--model", "--lr", "--epochs", "-b", "--batch-size", "--output", "--device", "--resume", "--seed",
                 "--workers", "--threads", "--num-threads", "--config", "--min-lr", "--drop-rate", "--ema-decay",
                 "--feature-cache", "--no-feature-cache"):
        assert flag in names("classify"), flag
    for flag in ("-m", "-d", "--dataset", "--cuda", "--save_path", "--save-path", "-b", "--epochs", "--lambda",
                 "--patch-size", "--config", "--device"):
        assert flag in names("compress train"), flag
    for flag in ("--finetune", "--finetune_lr", "--finetune-lr", "-d", "--freeze_entropy", "--context_lr_ratio",
                 "--use_hierarchical", "--scale_early_stopping", "--early_stopping_patience", "--progressive_unfreeze",
                 "--unfreeze_schedule", "--use_balanced", "--adaptive_gamma", "--gamma_strategy", "--gamma_final",
                 "--w_lr", "--cuda", "--config"):
        assert flag in names("compress finetune"), flag


def _params(path: str) -> set[str]:
    return {p.name for p in _ALL[path].params}


@pytest.mark.parametrize("path, fields", [
    ("classify", "classification"), ("compare", "classification"), ("compress train", "train"),
    ("compress finetune", "finetune"), ("compress eval", "eval"),
])
def test_every_config_field_has_an_option(path, fields):
    from finetune_kit.tasks.classification.config import RECORDED_FIELDS, ClassificationConfig
    from finetune_kit.tasks.compression.config import EvalConfig
    from finetune_kit.tasks.compression.run.config import FinetuneConfig, TrainConfig

    models = {"classification": (ClassificationConfig,), "train": (TrainConfig,),
              "finetune": (FinetuneConfig,), "eval": (EvalConfig,)}[fields]
    names = {o.name for o in config_options(*models)}
    missing = names - set(RECORDED_FIELDS) - _params(path)
    assert not missing, f"{path}: config fields without an option: {sorted(missing)}"


def test_warmup_help_names_an_existing_option():
    warm = next(p for p in _ALL["classify"].params if p.name == "warmup_epochs")
    assert "--min-lr" in warm.help and "min_lr" in _params("classify")


@pytest.mark.parametrize("path", ["classify", "compare", "evaluate", "predict", "rerun"])
def test_help_at_80_columns_shows_every_option_name_whole(path):
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, [*path.split(), "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"}).output
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    shown = set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", out))
    for param in _options(_ALL[path]):
        missing = [n for n in param.opts + param.secondary_opts if n not in shown]
        assert not missing, f"{path}: {missing} not shown whole"
    options = out[out.index("╭─ Options"):]  # (typer draws positional arguments its own way)
    assert not re.search(r"<(bool|str|int|float|path)>", options)  # metavars: INTEGER, FLOAT, TEXT, PATH, choices
    if path == "classify":
        assert "--ft-strategy" in shown and "--ft_strategy" in shown
