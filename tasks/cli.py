"""The ``finetune-kit`` command, the composition root: registers each task's sub-commands.

This is the one place that wires the library (``finetune_kit``), the built-in strategies
(``finetune_kit.strategies``) and the tasks together. Each task's ``cli`` module parses
options into a typed config object and calls into its task; heavy imports (torch, timm,
compressai) happen inside the commands so ``--help`` is fast.
"""
from __future__ import annotations

import typer

from finetune_kit.tasks import experiments_cli
from finetune_kit.tasks.classification import cli as classification
from finetune_kit.tasks.compression import cli as compression
from finetune_kit.tasks.compression.finetune import cli as compression_finetune

app = typer.Typer(
    name="finetune-kit",
    help="Fine-tune pretrained vision models (timm) and learned image compression models "
    "(HPCM on CompressAI) without catastrophic forgetting.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _register_builtins() -> None:
    """Fine-tune pretrained vision models and learned image compression models."""
    # The entry point registers the built-in strategies when the package is installed; the
    # composition root also imports them, so a checkout without package metadata has them too.
    import finetune_kit.strategies  # noqa: F401


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
experiments_cli.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
