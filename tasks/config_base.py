"""The base of every typed configuration section of the tasks.

:class:`ConfigSection` is a pydantic model that refuses unknown keys (``extra="forbid"``) and
refuses a non-finite number (``inf``, ``-inf``, ``nan``) in any ``float`` field, before any run
folder exists: an infinite learning rate or lambda only fails at the first step. A field where
infinity has a meaning opts out with ``json_schema_extra={"allow_inf": True}``.

:func:`option_field` declares a field that is also a command-line option (its description is the
help, its aliases extra option names; see :mod:`finetune_kit.tasks.cli_options`), and
:func:`absolute_path` is the one validator that stores a path absolute. A config is nested in
sections (fields whose type is a model); leaf names are unique across its sections, so
:func:`nest` maps flat keys (a config file, an older flat ``config.json``) to their sections and
:func:`config_options` lists the leaves.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from types import UnionType
from typing import Any, Iterable, Mapping, Optional, Sequence, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.fields import FieldInfo

__all__ = ["ConfigSection", "option_field", "absolute_path", "ConfigOption", "config_options", "nest", "flatten",
           "deep_merge", "strip_optional", "parse_value", "parse_assignments"]


def parse_value(raw: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"null"`` -> None, ``"[1,2]"`` -> [1, 2];
    anything that is not JSON stays the string (``"2,4"``, ``"hpcm-tiny"``)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_assignments(items: Iterable[str], what: str = "--set", example: str = "num_epochs=3") -> dict[str, Any]:
    """``["num_epochs=3", "data.label_preset=acrima"]`` -> ``{"num_epochs": 3, ...}``: the one parser of
    ``NAME=VALUE`` items (``rerun --set``, ``--strategy_kwargs``): values read by :func:`parse_value`,
    dashes in names become underscores; a later name wins.

    Raises:
        ValueError: an item without ``=`` or whose name is not an identifier (dotted names allowed),
            naming ``what`` and an ``example``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not all(part.isidentifier() for part in key.split(".")):
            raise ValueError(f"{what} {item!r} is not NAME=VALUE (e.g. {what} {example})")
        out[key] = parse_value(raw)
    return out


def option_field(default: Any = ..., description: str = "", *, aliases: Iterable[str] = (),
                 metavar: Optional[str] = None, cli: Optional[str] = None, allow_inf: bool = False,
                 **constraints: Any) -> Any:
    """A pydantic field that is also a command-line option (``Field`` with what the CLI adapter reads).

    Args:
        default: the default (``...``: required); the help shows it, so the description must not restate it.
        description: one or two sentences of help (units, what 0/None means).
        aliases: extra option names besides ``--dashed-name``/``--underscore_name`` (the guides'
            spellings and what timm or CompressAI users type: ``("--lr",)``, ``("-b",)``).
        metavar: shown instead of the type in help (``PATH``, ``NAME=VALUE``).
        cli: how a list/tuple/dict field is typed: ``"text"`` one string the field's validator
            splits (``--extensions jpg,png``), ``"repeat"`` (the default for lists and dicts) a
            repeatable option.
        allow_inf: accept ``inf`` (see :class:`ConfigSection`).
        constraints: passed to ``pydantic.Field`` (``ge``, ``gt``, ``le``, ``default_factory`` ...).
    """
    extra: dict[str, Any] = {}
    if aliases:
        extra["aliases"] = list(aliases)
    if metavar:
        extra["metavar"] = metavar
    if cli:
        if cli not in ("text", "repeat"):
            raise ValueError(f"option_field cli={cli!r}: use 'text' or 'repeat'")
        extra["cli"] = cli
    if allow_inf:
        extra["allow_inf"] = True
    if "default_factory" in constraints:
        return Field(description=description, json_schema_extra=extra or None, **constraints)
    return Field(default, description=description, json_schema_extra=extra or None, **constraints)


def absolute_path(value: Any) -> Optional[str]:
    """A path as an absolute string (``~`` expanded, symlinks kept), so a recorded config reproduces
    from any folder; ``None`` stays ``None``. Use it in a ``field_validator`` of path fields."""
    return None if value is None else os.path.abspath(os.path.expanduser(str(value)))


class ConfigSection(BaseModel):
    """A section of a run's configuration: unknown keys and non-finite floats are errors.

    Raises:
        pydantic.ValidationError: an unknown key, or ``inf``/``nan`` in a float field (the message
            names the field and asks for a finite number).
    """

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, value: Any, info: ValidationInfo) -> Any:
        """Reject ``inf``/``nan`` floats (also inside lists/tuples) unless the field allows them."""
        field = cls.model_fields.get(info.field_name or "")
        extra = (field.json_schema_extra if field is not None else None) or {}
        if isinstance(extra, dict) and extra.get("allow_inf"):
            return value
        items = value if isinstance(value, (list, tuple)) else (value,)
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{item} is not a finite number: give a finite value")
        return value


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


def strip_optional(annotation: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _section_model(field: FieldInfo) -> Optional[type]:
    """The model type of a section field (a field whose type is a pydantic model), else None."""
    inner, _ = strip_optional(field.annotation)
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
            if isinstance(value, BaseModel) and ((key,) in sections or where + (key,) in sections):
                value = value.model_dump(exclude_unset=True)  # a section given as an object
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


def flatten(models: type | Sequence[type], values: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`nest`: every leaf at the top by its name (``{"optim": {"learning_rate": 1}}``
    -> ``{"learning_rate": 1}``); flat or mixed input works too, dict-valued leaves stay dicts."""
    _, sections = _index([models] if isinstance(models, type) else list(models))
    out: dict[str, Any] = {}

    def walk(mapping: Mapping[str, Any], where: tuple[str, ...]) -> None:
        for key, value in mapping.items():
            if where + (key,) in sections and isinstance(value, Mapping):
                walk(value, where + (key,))
            else:
                out[key] = value

    walk(nest(models, values), ())
    return out
