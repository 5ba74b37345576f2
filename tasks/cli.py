"""The ``finetune-kit`` command, the composition root: registers each task's sub-commands.

This is the one place that wires the library (``finetune_kit``), the built-in strategies
(``finetune_kit.strategies``) and the tasks together. Each task's ``cli`` module parses
options into a typed config object and calls into its task; heavy imports (torch, timm,
compressai) happen inside the commands so ``--help`` is fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from finetune_kit.runs.run_dir import recorded_command
from finetune_kit.tasks import experiments_cli
from finetune_kit.tasks.classification import cli as classification
from finetune_kit.tasks.classification import export_cli, wise_ft_cli
from finetune_kit.tasks.classification.config_files import classification_file_values, drop_foreign_strategy_fields
from finetune_kit.tasks.cli_errors import fail
from finetune_kit.tasks.cli_options import (config_command, option, parse_assignments, read_config_file,
                                            resolve_device)
from finetune_kit.tasks.compression import cli as compression
from finetune_kit.tasks.compression.finetune import cli as compression_finetune
from finetune_kit.tasks.config_base import ConfigSection, option_field
from finetune_kit.tasks.launch import LAUNCH_HELP, LaunchingGroup


class OneLineErrorsTyper(typer.Typer):
    """A Typer app whose unexpected errors end in one line on stderr and exit code 1, and whose
    usage errors (click's: a value that is not a number, an unknown option) in one line and exit 2.

    An exception no command turned into its own message (a bug, a NaN loss, a library error)
    prints ``error: Type: message`` - the line ``status.json`` records when a run folder
    exists - and where the traceback went: ``RUN/traceback.log`` when the run had a folder,
    else a log file in the temp folder. ``FINETUNE_KIT_TRACEBACK=1`` shows the traceback on the
    terminal instead (for debugging). ``KeyboardInterrupt`` exits with 130 and one line.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import os
        import sys

        if not kwargs.pop("standalone_mode", True):
            return super().__call__(*args, standalone_mode=False, **kwargs)
        try:  # click's own usage errors (a bad number, an unknown option) as one line too, exit 2
            rv = super().__call__(*args, standalone_mode=False, **kwargs)
            sys.exit(rv if isinstance(rv, int) else 0)  # typer.Exit(code) comes back as its code
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - rendered as one line, traceback to a log
            if type(exc).__module__.endswith("click.exceptions"):  # click's (or typer's vendored click's)
                message = " ".join((exc.format_message() if hasattr(exc, "format_message") else "aborted").split())
                if message:  # empty after no_args_is_help printed the help
                    typer.echo(f"error: {message} (see --help)", err=True)
                sys.exit(getattr(exc, "exit_code", 1))
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
    epilog=LAUNCH_HELP,
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


#: the commands ``rerun`` can start again, as recorded in a run folder
RERUN_COMMANDS = ("classify", "compare", "compress train", "compress finetune")


def detect_task(values: dict[str, Any], run_dir: Path | None = None) -> str:
    """Which command made a run folder: ``classify``, ``compare``, ``compress train`` or
    ``compress finetune``. The command ``run_dir`` records (``environment.json`` ``command``,
    :func:`~finetune_kit.runs.run_dir.recorded_command`) when it is one of them; for folders that
    record none (written by older versions, ``compare`` folders), guessed from the keys its
    ``config.json`` (``values``) holds.

    Raises:
        ValueError: no recorded command and keys of none of them.
    """
    recorded = recorded_command(run_dir) if run_dir is not None else None
    if recorded in RERUN_COMMANDS:
        return recorded
    if isinstance(values.get("base"), dict) and "strategies" in values:
        return "compare"
    if "ft_strategy" in values or "ft_strategy" in (values.get("strategy") or {}):  # flat (earlier) or nested
        return "classify"
    if "lmbda" in values and values.get("command") in ("train", "finetune"):  # the one compression run records it
        return f"compress {values['command']}"
    if {"source_lmbda", "lr_mults"} & set(values):  # compress train records use_balanced too
        return "compress finetune"
    if {"metric", "lmbda", "lr"} <= set(values):
        return "compress train"
    raise ValueError("config.json of no known command (classify, compare, compress train, compress finetune)")


class RerunOptions(ConfigSection):
    """``finetune-kit rerun RUN``'s options."""

    set: Optional[list[str]] = option_field(None, "Change one setting of the recorded config (repeatable; config "
                                            "key names, a section prefix allowed: optim.learning_rate; VALUE read "
                                            "as a JSON scalar: 3, 0.5, true, null, else a string).",
                                            metavar="KEY=VALUE")
    output_dir: Optional[str] = option_field(None, "Parent folder of the new run (default: the recorded one).",
                                             aliases=("--output", "-o"), metavar="PATH")


@config_command(app, "rerun", RerunOptions)
def rerun_cmd(values: dict, run_dir: Path = typer.Argument(..., help="A run folder (classify, compare, compress "
                                                           "train or compress finetune) holding its config.json.")
              ) -> None:
    """Start a NEW run from a run folder's config.json (same settings, so the same metrics on a
    CPU), optionally changed by --set KEY=VALUE; the old folder is not touched."""
    config = Path(run_dir) / "config.json"
    try:
        task = detect_task(read_config_file(config), Path(run_dir))
        sets = parse_assignments(values.get("set") or [])
    except (FileNotFoundError, ValueError) as exc:
        fail(exc)
    sets = {k.rsplit(".", 1)[-1]: v for k, v in sets.items()}  # data.label_preset, optim.lr: the leaf names
    if values.get("output_dir") is not None:
        sets["output_dir"] = str(values["output_dir"])
    typer.echo(f"rerun of {run_dir} ({task})" + (f" with {', '.join(f'{k}={v}' for k, v in sets.items())}"
                                                  if sets else ""), err=True)
    if task in ("classify", "compare"):
        try:
            file_values = {**classification_file_values(config), **sets}
            if task == "classify":
                drop_foreign_strategy_fields(file_values, keep=set(sets))
                classification.run_classify(file_values)
            else:
                classification.run_compare(file_values)
        except classification.expected_errors() as exc:
            fail(exc)
        return
    file_values = {**compression.compression_file_values(config), **sets}
    file_values["device"], line = resolve_device(file_values.get("device") or "auto")
    typer.echo(line, err=True)
    file_values = {k: v for k, v in file_values.items() if v is not None}
    if task == "compress train":
        compression.run_train(file_values)
    else:
        compression_finetune.run_finetune(file_values)


classification.register(app)
wise_ft_cli.register(app)
export_cli.register(app)
compression_finetune.register(compression.app)
app.add_typer(compression.app, name="compress", help="Train, fine-tune and evaluate learned image compression models.")
experiments_cli.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
