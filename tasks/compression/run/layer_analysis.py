"""Per-module parameter counts, learning rates and frozen state of a compression model under the
``compress finetune`` options (``scripts/analyze_model_layers.py``).

The optimizer groups are built exactly as a fine-tune builds them
(:func:`finetune_kit.tasks.compression.finetune.optimizers.layer_optimizers`: the ``hpcm`` layer preset, the
LR multipliers, ``--freeze_entropy``, ``--freeze_pattern``, progressive stages), then the strategy
is applied at ``epoch`` (0-based; with ``--progressive_unfreeze`` later stages are frozen until
their epoch). Every parameter is reported under its module at ``depth`` (``g_a``, ``g_a.0`` ...).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from finetune_kit.runs.checkpoint import load_checkpoint
from finetune_kit.tasks.compression.checkpoints import checkpoint_model_name, default_checkpoint, load_weights
from finetune_kit.tasks.compression.finetune.config import LayerLRSection, UnfreezeSection
from finetune_kit.tasks.compression.finetune.lr_manager import lr_table
from finetune_kit.tasks.compression.finetune.optimizers import layer_optimizers
from finetune_kit.tasks.compression.models.zoo import build_model
from finetune_kit.tasks.compression.run.config import OptimSection

__all__ = ["ModuleRow", "analyze_layers", "format_rows"]


@dataclass
class ModuleRow:
    """One module: parameter count, the layer group(s) it falls in, LR range (0 = frozen), frozen share."""

    module: str
    params: int
    groups: str
    lr_min: float
    lr_max: float
    frozen_params: int

    @property
    def frozen(self) -> str:
        """``yes``, ``no`` or ``partly``."""
        return "yes" if self.frozen_params == self.params else "no" if self.frozen_params == 0 else "partly"


def analyze_layers(model_name: Optional[str] = None, checkpoint: Optional[Path] = None, *, depth: int = 1,
                   epoch: int = 0, **options: Any) -> tuple[list[ModuleRow], list]:
    """``(module rows, lr_table rows)`` of ``model_name`` (or the model of ``checkpoint``, whose weights
    are loaded) under fine-tune ``options`` (``FinetuneConfig`` leaf names of the ``optim``, ``layer_lr`` and ``unfreeze`` sections: ``learning_rate``,
    ``lr_mults``, ``context_lr_ratio``, ``freeze_entropy``, ``progressive_unfreeze`` ...).

    Raises:
        ValueError: neither a model name nor a checkpoint; a model the ``hpcm`` preset cannot group.
    """
    ckpt = None
    if checkpoint is not None:
        ckpt = load_checkpoint(default_checkpoint(checkpoint))
        model_name = model_name or checkpoint_model_name(ckpt)
    if not model_name:
        raise ValueError("pass --model NAME (e.g. hpcm-small) or --checkpoint CKPT")
    model = build_model(model_name)
    if ckpt is not None:
        load_weights(model, ckpt, model_name=model_name)
    llr = LayerLRSection(**{k: v for k, v in options.items() if k in LayerLRSection.model_fields})
    unf = UnfreezeSection(**{k: v for k, v in options.items() if k in UnfreezeSection.model_fields})
    optim = OptimSection(**{k: v for k, v in options.items() if k in OptimSection.model_fields})
    strategy, optimizer, _, aux = layer_optimizers(model, model_name, llr, unf, learning_rate=optim.learning_rate,
                                                   aux_lr=optim.aux_lr, clip_max_norm=optim.clip_max_norm)
    strategy.apply(optimizer, epoch)
    base = optim.learning_rate
    info: dict[int, tuple[str, float]] = {}
    for g in optimizer.param_groups:
        scale = float(g.get("lr_scale", 1.0))
        for p in g["params"]:
            lr = 0.0 if (not p.requires_grad or scale == 0.0) else base * scale
            info[id(p)] = (g.get("group_name", "?"), lr)
    for p in aux:
        info[id(p)] = ("quantiles (aux loss)", optim.aux_lr if p.requires_grad else 0.0)
    rows: "OrderedDict[str, dict]" = OrderedDict()
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:depth]) if "." in name else name
        group, lr = info.get(id(p), ("(not optimized)", 0.0))
        r = rows.setdefault(key, {"params": 0, "groups": [], "lrs": [], "frozen": 0})
        r["params"] += p.numel()
        r["lrs"].append(lr)
        r["frozen"] += p.numel() if lr == 0.0 else 0
        if group not in r["groups"]:
            r["groups"].append(group)
    out = [ModuleRow(k, r["params"], ",".join(r["groups"]), min(r["lrs"]), max(r["lrs"]), r["frozen"])
           for k, r in rows.items()]
    table = lr_table(optimizer, base_lr=None, aux_params=aux, aux_lr=optim.aux_lr)
    return out, table


def format_rows(rows: list[ModuleRow]) -> str:
    """A plain-text table of ``rows`` with a total line (parameters and the trainable share)."""
    lines = [f"{'module':<34}{'params':>12}  {'group':<22}{'LR':>18}  frozen"]
    for r in rows:
        lr = f"{r.lr_max:.3g}" if r.lr_min == r.lr_max else f"{r.lr_min:.3g}-{r.lr_max:.3g}"
        lines.append(f"{r.module:<34}{r.params:>12,}  {r.groups:<22}{lr:>18}  {r.frozen}")
    total = sum(r.params for r in rows)
    frozen = sum(r.frozen_params for r in rows)
    lines.append(f"{'total':<34}{total:>12,}  trainable {total - frozen:,} ({100 * (total - frozen) / max(total, 1):.1f} %)")
    return "\n".join(lines)


def rows_as_dicts(rows: list[ModuleRow]) -> list[dict]:
    """``rows`` as JSON-ready dicts (with ``frozen``)."""
    return [{**asdict(r), "frozen": r.frozen} for r in rows]
