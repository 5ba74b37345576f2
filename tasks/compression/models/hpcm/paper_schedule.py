"""The coding schedule of the official HPCM code (Li et al., ICCV 2025; github.com/lyq133/LIC-HPCM).

Same structure as :class:`~finetune_kit.tasks.compression.models.hpcm.schedule.CodingSchedule`
(8 channel groups of M/8 channels, s1 2 steps / s2 3 new / s3 6 new), but with the offsets,
orders and adaptor labels the released checkpoints were trained with, so that with the same
weights every step predicts the same scales and means as the official implementation.
Positions below are ``q = 2*row + col`` inside a 2x2 block; ``u, v = i // 2, j // 2`` are s2-grid
coordinates of y element ``(i, j)`` and ``s, t = u // 2, v // 2`` s1-grid coordinates.

Per channel group ``g`` (0..7), derived from the official masks and checked against the
official code by ``benchmarks/hpcm_official_equivalence.py``:

- s2 grid: y's 2x2 position ``S2_OFFSET[g]`` (groups 0/4: top-left, 1/5: bottom-right, 2/6:
  top-right, 3/7: bottom-left);
- s1 grid: the s2 grid's 2x2 position ``S1_OFFSET[g]`` (one per pair of groups);
- step 0 codes the s1 checkerboard half ``(s + t) % 2 == S1_FIRST[g]`` (0 for groups 0-3,
  1 for 4-7), step 1 the other half;
- steps 2, 3, 4 code the s2-grid positions ``S2_ORDER[g // 2]`` (the diagonal of the s1
  position first);
- steps 5..10 code ``(q, (u + v) % 2)`` pairs ``S3_ORDER[g]`` (2x2 position in y, half).

Two quirks of the official code are reproduced because the trained weights depend on them:

- the official code indexes its adaptor lists ``[i - 1]`` with a 0-based loop index ``i``: its
  s2 steps 2, 3, 4 use its s2 adaptors 2, 0, 1 and its s3 steps 5..10 its s3 adaptors
  5, 0, 1, 2, 3, 4. Here adaptor ``r`` of a scale is always used at the scale's ``r``-th new
  step; the converter (:mod:`finetune_kit.tasks.compression.models.hpcm.official`) relabels
  the tensors (ours ``r`` = official ``(r - 1) mod n``). Gains are not relabelled: step ``k``
  uses ``step_gains[k - 1]`` in both;
- the hyperprior values added to the context entering s2 are taken, per channel and in raster
  order, from y's s2 lattice minus a position ``S2_HYPER_SKIP[g]`` of each 4x4 tile that is
  the group's s1 position only for groups 0 and 1; for the others the values are shifted by
  one s2-grid position (they are still hyperprior values of the same channel and region).
"""
from __future__ import annotations

import torch
from torch import Tensor

from finetune_kit.tasks.compression.models.hpcm.schedule import CodingSchedule, StepGrids

__all__ = ["PaperSchedule", "S2_OFFSET", "S1_OFFSET", "S1_FIRST", "S2_ORDER", "S3_ORDER", "S2_HYPER_SKIP"]

S2_OFFSET = (0, 3, 1, 2, 0, 3, 1, 2)
S1_OFFSET = (0, 0, 1, 1, 2, 2, 3, 3)
S1_FIRST = (0, 0, 0, 0, 1, 1, 1, 1)
#: s2-grid positions of steps 2, 3, 4, per pair of groups (indexed by S1_OFFSET)
S2_ORDER = ((3, 2, 1), (2, 3, 0), (1, 0, 3), (0, 1, 2))
#: (2x2 position in y, (u + v) % 2) of steps 5..10 per group
S3_ORDER = (
    ((3, 0), (3, 1), (1, 0), (1, 1), (2, 0), (2, 1)),
    ((1, 0), (1, 1), (2, 0), (2, 1), (0, 0), (0, 1)),
    ((2, 0), (2, 1), (0, 0), (0, 1), (3, 0), (3, 1)),
    ((0, 0), (0, 1), (3, 0), (3, 1), (1, 0), (1, 1)),
    ((3, 1), (3, 0), (1, 1), (1, 0), (2, 1), (2, 0)),
    ((1, 1), (1, 0), (2, 1), (2, 0), (0, 1), (0, 0)),
    ((2, 1), (2, 0), (0, 1), (0, 0), (3, 1), (3, 0)),
    ((0, 1), (0, 0), (3, 1), (3, 0), (1, 1), (1, 0)),
)
#: (row, col) inside a 4x4 tile of y left out of the s2 hyperprior fill, per group
S2_HYPER_SKIP = ((0, 0), (1, 1), (0, 1), (1, 0), (0, 2), (1, 3), (0, 3), (1, 2))


