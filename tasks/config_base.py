"""The base of every typed configuration section of the tasks.

:class:`ConfigSection` is a pydantic model that refuses unknown keys (``extra="forbid"``) and
refuses a non-finite number (``inf``, ``-inf``, ``nan``) in any ``float`` field, before any run
folder exists: an infinite learning rate or lambda only fails at the first step. A field where
infinity has a meaning opts out with ``json_schema_extra={"allow_inf": True}``.
"""
from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

__all__ = ["ConfigSection"]


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
