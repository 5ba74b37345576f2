"""The objective of a compression run: R-D terms, per-scale tasks, balanced weights, gamma, validation.

:class:`RunObjective` turns a forward output into the loss to back-propagate, for ``compress
train`` and ``compress finetune`` alike: ``lambda * 255^2 * MSE + bpp`` (or ``lambda * (1 -
MS-SSIM) + bpp``) by default; per-scale tasks with ``--use-hierarchical``
(:mod:`finetune_kit.tasks.compression.objectives.hierarchical`), weighted by the balanced optimizer with
``--use-balanced`` (:mod:`finetune_kit.tasks.compression.objectives.balanced`) whose gamma follows
:mod:`finetune_kit.tasks.compression.objectives.gamma_schedules`. It is the *objective* of the shared
engine (:mod:`finetune_kit.tasks.compression.engine`): :func:`~finetune_kit.tasks.compression.engine.train_step`
calls :meth:`RunObjective.begin_step` (RNG snapshot), :meth:`~RunObjective.compute`,
:meth:`~RunObjective.clip` (per-group then global clipping) and :meth:`~RunObjective.end_step`
(the balanced weight update on the same batch, same noise), and
:func:`~finetune_kit.tasks.compression.engine.evaluate` its :meth:`~RunObjective.validation_values`.
The R-D terms and ``lambda * 255^2`` come from
:class:`~finetune_kit.tasks.compression.objectives.rate_distortion.RateDistortionLoss`.

Devices: the tensors of a step live on the model's device; the balanced optimizer's small
state (task logits, Adam moments) stays on the CPU, which keeps checkpoints portable.
:func:`replay_rng` lets the balanced re-evaluation replay the quantization noise of the step on
the CPU or on a CUDA device (CompressAI draws that noise on the device of the latents).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Optional

import torch

from finetune_kit.param_groups import parse_multipliers
from finetune_kit.tasks.compression.finetune.lr_manager import clip_grad_norms
from finetune_kit.tasks.compression.objectives.balanced import (DEFAULT_SCALE_GAMMAS, BalancedRD,
                                                                HierarchicalBalancedRD, scale_of_task)
from finetune_kit.tasks.compression.objectives.config import (GAMMA_STRATEGIES, SCALE_GAMMA_STRATEGIES, BalancedSection,
                                                              HierarchicalSection, resolve_scale_modulation,
                                                              resolved_gamma_strategy)
from finetune_kit.tasks.compression.objectives.gamma_schedules import gamma_at, scale_gammas_at
from finetune_kit.tasks.compression.objectives.hierarchical import HierarchicalRDLoss, RDTerms
from finetune_kit.tasks.compression.objectives.rate_distortion import RateDistortionLoss

__all__ = ["RunObjective", "rng_snapshot", "replay_rng"]


def rng_snapshot(device: torch.device) -> torch.Tensor:
    """The RNG state that draws random numbers on ``device`` (CPU generator or the CUDA device's)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


@contextlib.contextmanager
def replay_rng(device: torch.device, state: torch.Tensor) -> Iterator[None]:
    """Run the block with ``device``'s RNG set to ``state`` (from :func:`rng_snapshot`), then put the
    generator back where it was, so the replay does not shift the run's random stream."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if device.type == "cuda":
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)
        yield


class RunObjective:
    """Terms, task dict, combined loss, balanced weights and gamma of one run (an engine objective).

    Args:
        lmbda: the R-D trade-off of ``lmbda * 255^2 * MSE + bpp``.
        has_scales: whether the model reports per-scale rates (HPCM's ``y_scale_masks``);
            enables the per-scale validation costs.
        hierarchical, balanced: the two objective sections of the run's config.
        epochs: the run's length (the gamma schedules span it).
        clip_max_norm: global gradient-norm limit (0 disables). clip_map: per-group limits (``"context:0.5"``).
        metric: ``mse`` or ``ms-ssim`` (the plain loss only; the tasks split ``lambda*255^2*MSE + bpp``).

    Raises:
        ValueError: ``lmbda <= 0`` (from the criterion), bad gamma or modulation options.
    """

    mse_key = "mse"
    lr_flag = "--learning-rate"

    def __init__(self, lmbda: float, has_scales: bool, hierarchical: HierarchicalSection, balanced: BalancedSection, *,
                 epochs: int, clip_max_norm: float = 1.0, clip_map: Optional[str] = None, metric: str = "mse") -> None:
        self.lmbda, self.hcfg, self.bcfg, self.epochs = lmbda, hierarchical, balanced, epochs
        self.clip_max_norm, self.clip_map = clip_max_norm, clip_map
        self.gamma_strategy = resolved_gamma_strategy(balanced, hierarchical.use_hierarchical)
        self.criterion = RateDistortionLoss(lmbda, metric)
        self._rng: torch.Tensor | None = None
        self.monitor = HierarchicalRDLoss(lmbda) if has_scales else None  # measured per-scale costs (validation)
        self.hier = (HierarchicalRDLoss(lmbda, decomposition=hierarchical.decomposition, pyramid=hierarchical.pyramid,
                                        levels=hierarchical.pyramid_levels) if hierarchical.use_hierarchical else None)
        self.modulation = resolve_scale_modulation(hierarchical.scale_modulation, hierarchical.use_hierarchical,
                                                   balanced.use_balanced)
        self.scale_starts = {**DEFAULT_SCALE_GAMMAS, **parse_multipliers(balanced.scale_gammas)}
        if hierarchical.use_hierarchical and balanced.gamma is not None and not balanced.scale_gammas:
            ratio = balanced.gamma / DEFAULT_SCALE_GAMMAS["s1"]  # --gamma sets s1; s2, s3 keep their proportions
            self.scale_starts = {s: g * ratio for s, g in DEFAULT_SCALE_GAMMAS.items()}
        self.balanced = None
        if balanced.use_balanced:
            if self.hier is not None:
                self.balanced = HierarchicalBalancedRD(self.hier.task_names, scale_gammas=self.scale_starts,
                                                       scale_modulation=self.modulation, w_lr=balanced.w_lr)
            else:
                self.balanced = BalancedRD(["distortion", "rate"],
                                           gamma=balanced.gamma if balanced.gamma is not None else 0.001,
                                           w_lr=balanced.w_lr)

    @contextlib.contextmanager
    def frozen_split(self):
        """Evaluate without updating learned split ratios (validation, balanced re-evaluation)."""
        if self.hier is None:
            yield
            return
        was = self.hier.training
        self.hier.train(False)
        try:
            yield
        finally:
            self.hier.train(was)

    def terms(self, out, x):
        """``(RDTerms, task dict)`` for one batch ``x [B, 3, H, W]`` (tensors on ``x``'s device).

        Without the hierarchical loss the tasks are ``distortion`` (``lambda * 255^2 * MSE``) and
        ``rate`` (bpp), the two terms of :meth:`RateDistortionLoss.components`; with the MS-SSIM
        metric the R-D cost is ``lambda * (1 - MS-SSIM) + bpp``.
        """
        if self.hier is not None:
            t = self.hier(out, x)
            return t, t.tasks
        c = self.criterion.components(out, x)
        rd = c.rd if self.criterion.metric == "mse" else self.criterion(out, x)["loss"]
        t = RDTerms(tasks={}, mse=c.mse, bpp=c.bpp["total"], rd=rd,
                    bpp_scales={n: float(v.detach()) for n, v in c.bpp.items()})
        return t, {"distortion": c.weighted_mse, "rate": c.bpp["total"]}

    def loss(self, t, tasks):
        """The loss to back-propagate."""
        if self.balanced is not None:
            return self.balanced.combine(tasks)
        if self.hier is not None:
            return sum(self.modulation[scale_of_task(n)] * v for n, v in tasks.items())
        return t.rd

    # -- the engine's objective protocol (finetune_kit.tasks.compression.engine.train_step) ----------
    def begin_step(self, model, x) -> None:
        """Before the forward pass: snapshot the RNG of ``x``'s device (balanced re-evaluation replays it)."""
        self._rng = rng_snapshot(x.device) if self.balanced is not None else None

    def compute(self, model, x) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, {loss, rd, bpp, mse})`` of one training batch (scalar tensors)."""
        t, tasks = self.terms(model(x), x)
        loss = self.loss(t, tasks)
        return loss, {"loss": loss, "rd": t.rd, "bpp": t.bpp, "mse": t.mse}

    def clip(self, optimizer, model) -> dict[str, float]:
        """Per-group (``clip_map``) then global (``clip_max_norm``) clipping; ``{"grad_norm": total norm}``."""
        norms = clip_grad_norms(optimizer.param_groups, clip_map=self.clip_map, clip_max_norm=self.clip_max_norm)
        return {"grad_norm": norms["total"]}

    def end_step(self, model, x) -> dict[str, float]:
        """After the model step: the balanced weight update from the same batch, re-evaluated with the
        same quantization noise and frozen split ratios (so ``delta`` measures the parameter change
        only). Returns the balanced optimizer's record ({} without balancing)."""
        if self.balanced is None:
            return {}
        with torch.no_grad(), replay_rng(x.device, self._rng), self.frozen_split():  # same noise
            _, tasks = self.terms(model(x), x)
        self.balanced.update(tasks)
        return dict(self.balanced.last_record)

    def evaluation(self):
        """Context of a validation pass: the learned split ratios stay frozen."""
        return self.frozen_split()

    def validation_values(self, out: Mapping[str, Any], x) -> dict[str, float]:
        """``rd``, ``mse``, ``bpp``, ``bpp_s1`` ... and, for models with per-scale rates, ``rd_s1`` ...
        (measured per-scale R-D costs) of one validation batch, as floats."""
        t, _ = self.terms(out, x)
        vals = {"rd": float(t.rd), "mse": float(t.mse), "bpp": float(t.bpp),
                **{f"bpp_{k}": v for k, v in t.bpp_scales.items() if k != "total"}}
        if self.monitor is not None:
            vals.update({f"rd_{s}": v for s, v in self.monitor(out, x).scale_costs.items()})
        return vals

    def set_epoch_gamma(self, epoch: int, history: list[float], scale_hist: dict[str, list[float]]) -> dict[str, float]:
        """Set the balanced optimizer's gamma for ``epoch``; returns it for the log ({} without balancing)."""
        if self.balanced is None:
            return {}
        cfg, strat = self.bcfg, self.gamma_strategy
        opts = {"window": cfg.gamma_window, "threshold": cfg.gamma_threshold} if "adaptive" in strat else {}
        if strat == "step":
            opts = {"gamma_decay": cfg.gamma_decay, "step_epochs": list(cfg.step_epochs) or None}
        if self.hier is None:
            g0 = cfg.gamma if cfg.gamma is not None else 0.001
            name = "constant" if strat == "fixed" else strat
            g = gamma_at(name, epoch, epochs=self.epochs, gamma=g0, gamma_final=cfg.gamma_final, history=history, **opts)
            self.balanced.set_gamma(g)
            return {"gamma": g}
        s1 = self.scale_starts["s1"]
        ratio = (cfg.gamma_final / s1) if cfg.gamma_final is not None else 0.1
        if strat in SCALE_GAMMA_STRATEGIES:
            gs = scale_gammas_at(strat, epoch, epochs=self.epochs, starts=self.scale_starts, final_ratio=ratio,
                                 histories=scale_hist, **opts)
        elif strat in GAMMA_STRATEGIES:  # a single schedule applied to every scale proportionally
            f = gamma_at(strat, epoch, epochs=self.epochs, gamma=1.0, gamma_final=ratio, history=history, **opts)
            gs = {s: g * f for s, g in self.scale_starts.items()}
        self.balanced.set_gamma(gs)
        return {f"gamma_{s}": v for s, v in gs.items()}
