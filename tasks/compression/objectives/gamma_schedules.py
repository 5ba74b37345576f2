"""Gamma schedules for the balanced R-D optimizer (:mod:`finetune_kit.tasks.compression.objectives.balanced`).

``gamma`` is the decay that pulls the task logits back to equal weights: large gamma keeps the
R-D weighting near the plain ``lambda * D + R``; small gamma lets the weights adapt. Each
schedule is a pure function of the epoch (0-based) and, for ``adaptive``, of the validation
history up to that epoch; nothing is stored, so a resumed run gets the same values.

Single gamma (``--gamma_strategy``), from ``gamma`` (start) to ``gamma_final`` over ``epochs``:

- ``constant``: ``gamma``.
- ``linear``: ``gamma + (gamma_final - gamma) * t``, ``t = epoch / (epochs - 1)``.
- ``cosine``: ``gamma_final + (gamma - gamma_final) * (1 + cos(pi t)) / 2``.
- ``step``: ``gamma * gamma_decay ** floor(epoch / step_every)``, never past ``gamma_final``
  (defaults: ``step_every = max(1, epochs // 4)``, ``gamma_decay = 0.5``, the guides' default);
  with ``step_epochs`` (the guides' ``step_epochs=[1000, 2000]``) gamma is multiplied by
  ``gamma_decay`` exactly at those epochs instead:
  ``gamma * gamma_decay ** #{m in step_epochs: epoch >= m}`` (``epoch`` 0-based, so ``m`` = the
  number of completed epochs after which the decay applies), never past ``gamma_final``.
- ``adaptive``: start at ``gamma``; whenever the monitored metric (lower is better) has not
  improved by a relative ``threshold`` (default 0.001 = 0.1 %) over the last ``window`` epochs
  (default 5), multiply gamma by ``adaptive_factor`` (default 0.5) towards ``gamma_final``, then
  wait ``window`` epochs before the next change. (Plateau-based; the guides give no numbers,
  these are ours.)
- ``hpcm`` (ours, the guides' three phases with our boundaries): epochs ``[0, 0.2 E)`` hold
  ``gamma`` (stabilize the weights while fine-tuning starts), ``[0.2 E, 0.7 E)`` decay cosine-wise
  to ``gamma_final`` (let the weights adapt), ``[0.7 E, E)`` hold ``gamma_final`` (converge).
- ``hpcm-guides``: the Phase 2 guide's formulas exactly (:mod:`.guides_gamma`).

Per scale (``s1``/``s2``/``s3``, hierarchical variant), each scale from its default
(0.008 / 0.006 / 0.004) to ``start * gamma_final / gamma`` (the same end ratio as the single schedule):

- ``fixed``: the defaults throughout; ``linear`` / ``cosine``: each scale as above;
- ``adaptive``: each scale's own plateau rule on its own metric history;
- ``hierarchical``: coarse to fine, following HPCM's coding order: s1 anneals (cosine) over the
  first third of the run, s2 over the first two thirds, s3 over the whole run. Once a scale's
  weights are free (low gamma) they stay free: the weight targets never jump.
- ``hierarchical-guides``: the Phase 3 guide's four phases exactly (:mod:`.guides_gamma`; its
  two unspecified transitions interpolated linearly).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from finetune_kit.tasks.compression.objectives.balanced import DEFAULT_SCALE_GAMMAS
from finetune_kit.tasks.compression.objectives.config import GAMMA_STRATEGIES, SCALE_GAMMA_STRATEGIES
from finetune_kit.tasks.compression.objectives.guides_gamma import hierarchical_guides, hpcm_guides

__all__ = ["GAMMA_STRATEGIES", "SCALE_GAMMA_STRATEGIES", "gamma_at", "scale_gammas_at",
           "linear", "cosine", "step", "adaptive", "hpcm", "hpcm_guides",
           "hierarchical_guides"]



def _t(epoch: int, epochs: int) -> float:
    return min(1.0, max(0.0, epoch / max(1, epochs - 1)))


def linear(epoch: int, epochs: int, start: float, final: float) -> float:
    """Linear from ``start`` (epoch 0) to ``final`` (epoch ``epochs - 1``)."""
    return start + (final - start) * _t(epoch, epochs)


def cosine(epoch: int, epochs: int, start: float, final: float) -> float:
    """Half-cosine from ``start`` (epoch 0) to ``final`` (epoch ``epochs - 1``)."""
    return final + (start - final) * (1 + math.cos(math.pi * _t(epoch, epochs))) / 2


def step(epoch: int, epochs: int, start: float, final: float, *, step_every: int | None = None,
         gamma_decay: float = 0.5, step_epochs: Sequence[int] | None = None) -> float:
    """``start * gamma_decay ** floor(epoch / step_every)``, clamped at ``final``; with
    ``step_epochs`` (0-based epoch indices, e.g. ``(1000, 2000)``) one decay by ``gamma_decay`` at
    each of them instead (``step_every`` is then ignored). ``gamma_decay`` default 0.5 (the
    guides' ``AdaptiveGammaScheduler(strategy='step', step_epochs=[1000, 2000], gamma_decay=0.5)``).

    Raises:
        ValueError: a ``step_epochs`` entry below 1; ``gamma_decay`` not > 0.
    """
    if gamma_decay <= 0:
        raise ValueError(f"gamma_decay={gamma_decay}: give a factor > 0, e.g. 0.5")
    if step_epochs:
        if min(step_epochs) < 1:
            raise ValueError(f"step_epochs={list(step_epochs)}: give epoch numbers >= 1")
        value = start * gamma_decay ** sum(1 for m in step_epochs if epoch >= m)
        return max(value, final) if final <= start else min(value, final)
    every = step_every or max(1, epochs // 4)
    value = start * gamma_decay ** (epoch // every)
    return max(value, final) if final <= start else min(value, final)


def adaptive(epoch: int, history: Sequence[float], start: float, final: float, *, window: int = 5,
             threshold: float = 1e-3, factor: float = 0.5) -> float:
    """Plateau-driven gamma at ``epoch`` given ``history[k]`` = metric after epoch ``k`` (lower is better).

    Replays the rule over ``history[:epoch]`` (only finished epochs count): after ``k > window``
    finished epochs, with the last change at least ``window`` epochs ago, if the best of the last
    ``window`` values (``history[k-window:k]``) is not below ``best_before * (1 - threshold)``
    (``best_before`` = best of ``history[:k-window]``), gamma becomes ``gamma * factor`` (not past
    ``final``).
    """
    g = start
    last_change = 0
    h = [float(v) for v in history[:epoch]]
    for k in range(window + 1, len(h) + 1):
        if k - last_change < window:
            continue
        best_before = min(h[:k - window])
        recent = min(h[k - window:k])
        if not recent < best_before - abs(best_before) * threshold:
            g = max(g * factor, final) if final <= start else min(g / factor, final)
            last_change = k
    return g


def hpcm(epoch: int, epochs: int, start: float, final: float, *, phases: tuple[float, float] = (0.2, 0.7)) -> float:
    """The guides' three phases: hold ``start``, cosine to ``final``, hold ``final`` (boundaries
    ``phases`` as fractions of ``epochs``)."""
    a, b = int(round(phases[0] * epochs)), int(round(phases[1] * epochs))
    if epoch < a:
        return start
    if epoch >= b:
        return final
    return cosine(epoch - a, b - a + 1, start, final)


def gamma_at(strategy: str, epoch: int, *, epochs: int, gamma: float = 0.001, gamma_final: float | None = None,
             history: Sequence[float] = (), **options) -> float:
    """Gamma of ``strategy`` at ``epoch`` (see the module docstring).

    Args:
        strategy: one of :data:`GAMMA_STRATEGIES`.
        epochs: run length in epochs.
        gamma: start value (reference 0.001). gamma_final: end value (default ``gamma / 10``).
        history: validation metric per finished epoch (``adaptive`` only).
        options: ``step_every``, ``gamma_decay``, ``step_epochs`` (step); ``window``, ``threshold``,
            ``factor`` (adaptive); ``phases`` (hpcm). ``hpcm-guides`` takes none and ignores
            ``gamma_final`` (the guide's values are multiples of ``gamma``).

    Raises:
        ValueError: unknown strategy or a negative gamma.
    """
    final = gamma / 10 if gamma_final is None else gamma_final
    if gamma < 0 or final < 0:
        raise ValueError(f"gamma={gamma}, gamma_final={final}: must be >= 0")
    if strategy == "constant":
        return gamma
    if strategy == "linear":
        return linear(epoch, epochs, gamma, final)
    if strategy == "cosine":
        return cosine(epoch, epochs, gamma, final)
    if strategy == "step":
        return step(epoch, epochs, gamma, final, **options)
    if strategy == "adaptive":
        return adaptive(epoch, history, gamma, final, **options)
    if strategy == "hpcm":
        return hpcm(epoch, epochs, gamma, final, **options)
    if strategy == "hpcm-guides":
        return hpcm_guides(epoch, epochs, gamma)
    raise ValueError(f"unknown gamma strategy {strategy!r}: use one of {', '.join(GAMMA_STRATEGIES)}")


def scale_gammas_at(strategy: str, epoch: int, *, epochs: int, starts: Mapping[str, float] | None = None,
                    final_ratio: float = 0.1, histories: Mapping[str, Sequence[float]] | None = None,
                    **options) -> dict[str, float]:
    """Per-scale gammas ``{"s1", "s2", "s3"}`` of ``strategy`` at ``epoch``.

    Args:
        strategy: one of :data:`SCALE_GAMMA_STRATEGIES`.
        starts: start gamma per scale (default 0.008 / 0.006 / 0.004).
        final_ratio: end value = ``start * final_ratio`` (CLI: ``gamma_final / gamma``). Default 0.1;
            not used by ``hierarchical-guides`` (the guide's multipliers).
        histories: per-scale validation metric per finished epoch (``adaptive``).

    Raises:
        ValueError: unknown strategy.
    """
    s0 = {**DEFAULT_SCALE_GAMMAS, **dict(starts or {})}
    if strategy == "hierarchical-guides":
        return hierarchical_guides(epoch, epochs, {s: s0[s] for s in ("s1", "s2", "s3")})
    out = {}
    for i, s in enumerate(("s1", "s2", "s3")):
        start, final = s0[s], s0[s] * final_ratio
        if strategy == "fixed":
            out[s] = start
        elif strategy in ("linear", "cosine"):
            out[s] = gamma_at(strategy, epoch, epochs=epochs, gamma=start, gamma_final=final)
        elif strategy == "adaptive":
            out[s] = adaptive(epoch, (histories or {}).get(s, ()), start, final, **options)
        elif strategy == "hierarchical":
            span = max(1, int(round(epochs * (i + 1) / 3)))
            out[s] = cosine(min(epoch, span - 1), span, start, final) if epoch < span else final
        else:
            raise ValueError(f"unknown per-scale gamma strategy {strategy!r}: use one of {', '.join(SCALE_GAMMA_STRATEGIES)}")
    return out
