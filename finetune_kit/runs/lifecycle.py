"""The life cycle of one run folder: ``running`` -> ``completed`` | ``interrupted`` | ``failed``.

:func:`run_lifecycle` wraps the body of a training command: it records ``running`` on entry,
``completed`` when the block ends normally, ``interrupted`` on ``KeyboardInterrupt`` (Ctrl-C,
or a signal turned into one), ``failed`` with ``"Type: message"`` on any other exception
(re-raised in both cases), and always closes the logger.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

__all__ = ["run_lifecycle"]


@contextlib.contextmanager
def run_lifecycle(run_dir: Any, logger: Optional[Any] = None) -> Iterator[Any]:
    """Record the status of ``run_dir`` (a :class:`finetune_kit.runs.run_dir.RunDir`) around a block.

    Yields ``run_dir``. ``logger`` (anything with ``finish()``, e.g.
    :class:`finetune_kit.runs.logger.RunLogger`) is finished on every exit path. Exceptions are
    re-raised after the status is written.
    """
    run_dir.set_status("running")
    try:
        yield run_dir
    except KeyboardInterrupt as exc:
        run_dir.set_status("interrupted", f"KeyboardInterrupt: {exc}" if str(exc) else "KeyboardInterrupt")
        raise
    except BaseException as exc:
        run_dir.set_status("failed", f"{type(exc).__name__}: {exc}")
        raise
    else:
        run_dir.set_status("completed")
    finally:
        if logger is not None:
            logger.finish()
