"""ULMFiT-style gradual unfreezing, driven by a validation plateau."""
from __future__ import annotations

from finetune_kit.early_stopping import EarlyStopping
from finetune_kit.layer_groups import LayerGroups
from finetune_kit.llrd import check_llrd_decay, llrd_factor
from finetune_kit.strategy import FineTuneStrategy, UnfreezeEvent, register_strategy
from finetune_kit.unfreeze_warmup import UnfreezeWarmup


@register_strategy("gradual")
class GradualUnfreezing(FineTuneStrategy):
    """Head first, then head plus the top groups, then everything (Howard & Ruder,
    "Universal Language Model Fine-tuning for Text Classification", ACL 2018, section 3.2). The next
    stage unfreezes when the validation metric has not improved for ``gradual_patience`` epochs.

    The paper's three parts are all here:

    - *gradual unfreezing*: stages from the resolver's family defaults (ViT: head; + last 2 blocks +
      final norm; all. ResNet: head; + layer4; all) unless ``layer_stages`` is given;
    - *discriminative fine-tuning*: the group at depth ``d`` from the top trains at
      ``lr * llrd_decay**d`` (the paper divides by 2.6 per layer; 0.9 per group is the default, as
      for ``full``);
    - *a ramped LR after each unfreeze* (the role of its slanted triangular LR): a newly unfrozen
      group's LR ramps from ``warmup_start`` x to 1 x over ``unfreeze_warmup_epochs`` epochs
      (:class:`~finetune_kit.unfreeze_warmup.UnfreezeWarmup`).

    The head stage is a convex problem. When the run solved it as the exact linear probe first
    (``probe_first``, the classification default for this strategy; ``--no-probe-init`` trains the
    head by gradient instead), :meth:`on_head_probed` makes the first epoch start at stage 1, with
    an :class:`UnfreezeEvent` saying so.

    Args:
        gradual_patience: epochs without improvement before the next stage (>= 1). Default 3.
        monitor_mode: ``"max"`` (AUROC, accuracy) or ``"min"`` (loss). Default ``"max"``.
        min_delta: smallest change counted as an improvement. Default 0.
        llrd_decay: per-depth LR factor in (0, 1] (1: one LR for every group). Default 0.9.
        unfreeze_warmup_epochs: LR ramp of newly unfrozen groups, in epochs (0: none). Default 1.
        warmup_start: LR fraction in the epoch a group unfreezes, in (0, 1]. Default 0.1.

    Raises:
        ValueError: ``llrd_decay`` outside (0, 1], ``warmup_start`` outside (0, 1] or a negative
            ``unfreeze_warmup_epochs``.
    """

    description = ("gradual unfreezing (ULMFiT): probed head, then top groups, then all, on a validation plateau, "
                   "with LLRD and an LR ramp for newly unfrozen groups")
    #: the classification run solves the head (the first stage) as the exact linear probe by default
    probe_first = True

    def __init__(self, *, gradual_patience: int = 3, monitor_mode: str = "max", min_delta: float = 0.0,
                 llrd_decay: float = 0.9, unfreeze_warmup_epochs: int = 1, warmup_start: float = 0.1,
                 **common) -> None:
        super().__init__(**common)
        self.plateau = EarlyStopping(patience=gradual_patience, min_delta=min_delta, mode=monitor_mode)
        self.llrd_decay = check_llrd_decay(llrd_decay)
        self.warmup = UnfreezeWarmup(unfreeze_warmup_epochs, warmup_start)
        self.stage = 0
        self.head_probed = False
        self._stages: list[list[str]] = []

    def initial_trainable(self, groups: LayerGroups):
        self._stages = self.stages(groups)
        return self._stages[self.stage]

    def lr_factor(self, group_name: str, epoch: int) -> float:
        return llrd_factor(self.groups, group_name, self.llrd_decay) * self.warmup.factor(group_name, epoch)

    def on_head_probed(self) -> None:
        """The run solved the head before epoch 0: the first epoch trains stage 1 (when there is one)."""
        self.head_probed = True

    def on_epoch_start(self, epoch: int, optimizer) -> list[UnfreezeEvent]:
        if self.head_probed and self.stage == 0 and len(self._stages) > 1:
            return self._next_stage(epoch, "head solved by the exact linear probe", optimizer)
        return super().on_epoch_start(epoch, optimizer)

    def on_validation_end(self, epoch: int, metric: float, optimizer) -> list[UnfreezeEvent]:
        self.plateau.step(metric, epoch)
        if not self.plateau.should_stop or self.stage + 1 >= len(self._stages):
            return []
        self.plateau.bad_epochs = 0  # patience counts again from the unfreeze; the best is kept
        return self._next_stage(epoch + 1, f"no improvement for {self.plateau.patience} epochs", optimizer)

    def _next_stage(self, epoch: int, reason: str, optimizer) -> list[UnfreezeEvent]:
        """Unfreeze stage ``stage + 1`` from the 0-based ``epoch`` on (LR ramp starting there)."""
        self.stage += 1
        event = self._unfreeze(self._stages[self.stage], epoch, self.stage, reason)
        if event:
            self.warmup.mark(event.groups, epoch)
        return self._finish_events([event] if event else [], optimizer, epoch)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stage": self.stage, "plateau": self.plateau.state_dict(),
                "head_probed": self.head_probed, "unfrozen_at": self.warmup.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.stage = int(state["stage"])
        self.plateau.load_state_dict(state["plateau"])
        self.head_probed = bool(state.get("head_probed", False))
        self.warmup.load_state_dict(state.get("unfrozen_at", {}))
