"""CLI commands for the classification task (placeholder until that issue lands)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
