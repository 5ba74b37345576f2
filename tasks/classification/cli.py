"""CLI commands of the classification task: ``classify``, ``compare``, ``predict``, ``evaluate``.

Thin: every option is generated from a field of
:class:`~finetune_kit.tasks.classification.config.ClassificationConfig` (or of a command's own small
model, e.g. ``compare --strategies``) by :func:`finetune_kit.tasks.cli_options.config_command`;
``classify``, ``compare`` and ``evaluate`` share that one block. Values: defaults < ``--config
FILE`` (a run's own ``config.json`` works) < options typed. torch/timm are imported inside the
commands so ``finetune-kit --help`` stays fast. Bad input ends with one line ``error: ...``
naming the thing and the fix, and exit code 2.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional

import typer
from rich.console import Console

from finetune_kit.runs.run_dir import safe_name
from finetune_kit.tasks.classification.config import (
    COMPARE_DEFAULTS, DEMO_HEAD_LR, DEMO_OVERRIDES, STRATEGY_FIELDS, ClassificationConfig, CompareOptions, DataConfig,
    EvaluateOptions, OptimConfig, PredictOptions, ResumeOptions, RuntimeConfig)
from finetune_kit.tasks.classification.config_files import (classification_file_values, drop_foreign_strategy_fields,
                                                            drop_unused_strategy_fields)
from finetune_kit.tasks.cli_errors import fail
from finetune_kit.tasks.cli_options import (CONFIG_OPTION, HELP_VALUES, config_command, deep_merge, given, nest,
                                            resolve_device)
from finetune_kit.tasks.launch import LAUNCH_HELP, handle_launch_options

__all__ = ["register", "run_classify", "run_compare", "expected_errors", "classify_app", "compare_app",
           "main_classify", "main_compare"]

# timm's norm-act layers call torch.jit.script on import of some models; the deprecation notice is noise here
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)

#: the config's leaves that are the run's own record, not options
_RECORDED = ("run_dir",)


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a classification command reports as one line (bad options, data, weights)."""
    # start-up time: these modules import torch and timm, which `finetune-kit --help` must not wait for
    from pydantic import ValidationError

    from finetune_kit.strategy import UnknownStrategyError
    from finetune_kit.tasks.classification.config import ConfigError
    from finetune_kit.tasks.classification.data import DataError
    from finetune_kit.tasks.classification.model import ModelError
    from finetune_kit.tasks.classification.transforms import CorruptImageError

    return (ValidationError, ConfigError, DataError, ModelError, CorruptImageError, UnknownStrategyError,
            FileNotFoundError, ValueError, TypeError)


def _console() -> Console:
    return Console(stderr=True)


def _say_device(values: dict) -> None:
    """Resolve ``runtime.device`` (``auto`` -> cuda/cpu) and print it: the first line of output."""
    runtime = values.setdefault("runtime", {})
    runtime["device"], line = resolve_device(runtime.get("device", "auto"))
    typer.echo(line, err=True)


def run_classify(values: Mapping[str, Any], *, console: Optional[Console] = None) -> dict:
    """Train one classification run from option values (nested sections or flat leaf names, e.g. a
    run's ``config.json`` with changes).

    Resolves ``device`` (``auto``; printed as the first line), validates the config and calls
    :func:`finetune_kit.tasks.classification.train.run_training` (``--folds K``: the
    cross-validation). Returns its result (the content of ``RUN/metrics.json``).

    Raises:
        pydantic.ValidationError, ConfigError, DataError, ...: bad options or data.
    """
    from finetune_kit.tasks.classification.cross_validation import print_cross_validation  # start-up time: torch
    from finetune_kit.tasks.classification.train import run_training  # start-up time: torch

    values = nest(ClassificationConfig, values)
    _say_device(values)
    cfg = ClassificationConfig.model_validate(values)
    if cfg.data.folds:
        return print_cross_validation(cfg, [cfg.strategy.ft_strategy], None, console or _console(),
                                      f"{cfg.model.model_name} at {cfg.transforms.img_size} px")
    return run_training(cfg, console=console or _console())


def run_compare(values: Mapping[str, Any], *, console: Optional[Console] = None,
                filled: Optional[dict] = None, resume: Optional[Path] = None) -> dict:
    """Run a comparison from option values (nested or flat, with ``strategies`` as ``"a,b"`` or a list,
    ``head_learning_rate`` and ``demo`` at the top); prints the table. ``resume``: finish that comparison
    folder (``values`` are then its recorded options). Returns ``run_comparison``'s result."""
    from finetune_kit.tasks.classification.compare import run_comparison  # start-up time: torch
    from finetune_kit.tasks.classification.cross_validation import print_cross_validation  # start-up time: torch

    values = nest([ClassificationConfig, CompareOptions], values)
    options = CompareOptions.model_validate({k: values.pop(k) for k in list(values)
                                             if k in CompareOptions.model_fields})
    strategies = options.strategies.split(",") if isinstance(options.strategies, str) else options.strategies
    names = [s.strip() for s in strategies if s.strip()]
    _say_device(values)
    if filled:
        typer.echo("--demo filled: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in filled.items())
                   + " (options you give win)", err=True)
    cfg = ClassificationConfig.model_validate(values)
    title = ("SYNTHETIC demo data (generated images, not medical): " if cfg.data.data == "synthetic" else "") + \
        f"{cfg.model.model_name} at {cfg.transforms.img_size} px"
    per_strategy = {"linear": {"learning_rate": options.head_learning_rate}}
    if cfg.data.folds:
        if resume is not None:
            raise ValueError(f"--resume {resume}: a cross-validation (--folds) cannot be resumed; run it again")
        return print_cross_validation(cfg, names, per_strategy, console or _console(), title)
    out = run_comparison(cfg, names, cfg.output.output_dir, per_strategy=per_strategy,
                         console=console or _console(), title=title, resume=resume)
    typer.echo(out["markdown"])
    typer.echo(f"comparison written to {out['folder']}")
    return out


