"""How every ``finetune-kit`` command reports refused input: one line, one exit code.

A command catches the errors it expects (bad options, bad data, a refused file) and hands them to
:func:`fail`, which prints ``error: <one line>`` on stderr and exits with :data:`EXIT_REFUSED` (2,
click's own code for a usage error). Other exceptions are bugs and keep their traceback.
"""
from __future__ import annotations

from typing import NoReturn

import typer
from pydantic import ValidationError

__all__ = ["EXIT_REFUSED", "one_line", "fail"]

#: exit code of every command for refused input (bad option, data, file); click uses 2 for usage errors
EXIT_REFUSED = 2


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; a pydantic ``ValidationError`` as ``--field: message; ...``."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"] if x != "data")
            parts.append(f"--{loc.replace('_', '-')}: {err['msg']}" if loc else err["msg"])
        return "; ".join(parts)
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(exc: BaseException | str, code: int = EXIT_REFUSED) -> NoReturn:
    """Print ``error: <one line>`` on stderr and exit with ``code`` (default :data:`EXIT_REFUSED`)."""
    message = exc if isinstance(exc, str) else one_line(exc)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
