"""Gamma schedules for the balanced R-D optimizer (:mod:`finetune_kit.tasks.compression.objectives.balanced`).

``gamma`` is the decay that pulls the task logits back to equal weights: large gamma keeps the
R-D weighting near the plain ``lambda * D + R``; small gamma lets the weights adapt. Each
schedule is a pure function of the epoch (0-based) and, for ``adaptive``, of the validation
history up to that epoch; nothing is stored, so a resumed run gets the same values.

Single gamma (``--gamma_strategy``), from ``gamma`` (start) to ``gamma_final`` over ``epochs``:

- ``constant``: ``gamma``.
- ``linear``: ``gamma + (gamma_final - gamma) * t``, ``t = epoch / (epochs - 1)``.
- ``cosine``: ``gamma_final + (gamma - gamma_final) * (1 + cos(pi t)) / 2``.
- ``step``: ``gamma * step_factor ** floor(epoch / step_every)``, never past ``gamma_final``
  (defaults: ``step_every = max(1, epochs // 4)``, ``step_factor = 0.5``); with ``step_epochs``
  (the guides' ``--step_epochs 1000 2000``) gamma is multiplied by ``step_factor`` exactly at those
  epochs instead: ``gamma * step_factor ** #{m in step_epochs: epoch >= m}`` (``epoch`` 0-based, so
  ``m`` = the number of completed epochs after which the decay applies), never past ``gamma_final``.
- ``adaptive``: start at ``gamma``; whenever the monitored metric (lower is better) has not
  improved by a relative ``threshold`` (default 0.001 = 0.1 %) over the last ``window`` epochs
  (default 5), multiply gamma by ``adaptive_factor`` (default 0.5) towards ``gamma_final``, then
  wait ``window`` epochs before the next change. (Plateau-based; the guides give no numbers,
  these are ours.)
- ``hpcm`` (the guides' three phases; boundaries are ours): epochs ``[0, 0.2 E)`` hold ``gamma``
  (stabilize the weights while fine-tuning starts), ``[0.2 E, 0.7 E)`` decay cosine-wise to
  ``gamma_final`` (let the weights adapt), ``[0.7 E, E)`` hold ``gamma_final`` (converge).

Per scale (``s1``/``s2``/``s3``, hierarchical variant), each scale from its default
(0.008 / 0.006 / 0.004) to ``start * gamma_final / gamma`` (the same end ratio as the single schedule):

- ``fixed``: the defaults throughout; ``linear`` / ``cosine``: each scale as above;
- ``adaptive``: each scale's own plateau rule on its own metric history;
- ``hierarchical``: coarse to fine, following HPCM's coding order: s1 anneals (cosine) over the
  first third of the run, s2 over the first two thirds, s3 over the whole run. Once a scale's
  weights are free (low gamma) they stay free: the weight targets never jump.
- ``hierarchical-guides`` (the phase-3 guide's phases): the run is cut in thirds; in third ``k``
  the emphasised scale (s1, then s2, then s3) has its low gamma (``start * final_ratio``: its task
  weights adapt) while the other two hold their start gamma (pulled to equal weights). So s1 is
  emphasised early and s3 late, as the guide says, but a scale is pulled back after its phase,
  which makes the gammas (and the weight targets) jump at the phase boundaries; that is why the
  smooth ``hierarchical`` is the default.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from finetune_kit.tasks.compression.objectives.balanced import DEFAULT_SCALE_GAMMAS
from finetune_kit.tasks.compression.objectives.config import GAMMA_STRATEGIES, SCALE_GAMMA_STRATEGIES

__all__ = ["GAMMA_STRATEGIES", "SCALE_GAMMA_STRATEGIES", "gamma_at", "scale_gammas_at",
           "linear", "cosine", "step", "adaptive", "hpcm", "hpcm_guides"]



def _t(epoch: int, epochs: int) -> float:
    return min(1.0, max(0.0, epoch / max(1, epochs - 1)))


def linear(epoch: int, epochs: int, start: float, final: float) -> float:
    """Linear from ``start`` (epoch 0) to ``final`` (epoch ``epochs - 1``)."""
    return start + (final - start) * _t(epoch, epochs)


def cosine(epoch: int, epochs: int, start: float, final: float) -> float:
    """Half-cosine from ``start`` (epoch 0) to ``final`` (epoch ``epochs - 1``)."""
    return final + (start - final) * (1 + math.cos(math.pi * _t(epoch, epochs))) / 2


def step(epoch: int, epochs: int, start: float, final: float, *, step_every: int | None = None,
         step_factor: float = 0.5, step_epochs: Sequence[int] | None = None) -> float:
    """``start * step_factor ** floor(epoch / step_every)``, clamped at ``final``; with
    ``step_epochs`` (0-based epoch indices, e.g. ``(1000, 2000)``) one decay at each of them
    instead (``step_every`` is then ignored).

    Raises:
        ValueError: a ``step_epochs`` entry below 1.
    """
    if step_epochs:
        if min(step_epochs) < 1:
            raise ValueError(f"step_epochs={list(step_epochs)}: give epoch numbers >= 1")
        value = start * step_factor ** sum(1 for m in step_epochs if epoch >= m)
        return max(value, final) if final <= start else min(value, final)
    every = step_every or max(1, epochs // 4)
    value = start * step_factor ** (epoch // every)
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


def hpcm_guides(epoch: int, epochs: int, start: float, final: float, *, warmup: float = 0.1,
                phases: tuple[float, float] = (0.2, 0.7)) -> float:
    """The guides' ``hpcm`` schedule with its warm-up rise: linear from ``final`` to ``start`` over
    the first ``warmup * epochs`` epochs, then :func:`hpcm`."""
    w = int(round(warmup * epochs))
    if epoch < w:
        return final + (start - final) * epoch / w
    return hpcm(epoch, epochs, start, final, phases=phases)


def gamma_at(strategy: str, epoch: int, *, epochs: int, gamma: float = 0.001, gamma_final: float | None = None,
             history: Sequence[float] = (), **options) -> float:
    """Gamma of ``strategy`` at ``epoch`` (see the module docstring).

    Args:
        strategy: one of :data:`GAMMA_STRATEGIES`.
        epochs: run length in epochs.
        gamma: start value (reference 0.001). gamma_final: end value (default ``gamma / 10``).
        history: validation metric per finished epoch (``adaptive`` only).
        options: ``step_every``, ``step_factor`` (step); ``window``, ``threshold``, ``factor``
            (adaptive); ``phases`` (hpcm).

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
        return hpcm_guides(epoch, epochs, gamma, final, **options)
    raise ValueError(f"unknown gamma strategy {strategy!r}: use one of {', '.join(GAMMA_STRATEGIES)}")


def scale_gammas_at(strategy: str, epoch: int, *, epochs: int, starts: Mapping[str, float] | None = None,
                    final_ratio: float = 0.1, histories: Mapping[str, Sequence[float]] | None = None,
                    **options) -> dict[str, float]:
    """Per-scale gammas ``{"s1", "s2", "s3"}`` of ``strategy`` at ``epoch``.

    Args:
        strategy: one of :data:`SCALE_GAMMA_STRATEGIES`.
        starts: start gamma per scale (default 0.008 / 0.006 / 0.004).
        final_ratio: end value = ``start * final_ratio`` (CLI: ``gamma_final / gamma``). Default 0.1.
        histories: per-scale validation metric per finished epoch (``adaptive``).

    Raises:
        ValueError: unknown strategy.
    """
    s0 = {**DEFAULT_SCALE_GAMMAS, **dict(starts or {})}
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
        elif strategy == "hierarchical-guides":
            phase = min(2, epoch * 3 // max(1, epochs))  # 0, 1, 2: the third of the run
            out[s] = final if phase == i else start
        else:
            raise ValueError(f"unknown per-scale gamma strategy {strategy!r}: use one of {', '.join(SCALE_GAMMA_STRATEGIES)}")
    return out
