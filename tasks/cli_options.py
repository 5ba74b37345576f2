"""The one option dialect of every ``finetune-kit`` command, and the ``--config FILE`` plumbing.

Dialect: each option has a dashed long name (``--num-epochs``) and, when its name has an
underscore, the underscore spelling as an alias (``--num_epochs``, the guides' spelling), plus
only the aliases of :data:`ALIASES` for that name (the names timm and CompressAI users type:
``--lr``, ``--epochs``, ``-b``, ``-d/--dataset``, ``--save_path`` ...). :func:`option` builds such a
``typer.Option``; the test ``tests/tasks/test_cli_dialect.py`` walks every command and refuses any
other name. On/off switches are ``--x/--no-x`` (:func:`option` with ``negatable=True``).

Config files: :func:`read_config_file` reads YAML or JSON (a run's ``config.json`` too),
:func:`merge_options` layers option defaults < file < what was typed on the command line
(click's ``ParameterSource``), :func:`parse_assignments` reads ``--set key=value`` items and
:func:`resolve_device` turns ``--device auto`` into ``cuda`` or ``cpu`` with a one-line reason.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Optional

import typer

__all__ = ["ALIASES", "option", "dashed", "given", "read_config_file", "merge_options", "parse_assignments",
           "parse_value", "resolve_device", "CONFIG_HELP"]

#: Extra names an option may carry besides ``--dashed-name`` and ``--underscore_name``, by option
#: name (the idea, underscore spelling). An option declares the ones it takes (a subset).
ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "model_name": ("--model",),                                # timm's train.py
    "model": ("-m", "--preset"),                               # CompressAI's examples/train.py
    "learning_rate": ("--lr", "--finetune-lr", "--finetune_lr"),
    "num_epochs": ("--epochs",),
    "epochs": ("--num-epochs", "--num_epochs", "-e"),
    "batch_size": ("-b",),
    "output_dir": ("--output", "-o", "--save-path", "--save_path"),
    "output": ("-o",),
    "num_workers": ("--workers", "-n"),
    "num_threads": ("--threads",),
    "threads": ("--num-threads", "--num_threads"),
    "data": ("-d", "--dataset"),
    "checkpoint": ("--finetune",),
    "lambda": ("--lmbda",),
    # analyze / sweep (their short forms)
    "metric": ("-m",),
    "group_by": ("-g",),
    "top_k": ("-k",),
    "param": ("-p",),
    "trials": ("-n",),
    "workers": ("--parallel", "-j"),
    "pruner": ("--pruning",),
    "space": ("--config",),                                    # a sweep's config file is its space file
})

CONFIG_HELP = ("YAML or JSON file of this command's options (keys: option names; a run's config.json "
               "works); options typed on the command line override it.")


def dashed(name: str) -> str:
    """``"num_epochs"`` -> ``"--num-epochs"``."""
    return "--" + name.replace("_", "-")


def option(default: Any, name: str, *aliases: str, negatable: bool = False, **kwargs: Any) -> Any:
    """A ``typer.Option`` in the dialect: ``--dashed-name``, ``--underscore_name`` (when ``name`` has
    an underscore) and ``aliases`` (each must be listed for ``name`` in :data:`ALIASES`).

    Args:
        default: the option's default (``...`` for a required option).
        name: the option's idea in underscore spelling (``"num_epochs"``, ``"lambda"``).
        aliases: extra names, a subset of ``ALIASES[name]``.
        negatable: an on/off switch: ``--x/--no-x`` (and ``--x_y/--no_x_y``).
        kwargs: passed to ``typer.Option`` (``help``, ``rich_help_panel``, ``metavar`` ...).

    Raises:
        ValueError: an alias not declared in :data:`ALIASES` for ``name``.
    """
    allowed = ALIASES.get(name, ())
    bad = [a for a in aliases if a not in allowed]
    if bad:
        raise ValueError(f"option {name!r}: alias(es) {', '.join(bad)} are not in cli_options.ALIASES[{name!r}]")
    spellings = [dashed(name)] + (["--" + name] if "_" in name else [])
    if negatable:
        decls = [f"{s}/--no{'-' if s == dashed(name) else '_'}{s[2:]}" for s in spellings]
    else:
        decls = spellings
    return typer.Option(default, *decls, *aliases, **kwargs)


def given(ctx: Any, name: str) -> bool:
    """Whether parameter ``name`` of the running command was typed (command line or environment),
    not left at its default. Compares by name: typer may bring its own copy of ``ParameterSource``."""
    source = ctx.get_parameter_source(name)
    return getattr(source, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")


def read_config_file(path: str | Path, renames: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """The mapping of a YAML or JSON config file, keys with dashes turned into underscores.

    Args:
        path: the file (``.yaml``/``.yml``/``.json``; JSON is YAML, so any of them parses).
        renames: key spellings to map to field names after that (e.g. ``{"lambda": "lmbda"}``).

    Raises:
        FileNotFoundError: no such file. ValueError: it does not hold a mapping, or does not parse.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist: pass a YAML or JSON file of options "
                                "(a run's config.json works)")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"config file {path} does not parse: {' '.join(str(exc).split())}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of options (key: value), not {type(data).__name__}")
    renames = dict(renames or {})
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        key = renames.get(key, key.replace("-", "_"))
        out[renames.get(key, key)] = value
    return out


def merge_options(ctx: Any, params: Mapping[str, Any], file_values: Mapping[str, Any]) -> dict[str, Any]:
    """Option values with precedence default < file < command line.

    Args:
        ctx: the running command's context (to tell typed options from defaults).
        params: the command's parameter values (``ctx.params`` or the function's locals).
        file_values: the config file's mapping (:func:`read_config_file`), may be empty; keys
            that are not parameters pass through (the config validation judges them).
    """
    merged = {k: v for k, v in params.items() if k not in file_values}
    merged.update(file_values)
    merged.update({k: v for k, v in params.items() if given(ctx, k)})
    return merged


def parse_value(raw: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"null"`` -> None, ``"[1,2]"`` -> [1, 2];
    anything that is not JSON stays the string (``"2,4"``, ``"hpcm-tiny"``)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_assignments(items: Iterable[str], what: str = "--set") -> dict[str, Any]:
    """``["num_epochs=3", "data.label_preset=acrima"]`` -> ``{"num_epochs": 3, ...}``: values read by
    :func:`parse_value`, dashes in keys become underscores; a later key wins.

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{what} {item!r} is not KEY=VALUE (e.g. {what} num_epochs=3)")
        out[key] = parse_value(raw)
    return out


def resolve_device(device: str, cuda: bool = False) -> tuple[str, str]:
    """``(device, line)``: ``auto`` (and ``--cuda``) resolved, and the line a command prints first.

    ``auto`` becomes ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``; ``cuda=True`` (the
    CompressAI flag ``--cuda``) means ``cuda``. Other values pass unchanged (the config checks them).
    Examples of ``line``: ``device: cpu (auto: no CUDA device)``, ``device: cuda (auto: NVIDIA H200)``,
    ``device: cpu``.
    """
    from finetune_kit.device import resolve_auto_device

    device = str(device or "auto").strip()
    if cuda:
        return "cuda", "device: cuda (--cuda)"
    if device != "auto":
        return device, f"device: {device}"
    if resolve_auto_device(device) == "cuda":
        import torch

        return "cuda", f"device: cuda (auto: {torch.cuda.get_device_name(0)})"
    return "cpu", "device: cpu (auto: no CUDA device)"
