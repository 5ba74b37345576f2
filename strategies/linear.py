"""Linear probing: only the classifier head trains."""
from __future__ import annotations

from finetune_kit.layer_groups import LayerGroups
from finetune_kit.strategy import FineTuneStrategy, register_strategy


@register_strategy("linear", aliases=("linear_probe",))
class LinearProbe(FineTuneStrategy):
    """Linear probe: the head trains, the backbone is frozen — BatchNorm running statistics
    included (``train_mode`` keeps frozen BatchNorm layers in eval mode). The weakest
    adaptation and no forgetting at all; Kornblith et al., "Do Better ImageNet Models
    Transfer Better?", CVPR 2019.

    Raises:
        ValueError: at ``build_param_groups`` when the model has no classifier head.
    """

    description = "linear probe: train the classifier head only; backbone and its BatchNorm statistics frozen"

    def initial_trainable(self, groups: LayerGroups):
        if not groups.head:
            raise ValueError("linear probing needs a classifier head, and this model has none "
                             "(compression models: use 'progressive' or 'full' with freeze patterns)")
        return [g.name for g in groups.head]

    @property
    def head_only(self) -> bool:
        return True
