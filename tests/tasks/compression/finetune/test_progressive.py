"""Progressive unfreezing of HPCM groups at the scheduled epochs with the LR warm-up ramp."""
from __future__ import annotations

import pytest
import torch

from finetune_kit.layer_groups import resolve_layer_groups
from finetune_kit.strategy import get_strategy
from finetune_kit.tasks.compression.finetune.lr_manager import LayerLRConfig, lr_table, split_aux_groups


def test_schedule_and_ramp(standin):
    cfg = LayerLRConfig()  # g_a/g_s 1.0, h_a/h_s 0.5, context 0.1
    strat = get_strategy("progressive", unfreeze_schedule="2,4", unfreeze_warmup_epochs=2, warmup_start=0.1,
                         **cfg.strategy_options())
    main, _ = split_aux_groups(strat.build_param_groups(resolve_layer_groups(standin, preset="hpcm"), weight_decay=0))
    opt = torch.optim.Adam(main, lr=1e-4)
    seen = {}
    for epoch in range(6):
        events = strat.on_epoch_start(epoch, opt)
        seen[epoch] = ({r.group: r.lr for r in lr_table(opt, base_lr=1e-4)}, [g for e in events for g in e.groups])
        if epoch == 0:
            assert not standin.h_a[0].weight.requires_grad and standin.g_a[0].weight.requires_grad
    lrs0, ev0 = seen[0]
    assert ev0 == [] and lrs0["g_a"] == pytest.approx(1e-4) and lrs0["h_a"] == 0 and lrs0["context"] == 0
    assert seen[1][0]["h_s"] == 0
    lrs2, ev2 = seen[2]
    assert sorted(ev2) == ["entropy_bottleneck", "h_a", "h_s"]
    assert lrs2["h_a"] == pytest.approx(5e-5 * 0.1)  # 10 % at the unfreeze epoch
    assert seen[3][0]["h_a"] == pytest.approx(5e-5 * 0.55)  # half-way through a 2-epoch ramp
    lrs4, ev4 = seen[4]
    assert lrs4["h_a"] == pytest.approx(5e-5) and "context" in ev4
    assert lrs4["context"] == pytest.approx(1e-5 * 0.1)
    assert seen[5][0]["context"] == pytest.approx(1e-5 * 0.55)
    assert standin.context[0].weight.requires_grad
    # the state round-trips (resume continues the same stage)
    other = get_strategy("progressive", unfreeze_schedule="2,4", unfreeze_warmup_epochs=2, **cfg.strategy_options())
    other.load_state_dict(strat.state_dict())
    assert other.stage == 2 and other.warmup.unfrozen_at["context"] == 4
