"""The ``finetune-kit`` command, the composition root: registers each task's sub-commands.

This is the one place that wires the library (``finetune_kit``), the built-in strategies
(``finetune_kit.strategies``) and the tasks together. Each task's ``cli`` module parses
options into a typed config object and calls into its task; heavy imports (torch, timm,
compressai) happen inside the commands so ``--help`` is fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from finetune_kit.tasks.cli_options import option
from finetune_kit.tasks.launch import LaunchingGroup

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
    cls=LaunchingGroup,  # --nproc N / --sync-bn anywhere on the line: re-run under torchrun (docs/distributed.md)
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


def detect_task(values: dict[str, Any]) -> str:
    """Which command wrote a run folder's ``config.json``: ``classify``, ``compare``,
    ``compress train`` or ``compress finetune`` (from the keys each one records).

    Raises:
        ValueError: keys of none of them.
    """
    if isinstance(values.get("base"), dict) and "strategies" in values:
        return "compare"
    if "ft_strategy" in values:
        return "classify"
    if {"source_lmbda", "lr_mults", "use_balanced"} & set(values):
        return "compress finetune"
    if {"metric", "lmbda", "lr"} <= set(values):
        return "compress train"
    raise ValueError("config.json of no known command (classify, compare, compress train, compress finetune)")


@app.command("rerun")
def rerun_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (classify, compare, compress train or compress finetune) "
                                   "holding its config.json."),
    assignments: Optional[List[str]] = option(None, "set", metavar="KEY=VALUE", help="Change one setting of the "
                                              "recorded config (repeatable; config key names, VALUE read as a JSON "
                                              "scalar: 3, 0.5, true, null, else a string)."),
    output_dir: Optional[Path] = option(None, "output_dir", "--output", "-o", help="Parent folder of the new run "
                                        "(default: the recorded one)."),
) -> None:
    """Start a NEW run from a run folder's config.json (same settings, so the same metrics on a
    CPU), optionally changed by --set KEY=VALUE; the old folder is not touched."""
    from finetune_kit.tasks.cli_options import parse_assignments, read_config_file, resolve_device

    config = Path(run_dir) / "config.json"
    try:
        task = detect_task(read_config_file(config))
        sets = parse_assignments(assignments or [])
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    sets = {k.removeprefix("data.").removeprefix("base."): v for k, v in sets.items()}
    if output_dir is not None:
        sets["output_dir"] = str(output_dir)
    typer.echo(f"rerun of {run_dir} ({task})" + (f" with {', '.join(f'{k}={v}' for k, v in sets.items())}"
                                                  if sets else ""), err=True)
    if task in ("classify", "compare"):
        values = {**classification.classification_file_values(config), **sets}
        try:
            if task == "classify":
                classification.drop_foreign_strategy_fields(values, keep=set(sets))
                classification.run_classify(values)
            else:
                classification.run_compare(values)
        except classification._expected_errors() as exc:
            classification._fail(exc)
        return
    values = {**compression.compression_file_values(config), **sets}
    values["device"], line = resolve_device(values.get("device") or "auto")
    typer.echo(line, err=True)
    values = {k: v for k, v in values.items() if v is not None}
    if task == "compress train":
        compression.run_train(values)
    else:
        compression_finetune.run_finetune(values)


classification.register(app)
compression_finetune.register(compression.app)
app.add_typer(compression.app, name="compress", help="Train, fine-tune and evaluate learned image compression models.")
experiments_cli.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
