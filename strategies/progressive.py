"""Progressive unfreezing on a fixed epoch schedule, with LR warm-up of new groups."""
from __future__ import annotations

from typing import Sequence

from finetune_kit.layer_groups import LayerGroups
from finetune_kit.strategy import FineTuneStrategy, UnfreezeEvent, register_strategy
from finetune_kit.unfreeze_warmup import UnfreezeWarmup


def parse_schedule(schedule: str | Sequence[int]) -> list[int]:
    """``"100,200"`` -> ``[100, 200]`` (epochs, 0-based, strictly increasing).

    Raises:
        ValueError: non-integers, negatives or a non-increasing schedule.
    """
    if isinstance(schedule, str):
        try:
            epochs = [int(x) for x in schedule.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"unfreeze schedule {schedule!r} must be comma-separated epochs, e.g. '100,200'") from None
    else:
        epochs = [int(x) for x in schedule]
    if any(e < 0 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError(f"unfreeze schedule {epochs} must be non-negative and strictly increasing")
    return epochs


@register_strategy("progressive")
class ProgressiveUnfreezing(FineTuneStrategy):
    """Stage ``k`` (cumulative groups) becomes trainable at epoch ``unfreeze_schedule[k-1]``;
    a newly unfrozen group's LR ramps linearly from ``warmup_start`` x to 1 x its LR over
    ``unfreeze_warmup_epochs`` epochs. Stages: the family default (HPCM: g_a+g_s, then
    +h_a+h_s (+entropy bottleneck), then +context; classifiers: head, + top groups, all)
    or ``layer_stages``. Accepts ``lr_mults`` (e.g. ``g_a:1.0,h_a:0.5,context:0.1``) and
    ``freeze_patterns``. A group whose parameters are all pinned by ``freeze_patterns`` (e.g.
    the entropy bottleneck with ``--freeze_entropy``) joins its stage but stays frozen, so it is
    left out of the stage's :class:`UnfreezeEvent` (which lists only groups that start training).

    Args:
        unfreeze_schedule: for stages 1, 2, ...: the number of completed epochs after which the
            stage unfreezes (``"2,4"``: stage 1 trains from epoch 3, stage 2 from epoch 5,
            counting epochs from 1; equivalently the 0-based epoch index); ``"100,200"``.
            Default ``"2,4"``. Extra entries beyond the stages are an error.
        unfreeze_warmup_epochs: ramp length in epochs (0: no ramp). Default 5.
        warmup_start: LR fraction at the unfreeze epoch. Default 0.1.

    Raises:
        ValueError: bad schedule, more schedule entries than stages - 1, or ``warmup_start``
            outside (0, 1].
    """

    description = "progressive unfreezing on an epoch schedule (e.g. 100,200) with LR warm-up of newly unfrozen groups"

    def __init__(self, *, unfreeze_schedule: str | Sequence[int] = "2,4", unfreeze_warmup_epochs: int = 5,
                 warmup_start: float = 0.1, **common) -> None:
        super().__init__(**common)
        self.schedule = parse_schedule(unfreeze_schedule)
        self.warmup = UnfreezeWarmup(unfreeze_warmup_epochs, warmup_start)
        self.stage = 0
        self._stages: list[list[str]] = []

    def initial_trainable(self, groups: LayerGroups):
        self._stages = self.stages(groups)
        if len(self.schedule) > len(self._stages) - 1:
            raise ValueError(f"unfreeze schedule {self.schedule} has {len(self.schedule)} entries but there are only "
                             f"{len(self._stages) - 1} later stages ({self._stages}); drop entries or pass layer_stages")
        return self._stages[0]

    def lr_factor(self, group_name: str, epoch: int) -> float:
        return self.warmup.factor(group_name, epoch)

    def on_epoch_start(self, epoch: int, optimizer) -> list[UnfreezeEvent]:
        events = []
        while self.stage < len(self.schedule) and epoch >= self.schedule[self.stage]:
            self.stage += 1
            event = self._unfreeze(self._stages[self.stage], epoch, self.stage,
                                   f"unfreeze_schedule: after {self.schedule[self.stage - 1]} completed epochs")
            if event:
                self.warmup.mark(event.groups, epoch)
                events.append(event)
        events = self._finish_events(events, optimizer, epoch)
        return self._without_pinned(events, optimizer)

    def _without_pinned(self, events: list[UnfreezeEvent], optimizer) -> list[UnfreezeEvent]:
        """Drop from ``events`` the groups none of whose parameters can train (all pinned frozen, or
        in no optimizer group); an event left with no group is dropped. Edits the recorded events too."""
        live = {g["group_name"] for g in optimizer.param_groups
                if not g.get("pinned_frozen", False) and any(p.requires_grad for p in g["params"])}
        kept = []
        for e in events:
            e.groups = [g for g in e.groups if g in live]
            if e.groups:
                kept.append(e)
            else:
                self.events.remove(e)
        return kept

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stage": self.stage, "unfrozen_at": self.warmup.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.stage = int(state["stage"])
        self.warmup.load_state_dict(state["unfrozen_at"])
