"""The ``finetune-kit`` command: registers the sub-commands of each task.

Each command module parses options into a typed config object and calls into ``tasks``;
heavy imports (torch, timm, compressai) happen inside the commands so ``--help`` is fast.
"""
from __future__ import annotations

import typer

from finetune_kit.cli import analysis, classification, compression, compression_finetune

app = typer.Typer(
    name="finetune-kit",
    help="Fine-tune pretrained vision models (timm) and learned image compression models "
    "(HPCM on CompressAI) without catastrophic forgetting.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.command("strategies")
def strategies_cmd() -> None:
    """List the registered fine-tuning strategies with a one-line description each."""
    from rich.console import Console
    from rich.table import Table

    from finetune_kit.strategy import list_strategies

    table = Table("strategy", "description")
    for name, description in list_strategies().items():
        table.add_row(name, description)
    Console().print(table)


classification.register(app)
compression_finetune.register(compression.app)
app.add_typer(compression.app, name="compress", help="Train, fine-tune and evaluate learned image compression models.")
analysis.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