def _strategy_names() -> str:
    """``linear|lp_ft|...`` (aliases in brackets): the registry's strategies, for ``--ft-strategy``'s help."""
    from finetune_kit.strategy import list_strategies, strategy_aliases  # start-up time: the registry imports torch

    aliases = strategy_aliases()
    return "|".join(n + "".join(f" (alias {a})" for a, t in aliases.items() if t == n) for n in list_strategies())


HELP_VALUES["strategies"] = _strategy_names


def _typed(ctx: Any, names: Any) -> set[str]:
    return {n for n in names if given(ctx, n)}


def _classify(ctx: typer.Context, values: dict, config: Optional[Path] = CONFIG_OPTION) -> None:
    """Fine-tune a timm classifier on labelled images: train, pick the best epoch by validation
    AUROC, calibrate and report test metrics in a new run folder."""
    resume = values.pop("resume", None)
    try:
        if resume:
            from finetune_kit.tasks.classification.train import resume_config, run_training  # start-up time

            cfg = resume_config(resume)
            typer.echo(f"device: {cfg.runtime.device} (as recorded by the run)", err=True)
            run_training(cfg, resume=True, console=_console())
            return
        if config is not None:  # a run's config.json records every strategy's options
            drop_foreign_strategy_fields(values.setdefault("strategy", {}), keep=_typed(ctx, STRATEGY_FIELDS))
        run_classify(values)
    except expected_errors() as exc:
        fail(exc)


def _compare(ctx: typer.Context, values: dict, config: Optional[Path] = CONFIG_OPTION) -> None:
    """Run several fine-tuning strategies on the same data and split; write comparison.md/.csv
    and val_auroc.png (validation AUROC per epoch per strategy)."""
    resume = values.pop("resume", None)
    try:
        if resume:  # the folder's own config.json holds the options; others typed are ignored, as for classify
            folder = Path(resume)
            if not (folder / "comparison.json").is_file():
                raise FileNotFoundError(f"--resume {folder}: no comparison.json there; pass a folder written by "
                                        "finetune-kit compare (compare-TAG-...)")
            typer.echo(f"resuming the comparison in {folder} (its recorded options are used)", err=True)
            run_compare(drop_unused_strategy_fields(classification_file_values(folder / "config.json")),
                        resume=folder)
            return
        filled = {}
        if values.get("demo"):  # fill what neither the command line nor the file gives
            in_file = classification_file_values(config) if config else {}
            demo = {**DEMO_OVERRIDES, "data": "synthetic", "custom_weights_path": None, "pretrained": False,
                    "head_learning_rate": DEMO_HEAD_LR}
            filled = {k: v for k, v in demo.items() if not given(ctx, k) and k not in in_file}
            values = deep_merge(values, nest([ClassificationConfig, CompareOptions], filled))
        run_compare(values, filled=filled)
    except expected_errors() as exc:
        fail(exc)


def _predict(values: dict,
             run_dir: Path = typer.Argument(..., help="A finished run folder (uses checkpoints/best.pt and its "
                                            "calibrator)."),
             images: List[str] = typer.Argument(..., help="Image files and/or folders.")) -> None:
    """Write calibrated class probabilities per image to a CSV."""
    try:
        from finetune_kit.tasks.classification.predict import ood_line, predict_images  # start-up time: torch

        device, batch_size = _inference_runtime(values)
        output = values.get("output")
        out = predict_images(run_dir, images, output=Path(output) if output else None, device=device,
                             skip_corrupt=values.get("data", {}).get("skip_corrupt", False),
                             explain=bool(values.get("explain")), batch_size=batch_size)
        explained = f"; Grad-CAM overlays in {out.with_name(out.stem + '-explain')}" if values.get("explain") else ""
        typer.echo(f"predictions written to {out}{explained}")
        if out.with_suffix(".ood.json").is_file():  # the run has an OOD detector
            typer.echo(ood_line(out.with_suffix(".ood.json")))
    except expected_errors() as exc:
        fail(exc)


