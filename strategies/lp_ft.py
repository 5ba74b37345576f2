"""LP-FT: an exact linear probe first, then full fine-tuning with LLRD from the probed head."""
from __future__ import annotations

from finetune_kit.strategies.full import FullLLRD
from finetune_kit.strategy import register_strategy


@register_strategy("lp_ft", aliases=("lpft",))
class LinearProbeThenFineTune(FullLLRD):
    """LP-FT (Kumar, Raghunathan, Jones, Ma & Liang, "Fine-Tuning can Distort Pretrained Features
    and Underperform Out-of-Distribution", ICLR 2022): the head is first solved as a linear probe
    on the frozen features (exact L-BFGS logistic regression, L2 strength chosen on validation:
    :mod:`finetune_kit.tasks.classification.linear_probe`), then every layer trains with layer-wise
    LR decay (``lr * llrd_decay**depth``, as :class:`~finetune_kit.strategies.full.FullLLRD`). A
    good head from the start keeps the early gradients from distorting the pretrained features.

    The probe is a run-level step (``probe_first``): the classification run solves it before the
    first epoch. Plain fine-tuning LRs apply (``--learning-rate``, typically small: 1e-4 .. 3e-4); the
    head gets no ``--head-lr-mult`` and the loss no label smoothing (a smoothed target would pull the
    solved head's confident logits back, and those large early gradients distort the features).

    Args:
        llrd_decay: per-depth LR factor in (0, 1]. Default 0.9.

    Raises:
        ValueError: ``llrd_decay`` outside (0, 1].
    """

    description = "LP-FT: exact linear probe (L-BFGS) first, then full fine-tuning with LLRD from the probed head"
    #: the run solves the linear probe into the head before the first epoch, whatever ``--probe-init`` says
    probe_first = True
    probe_required = True
