"""Metric logging to the run folder (always) and to Weights & Biases (offline by default).

wandb never needs a login or network here: ``offline`` keeps runs on disk under
``RUN/wandb`` (upload later with ``wandb sync RUN/wandb/offline-run-*``), ``disabled``
turns it off, ``online`` is for users with an account and network.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from finetune_kit.runs.run_dir import RunDir, to_jsonable

__all__ = ["RunLogger", "WANDB_MODES"]

WANDB_MODES = ("disabled", "offline", "online")


class RunLogger:
    """Logs epoch records to ``RUN/metrics.jsonl`` and mirrors them to wandb.

    Args:
        run_dir: the run folder writer; its ``enabled`` flag makes non-main ranks silent.
        wandb_mode: ``"offline"`` (default), ``"disabled"`` or ``"online"``.
        project: wandb project name (e.g. ``finetune-kit``).
        name: wandb run name (e.g. the experiment tag).
        config: resolved config to attach to the wandb run.

    Raises:
        ValueError: unknown ``wandb_mode``.
    """

    def __init__(self, run_dir: RunDir, *, wandb_mode: str = "offline", project: str = "finetune-kit",
                 name: str | None = None, config: Any = None) -> None:
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb mode {wandb_mode!r} is not one of {', '.join(WANDB_MODES)}")
        self.run_dir = run_dir
        self._wandb = None
        if wandb_mode != "disabled" and run_dir.enabled:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self._wandb = wandb.init(project=project, name=name, mode=wandb_mode, dir=str(run_dir.path),
                                     config=to_jsonable(config) if config is not None else None,
                                     reinit="finish_previous")

    def log(self, record: Mapping[str, Any], step: int | None = None, *, to_file: bool = True) -> None:
        """Log one record (e.g. an epoch's metrics) to the JSON-lines file and wandb."""
        if to_file:
            self.run_dir.log_epoch(record)
        if self._wandb is not None:
            flat = {k: v for k, v in to_jsonable(dict(record)).items() if isinstance(v, (int, float)) and v is not None}
            self._wandb.log(flat, step=step)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Set final metrics as the wandb run summary."""
        if self._wandb is not None:
            for k, v in to_jsonable(dict(metrics)).items():
                if isinstance(v, (int, float)):
                    self._wandb.summary[k] = v

    def finish(self) -> None:
        """Close the wandb run (no-op when disabled)."""
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
