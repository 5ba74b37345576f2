"""HPCM's hierarchical progressive context model (Li et al., ICCV 2025, Sec. 3.2-3.3).

:class:`HPCMContext` holds every context module (the model registers it as ``context``) and
runs the 11 coding steps of :mod:`finetune_kit.tasks.compression.models.hpcm.schedule` with a pluggable *step
coder*, so training (``forward``), encoding and decoding share one code path: the entropy
parameters of a step are computed from exactly the tensors the decoder has at that step.

Per step ``k >= 1``: ``c = prior_s(adaptor_k(cat(carried, y_hat_so_far)), gain_k)`` gives the
scales and means of the positions coded now; ``carried = attn_s(c, carried)`` fuses the step's
context into the context carried to the next step. Step 0 uses the hyperprior directly.
Between scales, the carried context is placed on the finer grid, the hyperprior fills the new
positions and a 1x1 ``context_net`` merges them.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from finetune_kit.tasks.compression.models.hpcm.layers import SpatialPrior, WindowCrossAttention, conv1x1
from finetune_kit.tasks.compression.models.hpcm.schedule import CodingSchedule

__all__ = ["HPCMContext", "StepCoder"]

#: ``coder(step, y_at_grid | None, scales, means, mask) -> y_hat of this step`` (zeros off ``mask``).
#: Shapes: ``y, scales, means [B, M, h, w]``, ``mask [M, h, w]`` (bool) -> ``[B, M, h, w]``.
StepCoder = Callable[[int, Optional[Tensor], Tensor, Tensor, Tensor], Tensor]


class HPCMContext(nn.Module):
    """All context modules of HPCM, under one prefix.

    Args:
        latent_channels: M.
        prior_depths_s12: (blocks before gain, blocks after) of the spatial prior shared by s1 and s2.
        prior_depths_s3: same for the s3 prior.
        windows: attention windows (s1, s2, s3), in positions of each scale's grid (paper 4/8/8).
        heads: attention heads (paper 32).
        mlp_ratio: hidden multiplier of the depth-wise blocks (paper 2).

    Children: ``s1_adaptor`` (1 conv), ``s2_adaptor`` (3), ``s3_adaptor`` (6) 1x1 convs 3M->3M;
    ``s12_prior``, ``s3_prior`` (:class:`SpatialPrior`); ``step_gains`` (``[10, 3M]``, one gain
    vector per step 1..10); ``s1_attn``, ``s2_attn``, ``s3_attn``; ``context_net`` (2 convs 2M->2M).
    """

    def __init__(self, latent_channels: int, prior_depths_s12: Sequence[int] = (2, 1),
                 prior_depths_s3: Sequence[int] = (3, 2), windows: Sequence[int] = (4, 8, 8),
                 heads: int = 32, mlp_ratio: int = 2) -> None:
        super().__init__()
        M = latent_channels
        self.M = M
        self.s1_adaptor = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(1))
        self.s2_adaptor = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(3))
        self.s3_adaptor = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(6))
        self.s12_prior = SpatialPrior(M, *prior_depths_s12, mlp_ratio=mlp_ratio)
        self.s3_prior = SpatialPrior(M, *prior_depths_s3, mlp_ratio=mlp_ratio)
        self.step_gains = nn.Parameter(torch.ones(10, 3 * M))
        self.s1_attn = WindowCrossAttention(2 * M, windows[0], heads)
        self.s2_attn = WindowCrossAttention(2 * M, windows[1], heads)
        self.s3_attn = WindowCrossAttention(2 * M, windows[2], heads)
        self.context_net = nn.ModuleList(conv1x1(2 * M, 2 * M) for _ in range(2))

    def _predict(self, step: int, carried: Tensor, y_hat: Tensor, schedule: CodingSchedule) -> Tensor:
        """Entropy parameters ``[B, 2M, h, w]`` of coding step ``step`` (1..10).

        The adaptor of the step is ``schedule.adaptor_index(step)`` in its scale's list (the
        paper's code relabels them, see :mod:`...hpcm.paper_schedule`); the gain is ``step_gains[step - 1]``.
        """
        a = schedule.adaptor_index(step)
        if step == 1:
            adaptor, prior = self.s1_adaptor[a], self.s12_prior
        elif step <= 4:
            adaptor, prior = self.s2_adaptor[a], self.s12_prior
        else:
            adaptor, prior = self.s3_adaptor[a], self.s3_prior
        gain = self.step_gains[step - 1].view(1, -1, 1, 1)
        return prior(adaptor(torch.cat((carried, y_hat), dim=1)), gain)

    def run(self, params: Tensor, schedule: CodingSchedule, coder: StepCoder,
            y: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Code y in the 11 HPCM steps.

        Args:
            params: hyperprior output ``[B, 2M, H, W]`` (scales, then means) on y's grid.
            schedule: the step assignment.
            coder: a :data:`StepCoder` (estimation, rANS encoder or decoder).
            y: the latent ``[B, M, H, W]`` (``None`` when decoding).

        Returns:
            ``(y_hat, scales, means)``, each ``[B, M, H, W]``: the dequantized latent and the
            Gaussian parameters every element was coded with.
        """
        B, _, H, W = params.shape
        ids = schedule.step_ids(H, W, params.device)
        hyper_s2 = schedule.to_s2(params)
        hyper_s1 = schedule.to_s1(hyper_s2)
        y_s3 = y
        y_s2 = schedule.to_s2(y) if y is not None else None
        y_s1 = schedule.to_s1(y_s2) if y is not None else None

        # ---- s1: 2 steps on the 4x sub-sampled grid
        carried = hyper_s1
        y_hat = params.new_zeros(B, self.M, H // 4, W // 4)
        scales_acc, means_acc = torch.zeros_like(y_hat), torch.zeros_like(y_hat)
        scales, means = hyper_s1.chunk(2, 1)  # step 0: the hyperprior alone
        mask = ids.s1 == 0
        y_hat = y_hat + coder(0, y_s1, scales, means, mask)
        scales_acc, means_acc = torch.where(mask, scales, scales_acc), torch.where(mask, means, means_acc)
        y_hat, scales_acc, means_acc, carried = self._code_steps(
            (1,), self.s1_attn, ids.s1, y_s1, carried, y_hat, scales_acc, means_acc, schedule, coder)

        # ---- s2: 4 steps on the 2x sub-sampled grid (first = s1), 3 new
        y_hat, scales_acc, means_acc = (schedule.s1_to_s2(t) for t in (y_hat, scales_acc, means_acc))
        carried = self.context_net[0](schedule.s1_to_s2(carried) + schedule.s2_hyper(params, hyper_s2, ids))
        y_hat, scales_acc, means_acc, carried = self._code_steps(
            (2, 3, 4), self.s2_attn, ids.s2, y_s2, carried, y_hat, scales_acc, means_acc, schedule, coder)

        # ---- s3: 8 steps on y's grid (first two = s2), 6 new
        y_hat, scales_acc, means_acc = (schedule.s2_to_s3(t) for t in (y_hat, scales_acc, means_acc))
        new = (ids.s3 >= 5).repeat(2, 1, 1)
        carried = self.context_net[1](schedule.s2_to_s3(carried) + torch.where(new, params, 0.0))
        y_hat, scales_acc, means_acc, _ = self._code_steps(
            range(5, 11), self.s3_attn, ids.s3, y_s3, carried, y_hat, scales_acc, means_acc, schedule, coder)
        return y_hat, scales_acc, means_acc

    def _code_steps(self, steps, attn: nn.Module, grid_ids: Tensor, y_grid: Optional[Tensor], carried: Tensor,
                    y_hat: Tensor, scales_acc: Tensor, means_acc: Tensor, schedule: CodingSchedule,
                    coder: StepCoder) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Code ``steps`` of one scale on its grid: predict from the carried context and
        what is decoded so far, code the step's positions, fuse the context for the next step
        (skipped after step 10, whose fused context would be unused). Returns the updated
        ``(y_hat, scales, means, carried)``."""
        for step in steps:
            ctx = self._predict(step, carried, y_hat, schedule)
            if step < 10:
                carried = attn(ctx, carried)
            scales, means = ctx.chunk(2, 1)
            mask = grid_ids == step
            y_hat = y_hat + coder(step, y_grid, scales, means, mask)
            scales_acc = torch.where(mask, scales, scales_acc)
            means_acc = torch.where(mask, means, means_acc)
        return y_hat, scales_acc, means_acc, carried
