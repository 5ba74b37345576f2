"""The HPCM coding schedule: which element of y is coded at which of the 11 steps.

y (``[B, M, H, W]``, H and W multiples of 4) is split into ``groups`` channel groups (8 in
the paper). Each group picks its own sub-sampling offsets, so that at every step different
channel groups code different spatial positions (HPCM, Sec. 3.2):

- s2 grid (``H/2 x W/2``): element ``(2u + a, 2v + b)`` of y, ``(a, b)`` = the group's s2 offset;
- s1 grid (``H/4 x W/4``): element ``(2s + c, 2t + d)`` of the s2 grid, ``(c, d)`` its s1 offset.

Steps (0-based): s1 = steps 0, 1 (checkerboard halves of the s1 grid); s2 = steps 2, 3, 4 (the
three other positions of each 2x2 block of the s2 grid, diagonal first); s3 = steps 5..10
(the three other positions of each 2x2 block of y, diagonal first, each split into two
checkerboard halves of the blocks). Fractions of y: s1 1/16, s2 3/16, s3 12/16.

Grids are moved between scales with ``pixel_unshuffle`` + a per-channel gather (``down``) and
the inverse scatter + ``pixel_shuffle`` (``up``); both are exact (no arithmetic on values).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CodingSchedule", "SCALE_STEPS", "NUM_STEPS"]

#: coding steps of each scale (0-based step ids)
SCALE_STEPS = {"s1": (0, 1), "s2": (2, 3, 4), "s3": (5, 6, 7, 8, 9, 10)}
NUM_STEPS = 11

# Per-group choices (indexed by group % 8). Offsets are 2x2 positions k = 2*row + col.
_S2_OFFSET = (0, 3, 1, 2, 2, 1, 3, 0)
_S1_OFFSET = (0, 1, 2, 3, 3, 2, 1, 0)
_PARITY = (0, 1, 1, 0, 1, 0, 0, 1)


def _order(anchor: int, g: int) -> list[int]:
    """The three non-anchor 2x2 positions, diagonal first, the other two in a group-dependent order."""
    diag = anchor ^ 3
    rest = [k for k in range(4) if k not in (anchor, diag)]
    if g % 2:
        rest.reverse()
    return [diag, *rest]


@dataclass
class StepGrids:
    s1: Tensor  # step ids [M, H/4, W/4] (long)
    s2: Tensor  # [M, H/2, W/2]
    s3: Tensor  # [M, H, W]


class CodingSchedule:
    """Step assignment and scale changes for a latent with ``latent_channels`` channels.

    Args:
        latent_channels: M; must be a multiple of ``groups``.
        groups: channel groups with distinct spatial patterns (default 8, as in the paper).

    Raises:
        ValueError: M not a multiple of ``groups``.
    """

    def __init__(self, latent_channels: int, groups: int = 8) -> None:
        if latent_channels % groups:
            raise ValueError(f"latent channels M={latent_channels} must be a multiple of groups={groups}")
        self.M, self.groups = latent_channels, groups
        g = torch.arange(latent_channels) // (latent_channels // groups)
        self.group = g
        self.k2 = torch.tensor([_S2_OFFSET[int(i) % 8] for i in g])
        self.k1 = torch.tensor([_S1_OFFSET[int(i) % 8] for i in g])
        self.parity = torch.tensor([_PARITY[int(i) % 8] for i in g])
        self._cache: dict[tuple, StepGrids] = {}

    # -- moving between grids ----------------------------------------------------------
    def _index(self, channels: int, k: Tensor, device) -> Tensor:
        reps = channels // self.M
        return (torch.arange(channels) * 4 + k.repeat(reps)).to(device)

    def down(self, x: Tensor, k: Tensor) -> Tensor:
        """Sub-sample ``x [B, n*M, H, W]`` 2x: channel c keeps its 2x2 position ``k[c % M]``.

        Returns ``[B, n*M, H/2, W/2]``.
        """
        return F.pixel_unshuffle(x, 2).index_select(1, self._index(x.shape[1], k, x.device))

    def up(self, x: Tensor, k: Tensor) -> Tensor:
        """Inverse of :meth:`down`: place ``x [B, n*M, h, w]`` into zeros ``[B, n*M, 2h, 2w]``."""
        b, c, h, w = x.shape
        out = x.new_zeros(b, c * 4, h, w).index_copy(1, self._index(c, k, x.device), x)
        return F.pixel_shuffle(out, 2)

    def to_s2(self, x: Tensor) -> Tensor:
        """Full y grid -> s2 grid (``[B,nM,H,W] -> [B,nM,H/2,W/2]``)."""
        return self.down(x, self.k2)

    def to_s1(self, x_s2: Tensor) -> Tensor:
        """s2 grid -> s1 grid (``[B,nM,h,w] -> [B,nM,h/2,w/2]``)."""
        return self.down(x_s2, self.k1)

    def s1_to_s2(self, x: Tensor) -> Tensor:
        """Place s1-grid values on the s2 grid (zeros at the positions new in s2)."""
        return self.up(x, self.k1)

    def s2_to_s3(self, x: Tensor) -> Tensor:
        """Place s2-grid values on the full y grid (zeros at the positions new in s3)."""
        return self.up(x, self.k2)

    # -- step ids ----------------------------------------------------------------------
    def step_ids(self, height: int, width: int, device=None) -> StepGrids:
        """Step id (0..10) of every element of y, on the s1, s2 and full (s3) grids.

        Args:
            height, width: y's spatial size; both multiples of 4.

        Raises:
            ValueError: a side is not a multiple of 4.
        """
        if height % 4 or width % 4:
            raise ValueError(f"latent size {height}x{width} must be a multiple of 4: pad the image")
        key = (height, width, str(device))
        if key not in self._cache:
            ids = self._full_ids(height, width)
            if int(ids.min()) < 0:
                raise AssertionError(f"schedule {self.name!r} left a position of y uncoded")
            s2_ids = self.to_s2(ids.unsqueeze(0))[0]
            s1_ids = self.to_s1(s2_ids.unsqueeze(0))[0]
            self._cache[key] = StepGrids(s1=s1_ids.to(device), s2=s2_ids.to(device), s3=ids.to(device))
        return self._cache[key]

    def _full_ids(self, height: int, width: int) -> Tensor:
        """``[M, height, width]`` step id of every element of y on its own grid (this schedule's offsets)."""
        M = self.M
        i = torch.arange(height).view(1, -1, 1)
        j = torch.arange(width).view(1, 1, -1)
        k2 = self.k2.view(-1, 1, 1)
        k1 = self.k1.view(-1, 1, 1)
        par = self.parity.view(-1, 1, 1)
        q3 = (i % 2) * 2 + (j % 2)  # position in the 2x2 block of y
        u, v = i // 2, j // 2  # s2 grid coordinates
        q2 = (u % 2) * 2 + (v % 2)
        s, t = u // 2, v // 2  # s1 grid coordinates
        ids = torch.full((M, height, width), -1, dtype=torch.long)
        in_s2 = (q3 == k2).expand(M, height, width)
        in_s1 = in_s2 & (q2 == k1)
        ids[in_s1] = ((s + t + par) % 2).expand(M, height, width)[in_s1]
        rank2 = torch.full((M, 4), -1, dtype=torch.long)
        rank3 = torch.full((M, 4), -1, dtype=torch.long)
        for c in range(M):
            g = int(self.group[c])
            for r, k in enumerate(_order(int(self.k1[c]), g)):
                rank2[c, k] = r
            for r, k in enumerate(_order(int(self.k2[c]), g + 1)):
                rank3[c, k] = r
        cidx = torch.arange(M).view(-1, 1, 1)
        r2 = rank2[cidx, q2.expand(M, height, width)]
        r3 = rank3[cidx, q3.expand(M, height, width)]
        sel2 = in_s2 & ~in_s1
        ids[sel2] = (2 + r2)[sel2]
        sel3 = ~in_s2
        half = ((u + v + par) % 2).expand(M, height, width)
        ids[sel3] = (5 + 2 * r3 + half)[sel3]
        return ids

    # -- hooks the context model asks the schedule for (overridden by the paper's schedule) --
    #: name of this schedule (``"kit"``: this module's offsets and orders)
    name = "kit"

    def adaptor_index(self, step: int) -> int:
        """Index of the 1x1 adaptor used at ``step`` (1..10) in its scale's list (s1: 1, s2: 3, s3: 6).

        Here step ``k`` uses adaptor ``k - first step of its scale`` (s2: 0, 1, 2; s3: 0..5).
        """
        for steps in SCALE_STEPS.values():
            if step in steps:
                return step - steps[0] - (1 if steps[0] == 0 else 0)
        raise ValueError(f"step {step} is not one of the 11 HPCM coding steps")

    def s2_hyper(self, params: Tensor, hyper_s2: Tensor, ids: "StepGrids") -> Tensor:
        """Hyperprior values ``[B, 2M, H/2, W/2]`` added to the carried context entering s2.

        Args:
            params: hyperprior output on y's grid ``[B, 2M, H, W]``.
            hyper_s2: ``params`` moved to the s2 grid (:meth:`to_s2`).
            ids: :meth:`step_ids` of this latent size.

        Returns ``hyper_s2`` at the positions new in s2 (step ids 2-4), zeros at the s1 positions.
        """
        return torch.where((ids.s2 >= 2).repeat(2, 1, 1), hyper_s2, 0.0)

    def scale_masks(self, height: int, width: int, device=None) -> dict[str, Tensor]:
        """Boolean masks ``[M, H, W]`` of y's positions coded at each scale (``s1``, ``s2``, ``s3``).

        They partition y: s1 = steps 0-1, s2 = steps 2-4, s3 = steps 5-10.
        """
        ids = self.step_ids(height, width, device).s3
        return {"s1": ids < 2, "s2": (ids >= 2) & (ids < 5), "s3": ids >= 5}
