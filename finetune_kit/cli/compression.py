"""CLI commands for learned image compression (placeholder until that issue lands)."""
from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
