"""CLI of learned image compression: ``finetune-kit compress train|finetune|eval|convert-official|compare``.

Thin: every option is generated from a config field (:func:`finetune_kit.tasks.cli_options.config_command`)
-> a validated config -> a task function. ``compress train`` and ``compress finetune`` share one block
of options, the fields of :class:`~finetune_kit.tasks.compression.run.config.RunConfig` (train refuses
``--checkpoint`` in one line naming ``compress finetune``; their defaults differ: :class:`~finetune_kit.tasks.compression.run.config.TrainConfig`,
:class:`~finetune_kit.tasks.compression.run.config.FinetuneConfig`); ``finetune`` is registered by
:mod:`finetune_kit.tasks.compression.finetune.cli`. The guides' and CompressAI's spellings are aliases
on the fields (``-m``, ``-d/--dataset``, ``-b``, ``--finetune CKPT``, ``--finetune_lr``,
``--save_path`` ...); ``--cuda`` is ``--device cuda``. Options typed on the command line override a
``--config FILE`` (YAML or JSON, flat option names or sections; a run's ``config.json`` works).
torch and CompressAI are imported inside the commands so ``finetune-kit --help`` stays fast.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, List, Mapping, Optional

import typer
from pydantic import ValidationError

from finetune_kit.tasks.cli_errors import fail, fail_run
from finetune_kit.tasks.cli_options import (CONFIG_OPTION, config_command, deep_merge, given, nest, read_config_file,
                                            resolve_device)
from finetune_kit.tasks.compression.config import ConvertConfig, EvalConfig
from finetune_kit.tasks.compression.run.config import RECORDED_KEYS, OptionWarning, RunConfig, TrainConfig

__all__ = ["app", "compression_file_values", "command_values", "validate", "run_config", "run_train",
           "RECORDED_KEYS", "RUN_COMMAND"]

app = typer.Typer(no_args_is_help=True)

#: what ``compress train`` and ``compress finetune`` pass to :func:`config_command` besides the model:
#: ``--device auto`` on the command line (the configs' own default is ``cpu``), ``--config`` files
#: read by :func:`compression_file_values`, extra arguments for the guides' ``--step_epochs 1000 2000``
RUN_COMMAND = dict(defaults={"device": "auto"}, context_settings={"allow_extra_args": True})


def compression_file_values(path: str | Path) -> dict[str, Any]:
    """The options of a compression ``--config`` file (YAML or JSON, flat or in sections).

    A run's ``config.json`` works: :data:`RECORDED_KEYS` are dropped and a recorded
    ``gamma_strategy`` that only restates the default (``constant``/``fixed`` without
    ``adaptive_gamma``) is left to be derived again.

    Raises:
        FileNotFoundError, ValueError: see :func:`finetune_kit.tasks.cli_options.read_config_file`.
    """
    values = read_config_file(path)
    for key in RECORDED_KEYS:
        values.pop(key, None)
    flat = {k: v for section in values.values() if isinstance(section, Mapping) for k, v in section.items()}
    flat.update(values)
    derived = "fixed" if flat.get("use_hierarchical") else "constant"
    if flat.get("gamma_strategy") == derived and not flat.get("adaptive_gamma"):
        values.pop("gamma_strategy", None)
        if isinstance(values.get("balanced"), Mapping):
            values["balanced"] = {k: v for k, v in values["balanced"].items() if k != "gamma_strategy"}
    return values


def _step_epochs(ctx: typer.Context, values: dict[str, Any]) -> None:
    """The guides' ``--step_epochs 1000 2000``: the trailing numbers arrive as extra arguments of
    ``ctx`` and join the option's value. Other extra arguments end the command in one line."""
    extra = list(ctx.args)
    if not extra:
        return
    given_steps = values.get("balanced", {}).get("step_epochs")
    if not given_steps or not all(a.isdigit() for a in extra):
        fail(f"unexpected argument(s) {' '.join(extra)}: options take one value each (only --step_epochs takes "
             "several numbers)")
    values["balanced"]["step_epochs"] = f"{given_steps},{','.join(extra)}"


def command_values(ctx: typer.Context, model: type[RunConfig], values: dict[str, Any],
                   config: Optional[Path]) -> dict[str, Any]:
    """The nested values of a ``compress train``/``finetune`` command line, ready to validate.

    ``values`` are the generated command's (defaults < ``--config`` < typed); the guides'
    ``--step_epochs 1000 2000`` joined; with ``--resume RUN`` and no ``--config``, the run's
    ``config.json`` goes under them (so ``--resume RUN`` alone continues it; a typed ``--lambda``
    or ``--quality`` replaces both recorded ones); ``--device auto``/``--cuda`` resolved (the
    device line is printed, the first line of output). A bad file: one ``error:`` line, exit 2.
    """
    values = dict(values)
    _step_epochs(ctx, values)
    resume = values.get("run", {}).get("resume")
    if config is None and resume is not None:
        # local: checkpoints imports torch (start-up time of --help)
        from finetune_kit.tasks.compression.checkpoints import resume_config_file

        recorded_file = resume_config_file(resume)
        try:
            recorded = nest(model, compression_file_values(recorded_file)) if recorded_file else {}
        except (FileNotFoundError, ValueError) as exc:
            fail(exc)
        if given(ctx, "lmbda") or given(ctx, "quality"):
            recorded.get("source", {}).pop("lmbda", None)
            recorded.get("source", {}).pop("quality", None)
        typed = dict(values)
        if not given(ctx, "device"):  # the command's default (auto) does not replace the recorded device
            typed["run"] = {k: v for k, v in typed.get("run", {}).items() if k != "device"}
        values = deep_merge(recorded, typed)
    run = values.setdefault("run", {})
    device, line = resolve_device(run.get("device") or "auto", bool(run.pop("cuda", False)))
    run["device"] = device
    typer.echo(line, err=True)
    return values


