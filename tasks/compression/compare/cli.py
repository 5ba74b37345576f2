"""``finetune-kit compress compare``: options generated from :class:`~.config.CompareConfig` ->
:func:`~.runner.run_compare`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from finetune_kit.tasks.cli_errors import fail, fail_run
from finetune_kit.tasks.cli_options import CONFIG_OPTION, config_command, given, nest, resolve_device
from finetune_kit.tasks.compression.compare.config import CompareConfig
from finetune_kit.tasks.compression.console_warnings import one_line_warnings

__all__ = ["register"]

#: keys a comparison folder's ``config.json`` records about itself (dropped when it is continued)
_RECORDED = ("kind", "model", "base_lmbda", "resume")


def register(app: typer.Typer) -> None:
    """Add the ``compare`` command to the ``compress`` sub-app."""

    @config_command(app, "compare", CompareConfig, defaults={"device": "auto"},
                    help="Compare fine-tuning workflows with fine-tune-all and from-scratch at the same step budget, "
                         "from one base checkpoint, evaluated with real bitstreams: table, R-D plot, BD-rates "
                         "(docs/compression_finetuning.md).")
    def compare_cmd(ctx: typer.Context, values: dict, config: Optional[Path] = CONFIG_OPTION) -> None:
        """Compare fine-tuning workflows at one budget."""
        # local: the comparison imports torch and CompressAI (start-up time of --help)
        from finetune_kit.tasks.compression.compare.runner import run_compare

        values = dict(values)
        resume = values.get("resume")
        if resume is not None:
            stored = Path(resume) / "config.json"
            if not stored.is_file():
                fail(f"{resume} has no config.json: pass a folder written by compress compare")
            old = {k: v for k, v in json.loads(stored.read_text()).items() if k not in _RECORDED}
            typed = {k: v for k, v in values.items() if given(ctx, k)}
            values = {**nest(CompareConfig, old), **typed, "resume": resume}
        values["device"], line = resolve_device(values.get("device") or "auto", bool(values.pop("cuda", False)))
        typer.echo(line, err=True)
        try:
            cfg = CompareConfig.model_validate(values)
        except ValidationError as exc:
            fail(exc)
        try:
            with one_line_warnings():  # e.g. a workflow's option warning: one line, no source path
                res = run_compare(cfg, echo=typer.echo)
        except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as exc:
            fail_run(exc)
        typer.echo(res["markdown"])
        typer.echo(f"comparison folder: {res['folder']}")
