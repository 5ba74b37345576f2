"""What a classification sweep should be told before it spends trials: a learning rate searched for
the linear probe, which the exact (L-BFGS) solver ignores."""
from __future__ import annotations

from typing import Sequence

__all__ = ["LR_NAMES", "ignored_lr_note"]

#: The spellings of the run's learning rate in a sweep's parameters and fixed flags.
LR_NAMES = ("learning_rate", "lr", "learning-rate")


def _flag_value(args: Sequence[str], *names: str) -> str | None:
    """The value of the last ``--NAME VALUE`` / ``--NAME=VALUE`` of ``args`` (any of ``names``, dashes or
    underscores), None when absent."""
    spellings = {f"--{n}" for n in names} | {f"--{n.replace('_', '-')}" for n in names}
    value = None
    for i, a in enumerate(args):
        key, eq, rest = a.partition("=")
        if key in spellings:
            value = rest if eq else (args[i + 1] if i + 1 < len(args) else None)
    return value


def ignored_lr_note(params: dict[str, list | None], fixed_args: Sequence[str]) -> str | None:
    """A one-line warning when a sweep searches the learning rate while some of its trials run the linear
    probe with the exact solver (which solves the head by L-BFGS and reads no learning rate), else None.

    Args:
        params: ``{name: choices}`` of the searched parameters (``None`` for a numeric range).
        fixed_args: the task flags every trial gets (``--ft_strategy linear``, ``--linear-probe-solver epochs``).
    """
    lr = next((n for n in params if n in LR_NAMES), None)
    if lr is None or (_flag_value(fixed_args, "linear_probe_solver") or "lbfgs") != "lbfgs":
        return None
    strategies = params.get("ft_strategy") or params.get("strategy")
    if strategies is None:
        strategies = [_flag_value(fixed_args, "ft_strategy", "strategy") or "gradual"]
    if "linear" not in [str(s) for s in strategies]:
        return None
    return (f"note: {lr} is searched, but the trials with ft_strategy=linear solve the linear probe exactly "
            "(L-BFGS) and ignore it: their results do not depend on it. Search the LR for the other strategies, "
            "or pass --linear-probe-solver epochs after -- to train the probe with AdamW.")
