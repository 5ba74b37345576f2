"""finetune-kit: fine-tune pretrained vision models without catastrophic forgetting.

The names a notebook user needs, importable from the top::

    import finetune_kit as fk

    groups = fk.resolve_layer_groups(model)              # stem ... head, for timm models and HPCM
    strategy = fk.get_strategy("gradual", gradual_patience=2)
    optimizer = torch.optim.AdamW(strategy.build_param_groups(groups), lr=3e-4)
    schedule = fk.build_lr_scheduler(optimizer, epochs=10, steps_per_epoch=len(loader))
    for epoch in range(10):
        strategy.on_epoch_start(epoch, optimizer); strategy.train_mode(model)
        ...                                              # steps: schedule.step() after each
        strategy.on_validation_end(epoch, val_auroc, optimizer)
    T = fk.fit_temperature(val_logits, val_labels)       # temperature scaling (Guo et al. 2017)
    ece = fk.expected_calibration_error(probs, labels)   # 15 equal-width bins

    result = fk.run_training(fk.ClassificationConfig(data=fk.DataConfig(data="images/")))
    run = fk.load_run(result["run_dir"])                 # a finished run, for inference
    table = run.predict(["new_images/"])                 # DataFrame: path, predicted, p_<class>, OOD flags
    probs = run.predict_tensor(x)                        # (B, 3, S, S) in [0, 1] -> (B, C) probabilities
    metrics = run.evaluate("external_set/")              # labelled folder, read with the run's label rule
    codec = fk.build_compression_model("hpcm-base")      # CompressAI model, 68.5 M parameters

Importing this package has no side effects and imports nothing heavy: every name is loaded
on first use (PEP 562). The library (``finetune_kit`` proper) knows no task and no command
line; ``finetune_kit.strategies`` holds the built-in strategies and ``finetune_kit.tasks``
the classification and compression tasks with their command lines. The task names below
(``run_training``, ``ClassificationConfig``, ``DataConfig``, ``load_run``, ``Run``,
``build_compression_model``, ``HPCM``) are re-exported from there for convenience.
"""
from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

__version__ = "0.1.0"

#: public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    # layer groups and optimizer groups
    "resolve_layer_groups": ("finetune_kit.layer_groups", "resolve_layer_groups"),
    "LayerGroups": ("finetune_kit.layer_groups", "LayerGroups"),
    "build_param_groups": ("finetune_kit.param_groups", "build_param_groups"),
    "freeze_batchnorm_stats": ("finetune_kit.freezing", "freeze_batchnorm_stats"),
    # strategies
    "get_strategy": ("finetune_kit.strategy", "get_strategy"),
    "register_strategy": ("finetune_kit.strategy", "register_strategy"),
    "list_strategies": ("finetune_kit.strategy", "list_strategies"),
    "FineTuneStrategy": ("finetune_kit.strategy", "FineTuneStrategy"),
    "UnfreezeEvent": ("finetune_kit.strategy", "UnfreezeEvent"),
    # LR schedule
    "build_lr_scheduler": ("finetune_kit.schedulers", "build_lr_scheduler"),
    # calibration
    "fit_temperature": ("finetune_kit.calibration", "fit_temperature"),
    "apply_temperature": ("finetune_kit.calibration", "apply_temperature"),
    "expected_calibration_error": ("finetune_kit.calibration", "expected_calibration_error"),
    # early stopping and checkpoints
    "EarlyStopping": ("finetune_kit.early_stopping", "EarlyStopping"),
    "CheckpointManager": ("finetune_kit.runs.checkpoint", "CheckpointManager"),
    # tasks (re-exported)
    "run_training": ("finetune_kit.tasks.classification.train", "run_training"),
    "ClassificationConfig": ("finetune_kit.tasks.classification.config", "ClassificationConfig"),
    "DataConfig": ("finetune_kit.tasks.classification.config", "DataConfig"),
    "load_run": ("finetune_kit.tasks.classification.loaded_run", "load_run"),
    "Run": ("finetune_kit.tasks.classification.loaded_run", "Run"),
    "build_compression_model": ("finetune_kit.tasks.compression.models.zoo", "build_model"),
    "HPCM": ("finetune_kit.tasks.compression.models.hpcm.model", "HPCM"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> _Any:
    """Load a public name on first access (see ``__all__``).

    Raises:
        AttributeError: ``name`` is not a public name of finetune_kit.
    """
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'finetune_kit' has no attribute {name!r}") from None
    value = getattr(_importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
