"""Command-line options generated from config fields, and the ``--config FILE`` plumbing.

The adapter (in the spirit of ``LightningCLI``): a config option is a field of a pydantic model
inheriting :class:`~finetune_kit.tasks.config_base.ConfigSection` (declared with
:func:`~finetune_kit.tasks.config_base.option_field`); :func:`config_command` turns the fields of
one or more such models into the typer options of a command: ``--dashed-name``, the underscore
spelling ``--dashed_name`` when the name has an underscore, the field's own aliases, the type
(``bool`` -> ``--x/--no-x``, ``Literal`` -> a choice, lists repeatable or one comma-separated string),
the real default in the help, the field's description as help and the section's name as help
panel. The command receives the options the user typed, over the ``--config FILE`` values, over
the command's own defaults, as a nested dict for ``Model.model_validate`` (:func:`nest` maps flat
keys to their section).

Older helpers: :func:`option` (a hand-declared option in the same dialect, with :data:`ALIASES`),
:func:`read_config_file` reads YAML or JSON (a run's ``config.json`` too), :func:`merge_options`
layers defaults < file < typed values, :func:`parse_assignments` reads ``--set key=value`` items and
:func:`resolve_device` turns ``--device auto`` into ``cuda`` or ``cpu`` with a one-line reason.
"""
from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, UnionType
from typing import (Any, Callable, Iterable, Literal, Mapping, Optional, Sequence, Union, get_args, get_origin,
                    get_type_hints)

import typer
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer import rich_utils

from finetune_kit.device import resolve_auto_device
from finetune_kit.tasks.cli_errors import fail

__all__ = ["ALIASES", "option", "dashed", "given", "read_config_file", "merge_options", "parse_assignments",
           "parse_value", "resolve_device", "CONFIG_HELP", "CONFIG_OPTION", "ConfigOption", "config_options",
           "config_command", "nest", "deep_merge"]

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
    return typer.Option(default, *option_names(name, aliases, negatable), **kwargs)


def option_names(name: str, aliases: Iterable[str] = (), negatable: bool = False) -> list[str]:
    """The option declarations of ``name``: ``["--num-epochs", "--num_epochs", *aliases]``; with
    ``negatable``, ``["--amp/--no-amp"]`` (and ``"--x_y/--no_x_y"``) for an on/off switch."""
    spellings = [dashed(name)] + (["--" + name] if "_" in name else [])
    if negatable:
        spellings = [f"{s}/--no{'-' if s == dashed(name) else '_'}{s[2:]}" for s in spellings]
    return spellings + list(aliases)


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
    device = str(device or "auto").strip()
    if cuda:
        return "cuda", "device: cuda (--cuda)"
    if device != "auto":
        return device, f"device: {device}"
    if resolve_auto_device(device) == "cuda":
        import torch  # start-up time: torch only when a CUDA device is there to name

        return "cuda", f"device: cuda (auto: {torch.cuda.get_device_name(0)})"
    return "cpu", "device: cpu (auto: no CUDA device)"


# -- the adapter: pydantic fields -> typer options ------------------------------------------------


