"""``--resume``: put every state of a run's checkpoint back and cut its logs to that epoch.

Checkpoints of both commands resume, also those written before ``compress train`` and
``compress finetune`` became one run: a ``compress train`` checkpoint of then has one Adam group
over every parameter (its moments are moved to the parameters' new groups), a ``MultiStepLR``
state (the per-step schedule is recomputed from the step instead) and no ``finetune`` entry (the
validation history is read back from ``metrics.jsonl``). The per-step LR schedule is recomputed
from the step, so no schedule state is loaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.runs.run_dir import RunDir
from finetune_kit.seeding import set_rng_state
from finetune_kit.tasks.compression.checkpoints import load_weights
from finetune_kit.tasks.compression.engine import is_aux_param
from finetune_kit.tasks.compression.run.build import RunParts
from finetune_kit.tasks.compression.run.fit import Progress

__all__ = ["restore", "truncate_steps", "adopt_single_group_state"]


def truncate_steps(path: Path, before_epoch: int) -> None:
    """Keep only the ``steps.jsonl`` records of epochs before ``before_epoch``, atomically."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("epoch", -1) < before_epoch]
    atomic_write_text("".join(line + "\n" for line in kept), path)


def adopt_single_group_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, state: dict) -> None:
    """Load ``state``, an Adam state dict of ONE group over the model's non-aux parameters in
    ``named_parameters()`` order (``compress train`` before the merge), into ``optimizer`` (AdamW
    over layer groups): each parameter's moments and step go to its new place; the groups keep
    their own options.

    Raises:
        ValueError: the state's parameter count is not the model's.
    """
    old = [p for n, p in model.named_parameters() if not is_aux_param(n)]
    (group,) = state["param_groups"]
    if len(group["params"]) != len(old):
        raise ValueError(f"optimizer state of {len(group['params'])} parameters, the model has {len(old)}: "
                         "the checkpoint is of another model")
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    new = optimizer.state_dict()
    new["state"] = {index[id(old[pos])]: s for pos, s in ((group["params"].index(k), v)
                                                         for k, v in state["state"].items()) if id(old[pos]) in index}
    optimizer.load_state_dict(new)


def restore(parts: RunParts, resume: dict, rd: RunDir, model_name: str) -> Progress:
    """Restore every state of a ``--resume`` checkpoint: weights, optimizers, strategy, balanced and
    hierarchical losses, early stoppers, histories and RNG; cut ``metrics.jsonl``,
    ``steps.jsonl`` and the tracked checkpoints back to its epoch. Returns the :class:`Progress`.

    Raises:
        ValueError: weights of another model; balanced state of other tasks.
    """
    obj = parts.objective
    load_weights(parts.model, resume, model_name=model_name)
    # "epoch": the last completed epoch counted from 1; checkpoints without "epoch_base" count from 0
    done = int(resume["epoch"]) + (0 if resume.get("epoch_base", 0) == 1 else 1)
    ft: dict[str, Any] | None = resume.get("finetune")
    if ft is not None:
        parts.optimizer.load_state_dict(resume["optimizer"])
        parts.strategy.load_state_dict(ft["strategy"])
        for target, key in ((obj.balanced, "balanced"), (obj.hier, "hierarchical"), (parts.ses, "scale_early_stopping"),
                            (parts.es, "early_stopping")):
            if target is not None:
                target.load_state_dict(ft[key])
        progress = Progress(done, ft["history"], ft["scale_history"])
    else:  # a compress train checkpoint of before the merge
        adopt_single_group_state(parts.optimizer, parts.model, resume["optimizer"])
        if obj.balanced is not None and resume.get("balanced"):
            obj.balanced.load_state_dict(resume["balanced"])
        history = [r.get("val_rd", r.get("val_loss")) for r in rd.history() if r.get("epoch", 0) <= done]
        progress = Progress(done, [h for h in history if h is not None])
    if parts.aux_opt is not None and resume.get("aux_optimizer"):
        parts.aux_opt.load_state_dict(resume["aux_optimizer"])
    if "rng_state" in resume:
        set_rng_state(resume["rng_state"])
    rd.truncate_history(done + 1)
    truncate_steps(rd.path / "steps.jsonl", done + 1)
    dropped = parts.manager.truncate(done) if parts.manager is not None else []
    if dropped:
        print(f"note: resuming after epoch {done}: deleted {len(dropped)} checkpoint(s) of later "
              f"epochs ({', '.join(p.name for p in dropped)}) from the abandoned run")
    return progress
