"""Python warnings on the console as one ``WARNING: message`` line each (no source path, no code
line), for the commands that run other commands' configs (``compress compare``)."""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import typer

__all__ = ["one_line_warnings"]


@contextlib.contextmanager
def one_line_warnings(*always: type[Warning]) -> Iterator[None]:
    """Inside the block every warning prints as one yellow ``WARNING: message`` line on stderr;
    the categories in ``always`` print every time (the others once per message and place)."""
    with warnings.catch_warnings():
        for category in always:
            warnings.simplefilter("always", category)
        warnings.showwarning = lambda message, *args, **kwargs: typer.secho(f"WARNING: {message}", fg="yellow",
                                                                            err=True)
        yield
