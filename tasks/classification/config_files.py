"""Reading a classification ``--config`` file (YAML/JSON, or a run's or compare folder's
``config.json``, nested in sections or flat as earlier versions wrote it) into flat option names."""
from __future__ import annotations

from pathlib import Path
from typing import Any, MutableMapping

from finetune_kit.tasks.classification.config import (ONE_OFF_FIELDS, RECORDED_FIELDS, STRATEGY_FIELDS, ClassificationConfig,
                                                      CompareOptions)
from finetune_kit.tasks.cli_options import read_config_file
from finetune_kit.tasks.config_base import flatten

__all__ = ["classification_file_values", "drop_foreign_strategy_fields", "drop_unused_strategy_fields"]


def classification_file_values(path: str | Path) -> dict[str, Any]:
    """The options of a classification ``--config`` file (YAML/JSON), flat by leaf name.

    A run's ``config.json`` works (nested sections, or the flat keys with a nested ``data`` of
    earlier versions); the keys a run records about itself
    (:data:`~finetune_kit.tasks.classification.config.RECORDED_FIELDS`, e.g. ``run_dir``) are
    dropped, so the new run gets its own folder, and so are the one-off controls
    (:data:`~finetune_kit.tasks.classification.config.ONE_OFF_FIELDS`: ``stop_after_epoch``). A ``compare`` folder's ``config.json`` (``base``,
    ``strategies``, ``per_strategy``) gives the base options plus ``strategies`` and
    ``head_learning_rate``.

    Raises:
        FileNotFoundError, ValueError: see :func:`finetune_kit.tasks.cli_options.read_config_file`.
    """
    values = read_config_file(path)
    if isinstance(values.get("base"), dict) and "strategies" in values:  # a compare folder's config.json
        out = dict(values["base"])
        strategies = values["strategies"]
        out["strategies"] = ",".join(strategies) if isinstance(strategies, (list, tuple)) else strategies
        head_lr = (values.get("per_strategy") or {}).get("linear", {}).get("learning_rate")
        if head_lr is not None:
            out["head_learning_rate"] = head_lr
        values = out
    values = flatten([ClassificationConfig, CompareOptions], values)
    for key in (*RECORDED_FIELDS, *ONE_OFF_FIELDS):
        values.pop(key, None)
    return values


def drop_foreign_strategy_fields(values: MutableMapping[str, Any],
                                 keep: set | frozenset = frozenset()) -> MutableMapping[str, Any]:
    """Remove (in place) the named strategy options (``llrd_decay`` ...) that ``values["ft_strategy"]``
    does not accept, except those in ``keep`` (typed by the user: those stay and are refused by the
    strategy). ``values``: flat leaf names or the ``strategy`` section. A run's config.json records
    every one of them; this makes it valid again."""
    from finetune_kit.strategy import strategy_options  # start-up time: the registry imports torch

    accepted = strategy_options(str(values.get("ft_strategy", "gradual")))
    for key in STRATEGY_FIELDS:
        if key in values and key not in keep and key not in accepted:
            values.pop(key)
    return values


def drop_unused_strategy_fields(values: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Remove (in place) the named strategy options (``llrd_decay`` ...) that none of a comparison's
    ``values["strategies"]`` (``"a,b"`` or a list) accepts: a compare folder's ``config.json`` records
    every one of them, and ``compare`` refuses an option no strategy of it takes."""
    from finetune_kit.strategy import strategy_options  # start-up time: the registry imports torch

    names = values.get("strategies") or ""
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    accepted = set().union(*(strategy_options(n) for n in names)) if names else set()
    for key in STRATEGY_FIELDS:
        if key in values and key not in accepted:
            values.pop(key)
    return values
