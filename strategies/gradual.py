"""ULMFiT-style gradual unfreezing, driven by a validation plateau."""
from __future__ import annotations

from finetune_kit.early_stopping import EarlyStopping
from finetune_kit.layer_groups import LayerGroups
from finetune_kit.strategy import FineTuneStrategy, UnfreezeEvent, register_strategy


@register_strategy("gradual")
class GradualUnfreezing(FineTuneStrategy):
    """Head first, then head plus the top groups, then everything (Howard & Ruder,
    "Universal Language Model Fine-tuning", ACL 2018). The next stage unfreezes when the
    validation metric has not improved for ``gradual_patience`` epochs.

    Stages come from the resolver's family defaults (ViT: head; + last 2 blocks + final
    norm; all. ResNet: head; + layer4; all) unless ``layer_stages`` is given.

    Args:
        gradual_patience: epochs without improvement before the next stage (>= 1). Default 3.
        monitor_mode: ``"max"`` (AUROC, accuracy) or ``"min"`` (loss). Default ``"max"``.
        min_delta: smallest change counted as an improvement. Default 0.
    """

    description = "gradual unfreezing (ULMFiT): head, then top groups, then all; next stage on a validation plateau"

    def __init__(self, *, gradual_patience: int = 3, monitor_mode: str = "max", min_delta: float = 0.0, **common) -> None:
        super().__init__(**common)
        self.plateau = EarlyStopping(patience=gradual_patience, min_delta=min_delta, mode=monitor_mode)
        self.stage = 0
        self._stages: list[list[str]] = []

    def initial_trainable(self, groups: LayerGroups):
        self._stages = self.stages(groups)
        return self._stages[self.stage]

    def on_validation_end(self, epoch: int, metric: float, optimizer) -> list[UnfreezeEvent]:
        self.plateau.step(metric, epoch)
        if not self.plateau.should_stop or self.stage + 1 >= len(self._stages):
            return []
        self.stage += 1
        self.plateau.bad_epochs = 0  # patience counts again from the unfreeze; the best is kept
        event = self._unfreeze(self._stages[self.stage], epoch + 1, self.stage,
                               f"no improvement for {self.plateau.patience} epochs")
        return self._finish_events([event] if event else [], optimizer, epoch + 1)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stage": self.stage, "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.stage = int(state["stage"])
        self.plateau.load_state_dict(state["plateau"])
