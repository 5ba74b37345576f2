"""``finetune-kit compress finetune`` (placeholder until the fine-tuning issue lands)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``finetune`` command to the ``compress`` sub-app."""