def _inference_runtime(values: dict) -> tuple[str, int]:
    """``(device, batch_size)`` of ``predict``/``evaluate``: resolves and prints the device, applies
    ``--num-threads`` (torch CPU threads) and validates both with the run's own fields."""
    import torch  # start-up time: torch only once the command runs

    runtime = RuntimeConfig.model_validate({k: v for k, v in values.get("runtime", {}).items() if k != "device"})
    batch_size = OptimConfig.model_validate(values.get("optim", {})).batch_size
    device, line = resolve_device(values.get("runtime", {}).get("device", "auto"))
    if runtime.num_threads:
        torch.set_num_threads(runtime.num_threads)
    typer.echo(line + (f", {runtime.num_threads} CPU thread(s)" if runtime.num_threads else ""), err=True)
    return device, batch_size


def _evaluate_file(path: Path) -> dict:
    """Only the data settings of a ``--config`` file (a run's config.json gives its data)."""
    return {"data": nest(ClassificationConfig, classification_file_values(path)).get("data", {})}


def _evaluate(values: dict, run_dir: Path = typer.Argument(..., help="A finished run folder."),
              config: Optional[Path] = CONFIG_OPTION) -> None:
    """Test metrics and plots of a finished run on any labelled image set (all its images)."""
    try:
        from finetune_kit.tasks.classification.evaluate import evaluate_run  # start-up time: torch

        from finetune_kit.tasks.classification.evaluation_data import with_run_label_rule  # start-up time: numpy

        name = EvaluateOptions.model_validate({"name": values.get("name", "external")}).name
        data = values.get("data", {})
        if not data.get("data"):
            raise ValueError("--data: give the labelled images to evaluate on (or a --config file with data)")
        data, note = with_run_label_rule(run_dir, data)
        data_cfg = DataConfig.model_validate(data)
        if note:
            typer.echo(note, err=True)
        device, batch_size = _inference_runtime(values)
        res = evaluate_run(run_dir, data_cfg, name=name, device=device, batch_size=batch_size)
        if "summary" in res:  # a multi-label run: macro and per-label AUROC
            typer.echo(f"{res['summary']}; written to {run_dir}/eval-{safe_name(name)}")
            return
        m = res["metrics"]
        method = (res.get("calibration") or {}).get("method", "none")
        how = f"T={res['temperature']:.3f}" if method == "temperature" else f"calibrator {method}"
        typer.echo(f"{res['n_images']} images: AUROC {m['auroc']:.4f} accuracy {m['accuracy']:.4f} "
                   f"ECE {m['ece_calibrated']:.4f} ({how}); written to "
                   f"{run_dir}/eval-{safe_name(name)}")
    except expected_errors() as exc:
        fail(exc)


_EVALUATE_DATA = ("data", "layout", "label_preset", "label_regex", "positive_class", "negative_class", "extensions",
                  "skip_corrupt", "device", "name", "num_threads", "batch_size")


def _commands(app: Optional[typer.Typer]) -> dict[str, Callable[..., Any]]:
    """The four commands generated from the config models (registered on ``app`` when given)."""
    read = classification_file_values
    return {
        "classify": config_command(app, "classify", ClassificationConfig, ResumeOptions, exclude=_RECORDED,
                                   read_file=read, epilog=LAUNCH_HELP)(_classify),
        "compare": config_command(app, "compare", ClassificationConfig, CompareOptions, ResumeOptions,
                                  exclude=_RECORDED,
                                  defaults=COMPARE_DEFAULTS, read_file=read, epilog=LAUNCH_HELP)(_compare),
        "predict": config_command(app, "predict", PredictOptions, ClassificationConfig,
                                  include=("output", "skip_corrupt", "device", "num_threads", "batch_size",
                                           "explain"))(_predict),
        "evaluate": config_command(app, "evaluate", ClassificationConfig, EvaluateOptions, include=_EVALUATE_DATA,
                                   defaults={"data": None}, read_file=_evaluate_file)(_evaluate),
    }


def register(app: typer.Typer) -> None:
    """Add ``classify``, ``compare``, ``predict`` and ``evaluate`` to the top-level app."""
    _commands(app)


def _standalone_app(name: str) -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command()(_commands(None)[name])
    return app


def classify_app() -> typer.Typer:
    """The ``classify`` command as a standalone typer app (``train_classification.py``)."""
    return _standalone_app("classify")


def compare_app() -> typer.Typer:
    """The ``compare`` command as a standalone typer app (``scripts/run_fine_tuning_comparison.py``)."""
    return _standalone_app("compare")


def _standalone(app: typer.Typer, argv: list[str] | None, prog_name: str) -> None:
    app(args=handle_launch_options(argv if argv is not None else sys.argv[1:]), prog_name=prog_name)  # --nproc N


def main_classify(argv: list[str] | None = None) -> None:
    """Entry of ``train_classification.py``: the ``classify`` command as a standalone program."""
    _standalone(classify_app(), argv, "train_classification.py")


def main_compare(argv: list[str] | None = None) -> None:
    """Entry of ``scripts/run_fine_tuning_comparison.py``: the ``compare`` command."""
    _standalone(compare_app(), argv, "run_fine_tuning_comparison.py")
