"""The classification run: data -> model -> strategy hooks -> epochs -> calibrated test report.

:func:`run_training` is what ``finetune-kit classify``, ``compare`` and ``train_classification.py``
call. It reads top-down as the run's steps, each a function a test can call on its own:

1. :func:`~finetune_kit.tasks.classification.setup.build`: data and split, model, strategy,
   optimizer and schedule, in a :class:`~finetune_kit.tasks.classification.setup.TrainingRun`;
2. :func:`~finetune_kit.tasks.classification.setup.start_run`: the run folder, logger, checkpoints;
3. inside :func:`finetune_kit.runs.lifecycle.run_lifecycle` (status running / completed /
   interrupted / failed): :func:`~finetune_kit.tasks.classification.loop.restore` when resuming,
   :func:`~finetune_kit.tasks.classification.loop.train_epochs` (``fit_one_epoch`` + ``end_epoch``
   per epoch), and :func:`~finetune_kit.tasks.classification.report.report`.
"""
from __future__ import annotations

from pathlib import Path

from finetune_kit.distributed import broadcast_object
from finetune_kit.runs.checkpoint import check_checkpoint_folder
from finetune_kit.runs.lifecycle import run_lifecycle
from finetune_kit.runs.run_dir import RunDir
from finetune_kit.tasks.classification.config import ClassificationConfig
from finetune_kit.tasks.classification.forgetting_run import start_forgetting
from finetune_kit.tasks.classification.linear_probe import exact_probe_applies, probe_head, solve_run
from finetune_kit.tasks.classification.loop import restore, train_epochs
from finetune_kit.tasks.classification.multilabel_data import is_multilabel
from finetune_kit.tasks.classification.multilabel_report import multilabel_report
from finetune_kit.tasks.classification.report import report
from finetune_kit.tasks.classification.setup import build, start_run

__all__ = ["run_training", "resume_config"]


def resume_config(run_path: str | Path) -> ClassificationConfig:
    """The saved config of an interrupted run, pointing at that run folder (``stop_after_epoch``
    cleared; the named options of other strategies back at their defaults, see
    :meth:`ClassificationConfig.for_strategy`).

    A run killed before its first checkpoint was complete (``config.json`` and ``split.csv``, no
    checkpoint) is accepted: :func:`run_training` then starts it again in the same folder.

    Raises:
        FileNotFoundError: not a run folder (names the path).
        ValueError: its ``checkpoints/`` is a symbolic link or its ``checkpoints.json`` is not what a
            run writes (:class:`~finetune_kit.runs.checkpoint.CheckpointIndexError`).
    """
    run = RunDir(run_path)
    check_checkpoint_folder(run.checkpoints)  # untrusted input: a link or a forged index is refused here
    has_checkpoint = (run.checkpoints / "last.pt").exists() or any(run.checkpoints.glob("epoch_*.pt"))
    if not has_checkpoint and not ((run.path / "config.json").is_file() and (run.path / "split.csv").is_file()):
        raise FileNotFoundError(f"--resume {run.path}: no checkpoints/last.pt there; pass the folder of a run that "
                                "finished at least one epoch")
    cfg = ClassificationConfig.model_validate(run.read_json("config.json"))
    return cfg.for_strategy(cfg.strategy.ft_strategy, run_dir=str(run.path), stop_after_epoch=None)


def _train(state, resume: bool, train_epochs) -> int | None:
    """The exact linear probe (``linear``), or the epochs after an optional probed head (LP-FT,
    ``--probe-init``)."""

    if exact_probe_applies(state):
        if not resume:
            solve_run(state)
        return None
    if not resume and state.cfg.probes_head:
        probe_head(state)
        state.strategy.on_head_probed()
    return train_epochs(state)


def run_training(cfg: ClassificationConfig, *, resume: bool = False, image_cache=None, console=None) -> dict:
    """Train, select the best epoch, calibrate, evaluate; returns the final metrics dict.

    Args:
        cfg: the validated config (``cfg.output.run_dir`` set when resuming, see :func:`resume_config`).
        resume: continue from ``RUN/checkpoints/last.pt`` (from epoch 1, in the same folder, when the
            run stopped before its first checkpoint was complete). Default False.
        image_cache: an :class:`~finetune_kit.tasks.classification.transforms.ImageCache` to share decoded
            images between runs (``compare``); made here when None or of another size.
        console: a rich Console for messages (default: stderr).

    Returns:
        The content of ``RUN/metrics.json``, or ``{"status": "interrupted", "run_dir", "epoch"}``
        when stopped by ``stop_after_epoch`` (status ``interrupted``, resumable).

    Raises:
        ConfigError, DataError, CorruptImageError, ModelError, UnknownStrategyError,
        StrategyOptionError: bad input, with one-line messages, before any run folder is written.
        ValueError: e.g. an empty split or an odd batch size with mixup (also before the folder).
        NonFiniteLossError and anything raised once the folder exists: the folder's status says
        ``failed`` with the message (``interrupted`` for Ctrl-C).
    """

    state = start_run(build(cfg, resume=resume, image_cache=image_cache, console=console))
    start_forgetting(state)  # pretrained weights and source head kept before any step; L2-SP in the loss
    # killed before its first checkpoint was complete (rank 0 decides under DDP: it alone holds the manager)
    if resume and broadcast_object(state.checkpoints is not None and state.checkpoints.last() is None):
        state.console.print(f"{state.run.path} holds no complete checkpoint (the run stopped during its first "
                            "save): starting it again at epoch 1 in the same folder")
        state.run.truncate_history(0)  # the records of the killed attempt
        resume = False
    with run_lifecycle(state.run, state.logger) as outcome:
        if resume:
            restore(state)
        stopped = _train(state, resume, train_epochs)
        if stopped is not None:
            outcome.stop(f"stopped after epoch {stopped}")
            state.console.print(f"stopped after epoch {stopped} of {cfg.epochs} (--stop-after-epoch "
                                f"{cfg.runtime.stop_after_epoch}): continue with finetune-kit classify --resume "
                                f"{state.run.path}")
            return {"status": "interrupted", "run_dir": str(state.run.path), "epoch": stopped}
        return multilabel_report(state) if is_multilabel(state.cfg) else report(state)