class PaperSchedule(CodingSchedule):
    """The official code's step assignment and s2 hyperprior fill (``schedule="paper"``).

    Args:
        latent_channels: M; a multiple of 8 (groups are M/8 contiguous channels).
        groups: must be 8 (the official code's masks are built for 8 groups).

    Raises:
        ValueError: ``groups != 8`` or M not a multiple of 8.
    """

    name = "paper"

    def __init__(self, latent_channels: int, groups: int = 8) -> None:
        if groups != 8:
            raise ValueError(f"the paper's schedule has 8 channel groups, not {groups}")
        super().__init__(latent_channels, groups)
        g = self.group
        self.k2 = torch.tensor([S2_OFFSET[int(i)] for i in g])
        self.k1 = torch.tensor([S1_OFFSET[int(i)] for i in g])
        self.parity = torch.tensor([S1_FIRST[int(i)] for i in g])
        self._fill_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _full_ids(self, height: int, width: int) -> Tensor:
        """``[M, height, width]`` step id (0..10) of every element of y, as the official code codes it
        (see the module doc); validation, caching and the s1/s2 grids are the base class's ``step_ids``."""
        M = self.M
        i = torch.arange(height).view(-1, 1)
        j = torch.arange(width).view(1, -1)
        q3 = (i % 2) * 2 + (j % 2)
        u, v = i // 2, j // 2
        q2 = (u % 2) * 2 + (v % 2)
        s, t = u // 2, v // 2
        half3 = (u + v) % 2
        ids = torch.full((M, height, width), -1, dtype=torch.long)
        for c in range(M):
            g = int(self.group[c])
            in_s2 = q3 == S2_OFFSET[g]
            in_s1 = in_s2 & (q2 == S1_OFFSET[g])
            out = ids[c]
            out[in_s1] = (((s + t) % 2) != S1_FIRST[g]).long().expand_as(out)[in_s1]
            for r, pos in enumerate(S2_ORDER[g // 2]):
                out[in_s2 & ~in_s1 & (q2 == pos)] = 2 + r
            for r, (pos, h) in enumerate(S3_ORDER[g]):
                out[~in_s2 & (q3 == pos) & (half3 == h)] = 5 + r
        return ids

    def _fill_index(self, height: int, width: int, device) -> tuple[Tensor, Tensor]:
        key = (height, width, str(device))
        if key not in self._fill_cache:
            ids = self.step_ids(height, width)
            i = torch.arange(height).view(-1, 1)
            j = torch.arange(width).view(1, -1)
            src, dst = [], []
            for c in range(self.M):
                g = int(self.group[c])
                on_lattice = ((i % 2) * 2 + (j % 2)) == S2_OFFSET[g]
                skip = ((i % 4) == S2_HYPER_SKIP[g][0]) & ((j % 4) == S2_HYPER_SKIP[g][1])
                src.append(torch.nonzero((on_lattice & ~skip).flatten()).flatten())
                dst.append(torch.nonzero((ids.s2[c] >= 2).flatten()).flatten())
            self._fill_cache[key] = (torch.stack(src).to(device), torch.stack(dst).to(device))
        return self._fill_cache[key]

    def s2_hyper(self, params: Tensor, hyper_s2: Tensor, ids: StepGrids) -> Tensor:
        """The official s2 hyperprior fill: ``[B, 2M, H, W] -> [B, 2M, H/2, W/2]`` (see the module doc)."""
        B, C, H, W = params.shape
        src, dst = self._fill_index(H, W, params.device)
        reps = C // self.M
        src = src.repeat(reps, 1).unsqueeze(0).expand(B, -1, -1)
        dst = dst.repeat(reps, 1).unsqueeze(0).expand(B, -1, -1)
        vals = params.flatten(2).gather(2, src)
        out = params.new_zeros(B, C, (H // 2) * (W // 2)).scatter(2, dst, vals)
        return out.view(B, C, H // 2, W // 2)