def _options_panel(*, name: str, params: Sequence[Any], ctx: Any, markup_mode: Any, console: Any) -> None:
    """typer's panel of options, with every name of an option one a line in a column that never wraps,
    so that help at 80 columns shows ``--no-allow-partial-weights`` whole (typer's own layout puts
    names in four columns, joined by commas, which rich cuts: ``--label-preset,--label_pre…``)."""
    if not params or any(getattr(p, "param_type_name", "") != "option" for p in params):
        return _typer_options_panel(name=name, params=params, ctx=ctx, markup_mode=markup_mode, console=console)
    table = Table(highlight=True, show_header=False, expand=True, box=None, pad_edge=False, padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold", style=rich_utils.STYLE_TYPES)
    table.add_column(ratio=1)
    for param in params:
        names = Text("*" if param.required else "", style=rich_utils.STYLE_REQUIRED_SHORT)
        names.append("\n".join(param.opts), style=rich_utils.STYLE_OPTION)
        if param.secondary_opts:
            names.append("\n" + "\n".join(param.secondary_opts), style=rich_utils.STYLE_NEGATIVE_OPTION)
        kind = "" if getattr(param, "is_flag", False) else param.display_type_rich(ctx=ctx) or ""
        span = param._get_number_range_help_str()
        table.add_row(names, Text(kind + (f" [{span}]" if span else "")),
                      rich_utils._get_parameter_help(param=param, ctx=ctx, markup_mode=markup_mode))
    console.print(Panel(table, border_style=rich_utils.STYLE_OPTIONS_PANEL_BORDER, title=name,
                        title_align=rich_utils.ALIGN_OPTIONS_PANEL))


_typer_options_panel = rich_utils._print_options_panel
rich_utils._print_options_panel = _options_panel  # typer's help renderer reads this module global


#: The ``--config FILE`` meta-option of a generated command (a parameter named ``config``).
CONFIG_OPTION = option(None, "config", metavar="FILE", help=CONFIG_HELP)
_CTX = "_fk_ctx"  # the hidden typer.Context parameter of a generated command


@dataclass(frozen=True)
class ConfigOption:
    """One leaf field of a config model as a command-line option.

    Attributes: ``name`` (field name = parameter name, unique in the command), ``path`` (sections
    then the field, e.g. ``("optim", "learning_rate")``), ``owner`` (the model declaring the field),
    ``field`` (its ``FieldInfo``), ``panel`` (help panel: the section's title or name, or None).
    """

    name: str
    path: tuple[str, ...]
    owner: type
    field: FieldInfo
    panel: Optional[str]

    def extra(self, key: str, default: Any = None) -> Any:
        """An entry of the field's ``json_schema_extra`` (``aliases``, ``metavar``, ``cli``)."""
        extra = self.field.json_schema_extra
        return extra.get(key, default) if isinstance(extra, dict) else default


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _section_model(field: FieldInfo) -> Optional[type]:
    """The model type of a section field (a field whose type is a pydantic model), else None."""
    inner, _ = _strip_optional(field.annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def config_options(*models: type, _prefix: tuple[str, ...] = (), _panel: Optional[str] = None) -> list[ConfigOption]:
    """The leaf fields of ``models`` (sections walked, depth first) as :class:`ConfigOption` s.

    Raises:
        ValueError: two leaves with one name (a flat key must map to one place).
    """
    out: list[ConfigOption] = []
    for model in models:
        for name, field in model.model_fields.items():
            section = _section_model(field)
            if section is not None:
                out += config_options(section, _prefix=_prefix + (name,), _panel=field.title or name)
            else:
                out.append(ConfigOption(name, _prefix + (name,), model, field, _panel))
    seen: dict[str, tuple[str, ...]] = {}
    for opt in out:
        if opt.name in seen and not _prefix:
            raise ValueError(f"config field {opt.name!r} is both {'.'.join(seen[opt.name])} and "
                             f"{'.'.join(opt.path)}: leaf names must be unique across sections")
        seen[opt.name] = opt.path
    return out


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``top``, nested dicts merged key by key (``top`` wins)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _index(models: Sequence[type]) -> tuple[dict[str, tuple[str, ...]], set[tuple[str, ...]]]:
    """leaf name (and long alias, underscore spelling) -> path; and the set of section paths."""
    paths: dict[str, tuple[str, ...]] = {}
    for opt in config_options(*models):
        for alias in opt.extra("aliases", ()):
            if alias.startswith("--"):
                paths.setdefault(alias[2:].replace("-", "_"), opt.path)
    for opt in config_options(*models):
        paths[opt.name] = opt.path
    sections = {opt.path[:i] for opt in config_options(*models) for i in range(1, len(opt.path))}
    return paths, sections


def nest(models: type | Sequence[type], values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat leaf keys, nested sections or a mix (a config file, today's flat ``config.json``) ->
    the nested dict of ``models`` (a model or several sharing one namespace of leaf names).

    Dashes in keys become underscores; a long alias (``lr``, ``epochs``) maps to its field. A
    section given as a mapping is walked the same way (a leaf of another section inside it still
    lands in its own section). Unknown keys are kept where they stand, so validation names them.

    Example: ``nest(ClassificationConfig, {"learning_rate": 1e-3, "data": {"data": "x"}})`` ->
    ``{"optim": {"learning_rate": 1e-3}, "data": {"data": "x"}}``.
    """
    paths, sections = _index([models] if isinstance(models, type) else list(models))
    out: dict[str, Any] = {}

    def place(path: tuple[str, ...], value: Any) -> None:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    def walk(mapping: Mapping[str, Any], where: tuple[str, ...]) -> None:
        for raw, value in mapping.items():
            key = str(raw).replace("-", "_")
            if where + (key,) in sections and isinstance(value, Mapping):
                walk(value, where + (key,))
            elif (key,) in sections and isinstance(value, Mapping):
                walk(value, (key,))
            elif key in paths:
                place(paths[key], value)
            else:
                place(where + (key,), value)

    walk(values, ())
    return out


_METAVARS = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}


def _choices(choices: Sequence[Any], width: int = 12) -> str:
    """``[auroc|accuracy|loss]``, broken into lines of about ``width`` characters (a narrow help column)."""
    lines = [""]
    for i, choice in enumerate(map(str, choices)):
        piece = choice + ("|" if i < len(choices) - 1 else "]")
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "[" + "\n".join(lines)


def _parameter(opt: ConfigOption, default: Any) -> inspect.Parameter:
    """The typer parameter of one option (annotation and ``typer.Option`` from the field).

    Only typed values reach the command, so the parameter's default is what the help shows: the
    field's (or command's) real default, lists comma-joined for a ``cli="text"`` field.
    """
    inner, optional = _strip_optional(opt.field.annotation)
    origin = get_origin(inner)
    mode = opt.extra("cli") or ("repeat" if origin in (list, tuple, dict, set) else None)
    flag = inner is bool
    metavar = opt.extra("metavar")
    if mode == "text":
        annotation: Any = Optional[str]
        if isinstance(default, (list, tuple)):
            default = ",".join(str(v).lstrip(".") for v in default)
    elif mode == "repeat":
        item = get_args(inner)[0] if origin in (list, tuple, set) and get_args(inner) else str
        item = item if item in (str, int, float) else str
        annotation = Optional[list[item]]  # type: ignore[valid-type]
        metavar = metavar or ("NAME=VALUE" if origin is dict else _METAVARS[item])
        default = list(default) if isinstance(default, (list, tuple)) and default else None
    elif flag or inner in _METAVARS or get_origin(inner) is Literal:
        annotation = Optional[inner] if optional or default is None else inner
    else:
        annotation, default = Optional[str], None if default is None else str(default)
    if metavar is None:
        choices = get_args(inner) if get_origin(inner) is Literal else ()
        metavar = "" if flag else _choices(choices) if choices else _METAVARS.get(inner, "TEXT")
    names = option_names(opt.name, opt.extra("aliases", ()), negatable=flag)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *names, help=opt.field.description or None,
                                                  rich_help_panel=opt.panel, metavar=metavar))


def _field_default(opt: ConfigOption) -> Any:
    """The field's default (its factory called), None for a required field."""
    field = opt.field
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def config_command(app: Optional[typer.Typer], name: Optional[str], *models: type, help: Optional[str] = None,
                   exclude: Iterable[str] = (), include: Optional[Iterable[str]] = None,
                   defaults: Optional[Mapping[str, Any]] = None,
                   read_file: Callable[[Path], Mapping[str, Any]] = read_config_file,
                   **command_kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a command whose options are the fields of ``models``.

    The decorated function takes ``values`` (the nested dict: command ``defaults`` < ``--config``
    file < options typed, only what was given; the models' own defaults are left to validation)
    and any parameters of its own (positional arguments, ``ctx: typer.Context``, ``config:
    Optional[Path] = CONFIG_OPTION``, which the adapter reads with ``read_file`` and merges).

    Args:
        app: the typer app to register on (None: only build the command; register it yourself).
        name: the command's name (``"classify"``).
        models: config models; their leaf names must be unique together.
        help: the command's help (default: the function's docstring).
        exclude / include: leaf names to leave out / to keep only.
        defaults: command defaults that differ from the fields' (leaf name -> value); the help shows them.
        read_file: reads ``--config FILE`` into a flat or nested mapping (default :func:`read_config_file`).

    Returns:
        A decorator; it returns the generated command function (``__config_options__`` maps each
        generated parameter to its field path), which another app may register too.

    Raises:
        ValueError: a leaf name used twice, or equal to one of the function's own parameters.
    """
    leaves = [o for o in config_options(*models) if o.name not in set(exclude)
              and (include is None or o.name in set(include))]
    defaults = dict(defaults or {})
    unknown = set(defaults) - {o.name for o in leaves}
    if unknown:
        raise ValueError(f"config_command {name}: defaults for unknown options {sorted(unknown)}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = get_type_hints(fn)
        own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(fn).parameters.values() if p.name != "values"]
        clash = {p.name for p in own} & {o.name for o in leaves}
        if clash:
            raise ValueError(f"config_command {name}: parameters {sorted(clash)} are also config fields")
        ctx_param = inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        generated = [_parameter(o, defaults.get(o.name, _field_default(o))) for o in leaves]
        wants_ctx = [p.name for p in own if p.annotation is typer.Context]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            ctx = kwargs.pop(_CTX)
            typed = {o.name: kwargs.pop(o.name) for o in leaves if given(ctx, o.name)}
            for o in leaves:
                kwargs.pop(o.name, None)
            file_values: Mapping[str, Any] = {}
            if kwargs.get("config") is not None:
                try:
                    file_values = read_file(Path(kwargs["config"]))
                except (FileNotFoundError, ValueError) as exc:
                    fail(exc)
            values = deep_merge(deep_merge(nest(models, defaults), nest(models, file_values)), nest(models, typed))
            for key in wants_ctx:
                kwargs[key] = ctx
            return fn(values=values, **kwargs)

        params = own + [ctx_param] + generated
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__config_options__ = {o.name: o.path for o in leaves}  # type: ignore[attr-defined]
        del command.__wrapped__  # typer must read the generated signature, not fn's
        if app is not None:
            app.command(name, help=help, **command_kwargs)(command)
        return command

    return decorate
