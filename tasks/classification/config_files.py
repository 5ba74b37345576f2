"""Reading a classification ``--config`` file (YAML/JSON, or a run's or compare folder's
``config.json``) into the flat option names of the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_kit.tasks.cli_options import read_config_file

__all__ = ["classification_file_values", "drop_foreign_strategy_fields"]


def classification_file_values(path: str | Path) -> dict[str, Any]:
    """The options of a classification ``--config`` file (YAML/JSON), flat as the CLI names them.

    A run's ``config.json`` works: its nested ``data`` section is flattened and the keys a run
    records about itself (:data:`~finetune_kit.tasks.classification.config.RECORDED_FIELDS`,
    e.g. ``run_dir``) are dropped, so the new run gets its own folder. A ``compare`` folder's
    ``config.json`` (``base``, ``strategies``, ``per_strategy``) gives the base options plus
    ``strategies`` and ``head_learning_rate``.

    Raises:
        FileNotFoundError, ValueError: see :func:`finetune_kit.tasks.cli_options.read_config_file`.
    """
    from finetune_kit.tasks.classification.config import RECORDED_FIELDS

    values = read_config_file(path)
    if isinstance(values.get("base"), dict) and "strategies" in values:  # a compare folder's config.json
        out = {k.replace("-", "_"): v for k, v in values["base"].items()}
        strategies = values["strategies"]
        out["strategies"] = ",".join(strategies) if isinstance(strategies, (list, tuple)) else strategies
        head_lr = (values.get("per_strategy") or {}).get("linear", {}).get("learning_rate")
        if head_lr is not None:
            out["head_learning_rate"] = head_lr
        values = out
    if isinstance(values.get("data"), dict):
        values.update({k.replace("-", "_"): v for k, v in values.pop("data").items()})
    for key in RECORDED_FIELDS:
        values.pop(key, None)
    return values


def drop_foreign_strategy_fields(values: dict, keep: set | frozenset = frozenset()) -> dict:
    """Remove (in place) the named strategy options (``llrd_decay`` ...) that ``values["ft_strategy"]``
    does not accept, except those in ``keep`` (typed by the user: those stay and are refused by the
    strategy). A run's config.json records every one of them; this makes it valid again."""
    from finetune_kit.strategy import strategy_options
    from finetune_kit.tasks.classification.config import STRATEGY_FIELDS

    accepted = strategy_options(str(values.get("ft_strategy", "gradual")))
    for key in STRATEGY_FIELDS:
        if key in values and key not in keep and key not in accepted:
            values.pop(key)
    return values
