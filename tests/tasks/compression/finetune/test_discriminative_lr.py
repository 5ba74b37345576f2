"""Per-group warm-up and step decay (finetune_kit.tasks.compression.finetune.discriminative_lr)."""
from __future__ import annotations

import pytest
import torch

from finetune_kit.tasks.compression.finetune.discriminative_lr import DiscriminativeLR, parse_warmups


def _opt():
    ps = [torch.nn.Parameter(torch.zeros(1)) for _ in range(6)]
    names = ["g_a", "g_s", "h_a", "h_s", "context", "entropy_bottleneck"]
    groups = [{"params": [p], "group_name": n, "lr_scale": s}
              for p, n, s in zip(ps, names, [1.0, 1.0, 0.5, 0.5, 0.1, 0.0])]
    return torch.optim.Adam(groups, lr=1.0)


def test_parse_warmups():
    assert parse_warmups("10,10,20,20,50") == {"g_a": 10, "g_s": 10, "h_a": 20, "h_s": 20, "context": 50}
    assert parse_warmups("g_a:3,context:7") == {"g_a": 3, "context": 7}
    with pytest.raises(ValueError, match="6 values"):
        parse_warmups("1,2,3,4,5,6")


def test_warmup_decay_and_frozen():
    opt = _opt()
    sched = DiscriminativeLR(opt, base_lr=1e-4, steps_per_epoch=2, warmups="10,10,20,20,50", decay_rate=0.5,
                             decay_every=30, warmup_start=0.1)
    lr = lambda: {g["group_name"]: g["lr"] for g in opt.param_groups}  # noqa: E731
    sched.apply(0)
    assert lr()["g_a"] == pytest.approx(1e-5)  # 10 % at the start
    assert lr()["context"] == pytest.approx(1e-4 * 0.1 * 0.1)
    assert lr()["entropy_bottleneck"] == 0.0  # frozen (lr_scale 0) stays 0
    sched.apply(2 * 5)  # epoch 5: g_a half-way (0.1 + 0.9 * 0.5)
    assert lr()["g_a"] == pytest.approx(1e-4 * 0.55)
    assert lr()["h_a"] == pytest.approx(1e-4 * 0.5 * (0.1 + 0.9 * 0.25))
    sched.apply(2 * 20)  # epoch 20: g_a, h_a done; context 0.1 + 0.9 * 0.4
    assert lr()["g_a"] == pytest.approx(1e-4)
    assert lr()["h_s"] == pytest.approx(5e-5)
    assert lr()["context"] == pytest.approx(1e-5 * 0.46)
    sched.apply(2 * 30)  # epoch 30: first decay
    assert lr()["g_a"] == pytest.approx(5e-5)
    sched.apply(2 * 60)  # epoch 60: second decay, context warm
    assert lr()["context"] == pytest.approx(1e-5 * 0.25)
