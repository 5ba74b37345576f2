"""What a compression run writes and prints: the epoch record, the checkpoint, the LR table, the
epoch line.

Metric names (``metrics.jsonl``, ``metrics.json``, wandb; the same for ``compress train`` and
``compress finetune``): ``train_loss`` (the back-propagated loss), ``train_rd``, ``train_bpp``,
``train_mse``; ``val_rd`` (the R-D cost, the checkpoint and early-stopping criterion),
``val_bpp``, ``val_mse``, ``val_psnr`` (dB), ``val_bpp_y``, ``val_bpp_z``, ``val_bpp_s1`` ...,
``val_rd_s1`` ... (per-scale costs), ``val_aux_loss``; ``lr``, ``lr/<group>``, ``seconds``,
``trainable_params``, gamma and task weights with balancing. Runs written before the merge used
other names for ``compress train``; :data:`finetune_kit.tasks.compression.profile.OLD_METRIC_NAMES`
maps them.
"""
from __future__ import annotations

from typing import Any

from finetune_kit.runs.run_dir import RunDir
from finetune_kit.seeding import rng_state
from finetune_kit.tasks.compression.checkpoints import to_cpu_state
from finetune_kit.tasks.compression.finetune.lr_manager import lr_table, print_lr_table
from finetune_kit.tasks.compression.run.build import RunParts
from finetune_kit.tasks.compression.run.config import RunConfig
from finetune_kit.tasks.compression.run.fit import Progress

__all__ = ["epoch_log_values", "checkpoint_state", "write_lr_table", "report"]


def epoch_log_values(parts: RunParts) -> dict[str, Any]:
    """What an epoch's ``metrics.jsonl`` record (and wandb) gets besides the losses: ``lr/<group>``
    (the LR each optimizer group trained with at the epoch's last step; 0 = frozen),
    ``unfrozen`` (the groups unfrozen at the start of this epoch, ``[]`` when none) and
    ``unfreeze_events`` (their full records), and the balanced optimizer's task weights
    ``task_weight/<task>`` and effective contributions ``task_contrib/<task>`` (when balancing)."""
    out: dict[str, Any] = {}
    for i, g in enumerate(parts.optimizer.param_groups):
        out[f"lr/{g.get('group_name', f'group{i}')}"] = float(g["lr"])
    out["unfrozen"] = [n for ev in parts.last_events for n in ev.get("groups", [])]
    if parts.last_events:
        out["unfreeze_events"] = list(parts.last_events)
        out["unfreeze_stage"] = max(int(ev.get("stage", 0)) for ev in parts.last_events)  # a number, for wandb
    bal = parts.objective.balanced
    if bal is not None:
        for k, v in bal.last_record.items():
            if k.startswith("weight/"):
                out[f"task_weight/{k[len('weight/'):]}"] = v
            elif k.startswith("contrib/"):
                out[f"task_contrib/{k[len('contrib/'):]}"] = v
    return out


def checkpoint_state(parts: RunParts, epoch: int, record: dict, resolved: dict, progress: Progress,
                     model_name: str) -> dict[str, Any]:
    """The checkpoint of ``epoch`` (counted from 1; CPU tensors): ``state_dict``, ``model``,
    ``config`` (flat, with ``lmbda``; what ``compress eval`` reads), both optimizers, the schedule,
    RNG and metrics, ``epoch_base: 1``, plus a ``finetune`` entry with the strategy, balanced,
    hierarchical and early-stopping states and the histories (the entry's name predates the merge
    of the two commands and is kept so older checkpoints resume)."""
    obj = parts.objective

    def state(o):
        return o.state_dict() if o else None

    return {"state_dict": to_cpu_state(parts.model.state_dict()), "optimizer": to_cpu_state(parts.optimizer.state_dict()),
            "aux_optimizer": to_cpu_state(parts.aux_opt.state_dict()) if parts.aux_opt else None,
            "lr_scheduler": parts.scheduler.state_dict(), "epoch": epoch, "epoch_base": 1, "model": model_name,
            "config": resolved, "metrics": record, "rng_state": rng_state(),
            "preset": parts.model.config() if hasattr(parts.model, "config") else None,
            "finetune": {"strategy": parts.strategy.state_dict(), "balanced": state(obj.balanced),
                         "hierarchical": state(obj.hier), "scale_early_stopping": state(parts.ses),
                         "early_stopping": state(parts.es), "history": progress.history,
                         "scale_history": progress.scale_hist}}


def write_lr_table(cfg: RunConfig, parts: RunParts, rd: RunDir, model_name: str, epoch: int) -> None:
    """``lr_table.json`` (and the printed table with ``--progress``) of the optimizer at ``epoch``
    (counted from 1)."""
    base, clip = cfg.optim.learning_rate, cfg.optim.clip_max_norm
    table = lr_table(parts.optimizer, base_lr=base, clip_map=cfg.layer_lr.clip_map, aux_params=parts.aux_params,
                     aux_lr=cfg.optim.aux_lr)
    rd.write_json("lr_table.json", {"base_lr": base, "global_clip": clip, "groups": table})
    if cfg.run.progress:
        print_lr_table(table, title=f"{model_name}: layer-wise LRs at epoch {epoch} (base {base:g})",
                       caption=f"global gradient-norm clip {clip:g}; LR 0 = frozen at this epoch")


def report(cfg: RunConfig, epoch: int, record: dict, va: dict) -> None:
    """One line per epoch with ``--progress``: train loss, val R-D cost, bpp, PSNR (dB), seconds."""
    if cfg.run.progress:
        print(f"epoch {epoch + 1}/{cfg.run.epochs}: train loss {record['train_loss']:.4f} | val R-D {va['rd']:.4f} "
              f"bpp {va['bpp']:.4f} PSNR {va['psnr']:.2f} dB ({record['seconds']:.1f} s)")
