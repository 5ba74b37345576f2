"""The guides' gamma schedules, their formulas exactly: ``hpcm-guides`` and ``hierarchical-guides``.

The guides write them for a 3000-epoch run with absolute epoch boundaries; a run of ``E`` epochs
gets the same boundaries as fractions of ``E`` (``300 -> E / 10``, ``1500 -> E / 2``,
``2000 -> 2 E / 3``, ``2500 -> 5 E / 6``), so ``E = 3000`` gives the guides' numbers. Neither
schedule uses ``gamma_final``: the guides' formulas are multiples of the start gamma.

- ``hpcm-guides`` (Phase 2 guide, three phases, ``g0`` = start gamma):
  warm-up ``e < 300``: ``g0 * (1 + 0.2 * e / 300)``;
  scaling ``300 <= e < 2000``: ``g0 * 1.2 * (1 - 0.5 * p)``, ``p = (e - 300) / 1700``;
  refinement ``e >= 2000``: ``g0 * 0.7 * (1 - 0.3 * p)``, ``p = (e - 2000) / 1000``.
  With ``g0 = 0.006``: 0.006 -> 0.0072 (e = 300) -> 0.0036 (end of scaling), then 0.0042 at
  e = 2000 -> 0.00294 at e = 3000. The jump from 0.0036 to 0.0042 at e = 2000 is in the guide's
  formula and kept.
- ``hierarchical-guides`` (Phase 3 guide, four phases, per-scale starts ``b_s``, default
  0.008 / 0.006 / 0.004): ``e < 300``: s1 ``x1.2``, s2 ``x0.8``, s3 ``x0.6``; ``300-1500``: s1
  decreases while s2 and s3 increase; ``1500-2500``: all converge to similar values;
  ``2500-3000``: s3 ``x1.3``, s1 ``x0.7``, s2 ``x0.8``. The guide gives no formula for the two
  middle phases, so they are linear interpolations (ours): from the warm-up multipliers to ``x1``
  (each scale's start gamma) at e = 1500, then to the final multipliers at e = 2500. With the
  default starts that is s1 0.0096 -> 0.008 -> 0.0056, s2 0.0048 -> 0.006 -> 0.0048,
  s3 0.0024 -> 0.004 -> 0.0052 (spread 0.0072 -> 0.004 -> 0.0008: they converge).
"""
from __future__ import annotations

from typing import Mapping

__all__ = ["hpcm_guides", "hierarchical_guides", "HIERARCHICAL_GUIDES_WARMUP", "HIERARCHICAL_GUIDES_FINAL"]

#: the Phase 3 guide's multipliers of the per-scale start gammas in its first (e < 300) and last
#: (e >= 2500) phases
HIERARCHICAL_GUIDES_WARMUP = {"s1": 1.2, "s2": 0.8, "s3": 0.6}
HIERARCHICAL_GUIDES_FINAL = {"s1": 0.7, "s2": 0.8, "s3": 1.3}


def _boundary(fraction: float, epochs: int) -> float:
    """The guides' epoch boundary ``fraction * 3000`` scaled to a run of ``epochs`` epochs."""
    return fraction * max(1, epochs)


def hpcm_guides(epoch: int, epochs: int, start: float, final: float | None = None) -> float:
    """The Phase 2 guide's three-phase ``hpcm`` gamma at ``epoch`` (0-based) of a run of ``epochs``.

    Formulas in the module docstring (warm-up to ``E / 10``, scaling to ``2 E / 3``, refinement
    to ``E``); ``final`` is accepted for a uniform signature and not used (the guide's values are
    multiples of ``start``). Example: ``hpcm_guides(2000, 3000, 0.006) == 0.0042``.
    """
    w, b = _boundary(0.1, epochs), _boundary(2 / 3, epochs)
    if epoch < w:
        return start * (1 + 0.2 * epoch / w)
    if epoch < b:
        return start * 1.2 * (1 - 0.5 * (epoch - w) / (b - w))
    end = max(1.0, epochs - b)
    return start * 0.7 * (1 - 0.3 * min(1.0, (epoch - b) / end))


def hierarchical_guides(epoch: int, epochs: int, starts: Mapping[str, float]) -> dict[str, float]:
    """The Phase 3 guide's four-phase per-scale gammas ``{"s1", "s2", "s3"}`` at ``epoch`` (0-based).

    Args:
        epoch: 0-based epoch. epochs: run length (the guide's 3000; other lengths scale the phases).
        starts: start gamma per scale (default in the caller 0.008 / 0.006 / 0.004).

    The multipliers (module docstring): hold :data:`HIERARCHICAL_GUIDES_WARMUP` until ``E / 10``,
    linear to 1 at ``E / 2``, linear to :data:`HIERARCHICAL_GUIDES_FINAL` at ``5 E / 6``, then hold.
    """
    a, m, c = _boundary(0.1, epochs), _boundary(0.5, epochs), _boundary(5 / 6, epochs)
    out = {}
    for s, g in starts.items():
        lo, hi = HIERARCHICAL_GUIDES_WARMUP[s], HIERARCHICAL_GUIDES_FINAL[s]
        if epoch < a:
            mult = lo
        elif epoch < m:
            mult = lo + (1.0 - lo) * (epoch - a) / (m - a)
        elif epoch < c:
            mult = 1.0 + (hi - 1.0) * (epoch - m) / (c - m)
        else:
            mult = hi
        out[s] = g * mult
    return out