def validate(model: type, values: Mapping[str, Any]) -> Any:
    """``model.model_validate(values)`` (flat or nested); a refused value ends the command with one
    ``error: <option>: <reason>`` line (exit 2)."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = str(err["loc"][-1]) if err["loc"] else "options"
        fail(f"{where}: {err['msg'].removeprefix('Value error, ')}")


def run_config(model: type[RunConfig], values: Mapping[str, Any]) -> dict:
    """Validate ``values`` as ``model`` and run it (:func:`finetune_kit.tasks.compression.run.loop.run`);
    option and from-scratch warnings print one ``WARNING:`` line each. Returns the final metrics.
    Bad options: one ``error:`` line, exit 2; a failed run: one line, exit 1."""
    # local: the run imports torch and CompressAI (start-up time of every command's --help)
    from finetune_kit.tasks.compression.run.loop import run
    from finetune_kit.tasks.compression.run.source import FromScratchWarning

    with warnings.catch_warnings():  # option and from-scratch warnings: one line each
        warnings.simplefilter("always", FromScratchWarning)
        warnings.simplefilter("always", OptionWarning)
        warnings.showwarning = lambda m, c, *a, **k: typer.secho(f"WARNING: {m}", fg="yellow", err=True)
        cfg = validate(model, values)
        try:
            return run(cfg)
        except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as exc:
            fail_run(exc)


def run_train(values: Mapping[str, Any]) -> dict:
    """``compress train`` of ``values`` (flat option names or sections; ``device`` resolved, see
    :func:`command_values`): prints the run folder and the last checkpoint; returns the final metrics."""
    final = run_config(TrainConfig, values)
    typer.echo(f"run folder: {final['run_dir']}\ncheckpoint: {final.get('checkpoint')}")
    return final


@config_command(app, "train", TrainConfig, help="Train a compression model from scratch: the one compression run "
                "with no source checkpoint and the full strategy (CompressAI recipe; writes a run folder).",
                read_file=compression_file_values, **RUN_COMMAND)
def train_cmd(ctx: typer.Context, values: dict, config: Optional[Path] = CONFIG_OPTION) -> None:
    """Train a compression model from scratch."""
    run_train(command_values(ctx, TrainConfig, values, config))


@config_command(app, "eval", EvalConfig, exclude=("checkpoints",), defaults={"device": "auto"},
                help="Evaluate checkpoints with real bitstreams (rANS): bpp, PSNR, MS-SSIM, times, R-D plot, BD-rate.")
def eval_cmd(ctx: typer.Context, values: dict,
             checkpoints: Optional[List[Path]] = typer.Argument(None, help="Checkpoint files (one per lambda for an "
                                                                "R-D curve); or 'checkpoints' in --config."),
             config: Optional[Path] = CONFIG_OPTION) -> None:
    """Evaluate checkpoints with real bitstreams."""
    # local: evaluation imports torch and CompressAI (start-up time of --help)
    from finetune_kit.tasks.compression.evaluate import run_eval

    values = dict(values)
    if checkpoints:
        values["checkpoints"] = list(checkpoints)
    device, line = resolve_device(values.get("device") or "auto", bool(values.pop("cuda", False)))
    values["device"] = device
    typer.echo(line, err=True)
    cfg = validate(EvalConfig, values)
    try:
        res = run_eval(cfg, pad=cfg.pad)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail_run(exc)
    bds = res["bd"].get("families") or {"": res["bd"]}
    for family, bd in bds.items():
        bd_txt = (f"BD-rate {bd['bd_rate']:+.2f} %, BD-PSNR {bd['bd_psnr']:+.3f} dB vs {bd['anchor']}"
                  if bd.get("bd_rate") is not None else f"BD-rate vs {bd['anchor']}: n/a ({bd.get('reason')})")
        typer.echo(f"{family}: {bd_txt}" if family else bd_txt)
    typer.echo(f"results: {Path(cfg.output) / 'results.json'}\nplot: {res['plot']}")


@config_command(app, "convert-official", ConvertConfig, help="Convert an official HPCM checkpoint for "
                "`compress eval` / `compress finetune` (safe load, every tensor mapped).")
def convert_official_cmd(values: dict, checkpoint: Path = typer.Argument(..., help="Official HPCM checkpoint "
                         "(github.com/lyq133/LIC-HPCM), e.g. 0.0067.pth.tar.")) -> None:
    """Convert an official HPCM checkpoint."""
    # local: the conversion imports torch (start-up time of --help)
    from finetune_kit.tasks.compression.convert import convert_official_checkpoint

    cfg = validate(ConvertConfig, values)
    try:
        out, rep = convert_official_checkpoint(checkpoint, cfg.arch, cfg.output, lmbda=cfg.lmbda)
    except (ValueError, FileNotFoundError) as exc:
        fail_run(exc)
    typer.echo(f"{rep.summary()}\nwrote {out} (model hpcm-{cfg.arch}); evaluate with: finetune-kit compress eval {out} "
               "--data DIR --pad centred")


# `compress compare` (workflows vs fine-tune-all and from-scratch at one budget): its own module
from finetune_kit.tasks.compression.compare.cli import register as register_compare  # noqa: E402  (registers on app)

register_compare(app)
