"""The base of every typed configuration section of the tasks.

:class:`ConfigSection` is a pydantic model that refuses unknown keys (``extra="forbid"``) and
refuses a non-finite number (``inf``, ``-inf``, ``nan``) in any ``float`` field, before any run
folder exists: an infinite learning rate or lambda only fails at the first step. A field where
infinity has a meaning opts out with ``json_schema_extra={"allow_inf": True}``.

:func:`option_field` declares a field that is also a command-line option (its description is the
help, its aliases extra option names; see :mod:`finetune_kit.tasks.cli_options`), and
:func:`absolute_path` is the one validator that stores a path absolute.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = ["ConfigSection", "option_field", "absolute_path"]


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
