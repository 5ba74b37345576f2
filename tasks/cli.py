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
from finetune_kit.tasks.classification import wise_ft_cli
from finetune_kit.tasks.compression import cli as compression
from finetune_kit.tasks.compression.finetune import cli as compression_finetune

class OneLineErrorsTyper(typer.Typer):
    """A Typer app whose unexpected errors end in one line on stderr and exit code 1.

    An exception no command turned into its own message (a bug, a NaN loss, a library error)
    prints ``error: Type: message`` - the line ``status.json`` records when a run folder
    exists - and where the traceback went: ``RUN/traceback.log`` when the run had a folder,
    else a log file in the temp folder. ``FINETUNE_KIT_TRACEBACK=1`` shows the traceback on the
    terminal instead (for debugging). ``KeyboardInterrupt`` exits with 130 and one line.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import os
        import sys

        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - rendered as one line, traceback to a log
            if os.environ.get("FINETUNE_KIT_TRACEBACK", "").strip() in ("1", "true", "yes"):
                raise
            sys.exit(render_failure(exc))


def render_failure(exc: BaseException) -> int:
    """Print ``error: <one line>`` for ``exc`` on stderr, its traceback into the run folder's
    ``traceback.log`` (or a temp file when no run folder was made); returns the exit code (1)."""
    import os
    import tempfile

    from finetune_kit.runs.lifecycle import error_line, write_traceback

    run_dir = getattr(exc, "finetune_kit_run_dir", None)
    log = None
    if run_dir:
        log = Path(run_dir) / "traceback.log"  # written by run_lifecycle
    else:
        log = write_traceback(tempfile.gettempdir(), exc)
        if log is not None:
            target = log.with_name(f"finetune-kit-error-{os.getpid()}.log")
            os.replace(log, target)
            log = target
    where = f" (traceback in {log})" if log is not None else ""
    typer.echo(f"error: {error_line(exc)}{where}", err=True)
    return 1


app = OneLineErrorsTyper(
    name="finetune-kit",
    help="Fine-tune pretrained vision models (timm) and learned image compression models "
    "(HPCM on CompressAI) without catastrophic forgetting.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=LaunchingGroup,  # --nproc N / --sync-bn anywhere on the line: re-run under torchrun (docs/distributed.md)
)


@app.callback()
def _register_builtins(
    trust_pickled_weights: bool = option(False, "trust_pickled_weights", help="SECURITY RISK: load weights and "
                                         "checkpoint files with the full unpickler, which runs any code the file "
                                         "holds. Only for files from a source you trust; by default files are read "
                                         "with torch.load(weights_only=True) or safetensors."),
) -> None:
    """Fine-tune pretrained vision models and learned image compression models."""
    if trust_pickled_weights:
        import os

        from finetune_kit.runs.safe_load import TRUST_ENV

        os.environ[TRUST_ENV] = "1"  # read by finetune_kit.runs.safe_load (also in sweep trial processes)
        typer.echo("WARNING: --trust-pickled-weights: weights files are unpickled in full and can run code", err=True)
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
    if {"source_lmbda", "lr_mults"} & set(values):  # compress train records use_balanced too
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
wise_ft_cli.register(app)
compression_finetune.register(compression.app)
app.add_typer(compression.app, name="compress", help="Train, fine-tune and evaluate learned image compression models.")
experiments_cli.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
