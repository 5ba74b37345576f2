"""How every ``finetune-kit`` command reports refused input: one line, one exit code.

A command catches the errors it expects (bad options, bad data, a refused file) and hands them to
:func:`fail`, which prints ``error: <one line>`` on stderr and exits with :data:`EXIT_REFUSED` (2,
click's own code for a usage error). Other exceptions are bugs and keep their traceback.
"""
from __future__ import annotations

from typing import NoReturn

import typer
from pydantic import ValidationError

__all__ = ["EXIT_REFUSED", "EXIT_RUN_FAILED", "one_line", "fail", "fail_run"]

#: exit code of every command for refused input (bad option, data, file); click uses 2 for usage errors
EXIT_REFUSED = 2
#: exit code of a run that started (its folder exists, its status says ``failed``) and then failed
EXIT_RUN_FAILED = 1


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; a pydantic ``ValidationError`` as ``--option: message; ...``,
    the option named by the field (the leaf of a nested config: ``optim.learning_rate`` -> ``--learning-rate``)."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            names = [str(x) for x in err["loc"] if isinstance(x, str)]
            loc = names[-1] if names else ""
            if err.get("type") == "extra_forbidden":  # a key of a config file, named as written
                parts.append(f"{loc}: unknown option; check its spelling against --help")
            else:
                parts.append(f"--{loc.replace('_', '-')}: {err['msg']}" if loc else err["msg"])
        return "; ".join(parts)
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(exc: BaseException | str, code: int = EXIT_REFUSED) -> NoReturn:
    """Print ``error: <one line>`` on stderr and exit with ``code`` (default :data:`EXIT_REFUSED`)."""
    message = exc if isinstance(exc, str) else one_line(exc)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def fail_run(exc: BaseException) -> NoReturn:
    """:func:`fail` for an error raised by a training or evaluation command: exit
    :data:`EXIT_RUN_FAILED` when it ended a run in its folder (the run lifecycle marks such an error
    with ``finetune_kit_run_dir``), else :data:`EXIT_REFUSED` (refused before any run folder existed)."""
    fail(exc, EXIT_RUN_FAILED if getattr(exc, "finetune_kit_run_dir", None) else EXIT_REFUSED)
