"""Domain adaptation measured on both domains: the target's held-out images and the source set.

Fine-tuning a pretrained codec to a new content domain (medical, screen, aerial) can lose
quality on the domain it was trained on. With ``--source-data SOURCE`` a ``compress finetune``
(or ``compress train``) run codes, with real bitstreams (rANS, :func:`~finetune_kit.tasks.compression.evaluate.evaluate_model`,
the code path of ``compress eval``), both

- the target's held-out images: ``--val-data``, or the ``--val-fraction`` of ``--data`` held out
  with the run's seed (the same split as training's validation), and
- the source images (``SOURCE``, e.g. Kodak; the first ``--source-limit``),

with the checkpoint the run started from (``before``; none for a run from random weights) and the
run's best checkpoint (``after``), and writes ``domain_eval.json`` in the run folder: per domain
and checkpoint the mean real bpp, PSNR-RGB (dB), MS-SSIM and the R-D cost
``lambda * 255^2 * MSE + bpp`` (per image, then averaged; MSE from the 8-bit PSNR), and the change
``after - before`` (bpp and R-D cost in %, PSNR in dB). The run's adapters, if any, are reported
with their side cost (:func:`~finetune_kit.tasks.compression.finetune.adapters.adapter_summary`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.runs.run_dir import to_jsonable
from finetune_kit.tasks.compression.checkpoints import default_checkpoint, load_model
from finetune_kit.tasks.compression.data import list_images, split_train_val
from finetune_kit.tasks.compression.evaluate import evaluate_model
from finetune_kit.tasks.compression.finetune.adapters import adapter_summary

__all__ = ["target_heldout", "domain_points", "evaluate_domains", "domain_lines", "rd_cost"]


def rd_cost(bpp: float, psnr_db: float, lmbda: float) -> float:
    """``lmbda * 255^2 * MSE + bpp`` with MSE (on [0, 1] images) from PSNR-RGB: ``10^(-PSNR/10)``."""
    return lmbda * 255 ** 2 * 10 ** (-psnr_db / 10) + bpp


def target_heldout(data: Any, seed: int) -> list[Path]:
    """The target's held-out images of a run's ``data`` section: ``val_data``, or the
    ``val_fraction`` of ``data`` that :func:`~finetune_kit.tasks.compression.data.split_train_val`
    holds out with ``seed`` (the run's validation split)."""
    if data.val_data is not None:
        return list_images(data.val_data)
    return split_train_val(list_images(data.data), data.val_fraction, seed)[1]


def domain_points(checkpoint: Path, paths: list[Path], lmbda: float, device: str = "cpu") -> dict[str, Any]:
    """Real-bitstream means of ``checkpoint`` on ``paths`` (as ``compress eval``), plus the mean R-D
    cost at ``lmbda`` and the number of images."""
    model, _ = load_model(checkpoint)
    model.to(torch.device(device))
    res = evaluate_model(model, paths)
    mean = {k: res["mean"][k] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb", "estimated_bpp") if k in res["mean"]}
    costs = [rd_cost(r["bpp"], r["psnr-rgb"], lmbda) for r in res["per_image"].values()]
    return {**mean, "rd_cost": sum(costs) / len(costs), "images": len(paths), "checkpoint": str(checkpoint),
            **({"y_hat_exact": res["mean"]["y_hat_exact"]} if "y_hat_exact" in res["mean"] else {})}


def _change(before: Optional[dict], after: dict) -> dict[str, float]:
    if before is None:
        return {}
    return {"bpp_pct": 100 * (after["bpp"] / before["bpp"] - 1), "psnr_db": after["psnr-rgb"] - before["psnr-rgb"],
            "rd_cost_pct": 100 * (after["rd_cost"] / before["rd_cost"] - 1)}


def evaluate_domains(cfg: Any, run_path: Path, before: Optional[Path], after: Path, lmbda: float,
                     model: Optional[torch.nn.Module] = None) -> dict[str, Any]:
    """Code the target's held-out images and ``cfg.domain.source_data`` with ``before`` (or None)
    and ``after``; write ``run_path/domain_eval.json`` and return it.

    Returns:
        ``{"lmbda", "target": {"before", "after", "change"}, "source": {...}, "adapter_params",
        "adapter_bits"}``; ``before`` is None for a run from random weights.
    """
    source = list_images(cfg.domain.source_data)[: cfg.domain.source_limit]
    sets = {"target": target_heldout(cfg.data, cfg.run.seed), "source": source}
    out: dict[str, Any] = {"lmbda": lmbda}
    for name, paths in sets.items():
        b = domain_points(default_checkpoint(before), paths, lmbda, cfg.run.device) if before is not None else None
        a = domain_points(after, paths, lmbda, cfg.run.device)
        out[name] = {"before": b, "after": a, "change": _change(b, a)}
    out.update(adapter_summary(model) if model is not None else {"adapter_params": 0, "adapter_bits": 0})
    atomic_write_text(json.dumps(to_jsonable(out), indent=2), run_path / "domain_eval.json")
    return out


def domain_lines(result: dict[str, Any]) -> list[str]:
    """One printed line per domain: before -> after bpp, PSNR and R-D cost change."""
    lines = []
    for name in ("target", "source"):
        r = result[name]
        a, b, ch = r["after"], r["before"], r["change"]
        head = f"{name} ({a['images']} images): {a['bpp']:.4f} bpp, {a['psnr-rgb']:.2f} dB, R-D {a['rd_cost']:.4f}"
        if b is not None:
            head += (f" (before {b['bpp']:.4f} bpp, {b['psnr-rgb']:.2f} dB, R-D {b['rd_cost']:.4f}: "
                     f"R-D {ch['rd_cost_pct']:+.2f} %)")
        lines.append(head)
    if result.get("adapter_params"):
        lines.append(f"adapters: {result['adapter_params']} parameters, {result['adapter_bits']} bits (float32) "
                     "for the decoder")
    return lines
