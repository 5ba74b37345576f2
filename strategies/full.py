"""Full fine-tuning with layer-wise learning-rate decay (LLRD)."""
from __future__ import annotations

from finetune_kit.layer_groups import LayerGroups
from finetune_kit.llrd import check_llrd_decay, llrd_factor
from finetune_kit.strategy import FineTuneStrategy, register_strategy


@register_strategy("full", aliases=("llrd",))
class FullLLRD(FineTuneStrategy):
    """Every group trains; the group at depth ``d`` from the top gets ``lr * llrd_decay**d``
    (the head, depth 0, gets the base LR). Layer-wise LR decay as in BEiT (Bao et al., 2022)
    and ELECTRA (Clark et al., 2020); ``llrd_decay=1`` is plain full fine-tuning.

    Args:
        llrd_decay: per-depth LR factor in (0, 1]. Default 0.9.

    Raises:
        ValueError: ``llrd_decay`` outside (0, 1].
    """

    description = "full fine-tuning with layer-wise LR decay: group at depth d from the top gets lr * llrd_decay**d"

    def __init__(self, *, llrd_decay: float = 0.9, **common) -> None:
        super().__init__(**common)
        self.llrd_decay = check_llrd_decay(llrd_decay)

    def initial_trainable(self, groups: LayerGroups):
        return groups.names

    def lr_factor(self, group_name: str, epoch: int) -> float:
        return llrd_factor(self.groups, group_name, self.llrd_decay)
