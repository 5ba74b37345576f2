"""WiSE-FT on a finished classification run (Wortsman et al., CVPR 2022): ``finetune-kit wise-ft RUN``.

``theta(alpha) = (1 - alpha) * theta_0 + alpha * theta_ft`` between ``theta_0``, the pretrained
backbone with the exact linear probe as its head (LP-FT's probe, solved on the run's own training
split) and ``theta_ft``, the run's best checkpoint (LoRA adapters merged). For each alpha of the
grid: validation AUROC with its 95 % bootstrap interval and retention (top-1 agreement and KL under
the pretrained source head, CKA on the reference set). The chosen alpha is the highest-retention
one whose validation AUROC lies inside the bootstrap interval of the best alpha's. The chosen model
is written as a run folder (``config.json``, ``split.csv``, ``checkpoints/best.pt``, ``metrics.json``
with a calibrator re-fitted on the interpolated model's validation logits, ``logits.npz``), which
``predict`` and ``evaluate`` read like any run, plus ``frontier.png`` (validation AUROC vs retention
over alpha). BatchNorm running statistics are interpolated like the weights (with frozen statistics,
the default for pretrained weights, both ends hold the same values).
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.console import Console

from finetune_kit.forgetting import interpolate_weights
from finetune_kit.runs.checkpoint import atomic_save, load_checkpoint
from finetune_kit.runs.run_dir import RunDir
from finetune_kit.strategies.lora import merge_adapters
from finetune_kit.tasks.classification.bootstrap import bootstrap_metrics
from finetune_kit.tasks.classification.config import ClassificationConfig
from finetune_kit.tasks.classification.engine import predict_logits, softmax
from finetune_kit.tasks.classification.evaluate import calibrated_report
from finetune_kit.tasks.classification.forgetting_config import DEFAULT_WISE_FT_ALPHAS
from finetune_kit.tasks.classification.forgetting_run import penultimate, reference_loader, retention, source_head
from finetune_kit.tasks.classification.linear_probe import probe_head
from finetune_kit.tasks.classification.plots import pyplot, save_figure
from finetune_kit.tasks.classification.setup import build, image_loader
from finetune_kit.tasks.classification.transforms import normalize_batch

__all__ = ["run_wise_ft", "choose_alpha", "plot_frontier"]


def choose_alpha(grid: Sequence[dict]) -> dict:
    """The chosen row of a WiSE-FT grid (rows ``{"alpha", "val_auroc", "val_auroc_ci95", "retention"}``):
    among the alphas whose validation AUROC is at least the lower bound of the best alpha's 95 %
    interval, the one with the highest retention (top-1 agreement; reference CKA without a source head),
    ties to the larger alpha.

    Raises:
        ValueError: an empty grid.
    """
    if not grid:
        raise ValueError("choose_alpha: the WiSE-FT grid is empty")
    best = max(grid, key=lambda r: (np.nan_to_num(r["val_auroc"], nan=-1.0), r["alpha"]))
    low = (best.get("val_auroc_ci95") or [best["val_auroc"]])[0]
    ok = [r for r in grid if r["val_auroc"] >= low] or [best]

    def keep(r):
        ret = r["retention"]
        return ret.get("top1_agreement", ret.get("reference_cka") or 0.0), r["alpha"]

    return max(ok, key=keep)


def _no_source_error(run: Path, cfg) -> ValueError | None:
    if cfg.model.custom_weights_path or cfg.model.pretrained:
        return None
    return ValueError(f"wise-ft {run}: the run started from random weights (no --custom-weights-path or --pretrained), "
                      "so there is no pretrained model to interpolate towards; run WiSE-FT on a run from pretrained weights")


def run_wise_ft(run_path: str | Path, *, alphas: Sequence[float] | None = None, output: str | Path | None = None,
                device: str = "cpu", console=None) -> dict:
    """WiSE-FT of the finished run ``run_path`` (see the module docstring).

    Args:
        run_path: a finished classification run folder (``config.json``, ``split.csv``, ``checkpoints/best.pt``).
        alphas: mixing coefficients in [0, 1] (default 0, 0.1, ..., 1).
        output: the folder of the chosen model's run (default ``RUN-wise-ft`` beside the run; replaced).
        device: torch device.
        console: a rich Console (default: stderr).

    Returns:
        ``{"run_dir", "alpha", "grid": [{"alpha", "val_auroc", "val_auroc_ci95", "retention"}], "test",
        "val_logits", "test_logits"}`` (logits per alpha as ``{alpha: (N, C)}``, also in ``wise_ft.npz``).

    Raises:
        ValueError: an alpha outside [0, 1]; a run without pretrained weights (one line each).
        FileNotFoundError: not a finished run folder.
    """
    console = console or Console(stderr=True)
    alphas = sorted(set(float(a) for a in (alphas if alphas is not None else DEFAULT_WISE_FT_ALPHAS)))
    for a in alphas:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"WiSE-FT alpha {a} is outside [0, 1]: 0 is the probed pretrained model, 1 the fine-tuned one")
    run = RunDir(run_path)
    if not (run.path / "config.json").is_file() or not (run.checkpoints / "best.pt").is_file():
        raise FileNotFoundError(f"wise-ft {run.path}: no config.json or checkpoints/best.pt; pass a finished run folder")
    cfg = ClassificationConfig.model_validate(run.read_json("config.json"))
    cfg = cfg.for_strategy(cfg.strategy.ft_strategy)  # the saved named options of other strategies back to defaults
    err = _no_source_error(run.path, cfg)
    if err is not None:
        raise err
    cfg = cfg.replace(device=device, progress=False, wandb="disabled")
    quiet = Console(stderr=True, quiet=True)
    state = build(cfg, resume=True, console=quiet)  # the run's split, the pretrained model (LoRA: adapters)
    ck = load_checkpoint(run.checkpoints / "best.pt")
    ft_model = copy.deepcopy(state.model)
    ft_model.load_state_dict(ck["ema"] if ck.get("ema") is not None else ck["model"])
    ft_model = merge_adapters(ft_model)
    state.model, state.ema = merge_adapters(state.model), None  # theta_0: pretrained backbone ...
    probe = probe_head(state)  # ... with the exact linear probe on the run's training split
    theta_0 = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
    theta_ft = {k: v.detach().clone() for k, v in ft_model.state_dict().items()}
    model, tf, dev = state.model, state.data.tf, state.device
    prepare = lambda x: normalize_batch(x, tf.mean, tf.std)  # noqa: E731
    source = source_head(cfg)
    ref = reference_loader(cfg.forgetting.reference_data, tf)
    model.load_state_dict(theta_0)
    pre_ref = penultimate(model, ref, tf, dev)
    grid, val_logits, test_logits = [], {}, {}
    for a in alphas:
        model.load_state_dict(interpolate_weights(theta_0, theta_ft, a))
        model.eval()
        vl, vy = predict_logits(model, image_loader(state, state.data.val, tf.eval), prepare, device=dev)
        tl, ty = predict_logits(model, image_loader(state, state.data.test, tf.eval), prepare, device=dev)
        val_logits[a], test_logits[a] = vl, tl
        boot = bootstrap_metrics(vy, softmax(vl), metrics=("auroc",), seed=cfg.runtime.seed)["auroc"]
        row = {"alpha": a, "val_auroc": boot["value"], "val_auroc_ci95": boot["ci95"],
               "retention": retention(pre_ref, penultimate(model, ref, tf, dev), source)}
        grid.append(row)
        r = row["retention"]
        console.print(f"WiSE-FT alpha {a:.2f}: val AUROC {row['val_auroc']:.4f}, top-1 agreement "
                      f"{r.get('top1_agreement', float('nan')):.3f}, reference CKA {r['reference_cka']:.3f}")
    chosen = choose_alpha(grid)
    a = chosen["alpha"]
    out = RunDir(output if output is not None else run.path.with_name(run.path.name + "-wise-ft"))
    if out.path.exists():
        shutil.rmtree(out.path)
    out_cfg = cfg.replace(run_dir=str(out.path), experiment_tag=f"{cfg.tag}-wise-ft")
    out.start(out_cfg, inputs={"data": cfg.data.data, "weights": cfg.model.custom_weights_path})
    shutil.copy(run.path / "split.csv", out.path / "split.csv")
    weights = interpolate_weights(theta_0, theta_ft, a)
    out.checkpoints.mkdir(parents=True, exist_ok=True)
    atomic_save({"epoch": ck.get("epoch", 0), "epoch_base": 1, "global_step": ck.get("global_step", 0),
                "model": weights, "ema": None, "class_names": ck["class_names"], "config": out_cfg.model_dump(),
                "wise_ft": {"alpha": a, "source_run": str(run.path)}}, out.checkpoints / "best.pt")
    vy = np.asarray([s.label for s in state.data.val])
    ty = np.asarray([s.label for s in state.data.test])
    np.savez(out.path / "logits.npz", val_logits=val_logits[a], val_labels=vy, test_logits=test_logits[a], test_labels=ty)
    np.savez(out.path / "wise_ft.npz", alphas=np.asarray(alphas), **{f"val_{i}": val_logits[x] for i, x in enumerate(alphas)},
             **{f"test_{i}": test_logits[x] for i, x in enumerate(alphas)})
    rep = calibrated_report(out.path, val_logits=val_logits[a], val_labels=vy, test_logits=test_logits[a],
                            test_labels=ty, class_names=ck["class_names"], run_name=out_cfg.tag, seed=cfg.runtime.seed,
                            calibration=cfg.calibration.calibration)  # calibrator re-fitted on the interpolated model
    plot_frontier({"WiSE-FT": grid}, {}, out.path / "frontier.png", title=cfg.tag)
    metrics = {"status": "completed", "run_dir": str(out.path), "model_name": cfg.model.model_name,
               "ft_strategy": cfg.strategy.ft_strategy, "class_names": ck["class_names"], "best_epoch": ck.get("epoch"),
               "temperature": rep["temperature"], "calibration": rep["calibration"], "val": rep.get("val", {}),
               "test": rep["test"], "n_images": {"train": len(state.data.train), "val": len(vy), "test": len(ty)},
               "wise_ft": {"alpha": a, "source_run": str(run.path), "probe_C": probe.C, "grid": grid},
               "forgetting": {"retention": chosen["retention"]}, "config": out_cfg.model_dump()}
    out.write_json("metrics.json", metrics)
    out.set_status("completed")
    t = rep["test"]
    console.print(f"WiSE-FT chose alpha {a:.2f} (highest retention within the best validation AUROC's 95 % interval): "
                  f"test AUROC {t.get('auroc', float('nan')):.4f}; run folder {out.path}")
    return {"run_dir": str(out.path), "alpha": a, "grid": grid, "test": rep["test"], "val_logits": val_logits,
            "test_logits": test_logits}


def plot_frontier(curves: dict[str, Sequence[dict]], points: dict[str, tuple[float, float]], path: str | Path, *,
                  title: str = "", ylabel: str = "validation AUROC") -> Path:
    """The forgetting frontier: ``ylabel`` (y) against source retention (x: top-1 agreement with the
    pretrained model; reference CKA when there is no source head). ``curves``: name -> WiSE-FT grid rows
    (alpha annotated); ``points``: name -> ``(retention, metric)`` of other strategies. Returns the path."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xlabel = "source retention: top-1 agreement with the pretrained model"
    for name, rows in curves.items():
        xs = [r["retention"].get("top1_agreement", r["retention"].get("reference_cka")) for r in rows]
        if any("top1_agreement" not in r["retention"] for r in rows):
            xlabel = "retention: reference-set CKA with the pretrained model"
        ys = [r["val_auroc"] for r in rows]
        ax.plot(xs, ys, "-o", ms=3, label=name)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(f"{r['alpha']:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    for name, (x, y) in points.items():
        ax.plot([x], [y], "s", ms=6, label=name)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("forgetting frontier (WiSE-FT alpha annotated)" + (f" - {title}" if title else ""), fontsize=9)
    return save_figure(fig, Path(path))
