"""Layer-wise LR table, freezing and per-group clipping (finetune_kit.tasks.compression.finetune.lr_manager)."""
from __future__ import annotations

import pytest
import torch

from finetune_kit.layer_groups import resolve_layer_groups
from finetune_kit.strategy import get_strategy
from finetune_kit.tasks.compression.finetune.lr_manager import (LayerLRConfig, clip_grad_norms, lr_table, print_lr_table,
                                          split_aux_groups)


def _optimizer(model, cfg: LayerLRConfig, base_lr=1e-4, strategy="full", **opts):
    groups = resolve_layer_groups(model, preset="hpcm")
    strat = get_strategy(strategy, **cfg.strategy_options(), **opts)
    pgs = strat.build_param_groups(groups, weight_decay=cfg.weight_decay)
    main, aux = split_aux_groups(pgs)
    opt = torch.optim.Adam(main, lr=base_lr)
    strat.apply(opt, 0)
    return opt, aux, strat


def test_default_table_has_guides_multipliers(standin):
    cfg = LayerLRConfig()
    opt, aux, _ = _optimizer(standin, cfg, llrd_decay=1.0)
    rows = {r.group: r for r in lr_table(opt, base_lr=1e-4, aux_params=aux, aux_lr=1e-3)}
    assert rows["g_a"].lr == pytest.approx(1e-4)
    assert rows["g_s"].lr == pytest.approx(1e-4)
    assert rows["h_a"].lr == pytest.approx(5e-5)
    assert rows["h_s"].lr == pytest.approx(5e-5)
    assert rows["context"].lr == pytest.approx(1e-5)
    assert rows["entropy_bottleneck"].lr == pytest.approx(1e-4)  # no key: multiplier 1
    assert rows["quantiles (aux loss)"].params == 4 * 3  # EntropyBottleneck(4).quantiles [4,1,3]
    assert not any(r.frozen for r in rows.values())
    counts = sum(r.params for r in lr_table(opt, aux_params=aux))
    assert counts == sum(p.numel() for p in standin.parameters())
    print_lr_table(list(rows.values()))


def test_finer_key_and_regex_and_context_ratio(standin):
    cfg = LayerLRConfig(lr_mults="g_a:1.0,g_a.1:0.2,re:^h_s\\.:0.3,context:0.1", context_lr_ratio=0.05,
                        weight_decay_map="context:0.01", weight_decay=0.0)
    opt, _, _ = _optimizer(standin, cfg, llrd_decay=1.0)
    by_name = {}
    for g in opt.param_groups:
        for n in g["param_names"]:
            by_name[n] = g
    assert by_name["g_a.0.weight"]["lr_mult"] == 1.0
    assert by_name["g_a.1.weight"]["lr_mult"] == 0.2  # longest key wins
    assert by_name["h_s.0.weight"]["lr_mult"] == 0.3
    assert by_name["context.0.weight"]["lr_mult"] == 0.05  # --context_lr_ratio overrides
    assert by_name["context.0.weight"]["weight_decay"] == 0.01
    assert by_name["context.0.bias"]["weight_decay"] == 0.0  # biases never decay
    assert by_name["g_a.0.weight"]["weight_decay"] == 0.0


def test_freeze_entropy_group_does_not_change(standin):
    cfg = LayerLRConfig(freeze_entropy=True, weight_decay=0.1)
    opt, aux, _ = _optimizer(standin, cfg, llrd_decay=1.0)
    eb = {n: p.detach().clone() for n, p in standin.named_parameters() if n.startswith("entropy_bottleneck.")}
    ga = standin.g_a[0].weight.detach().clone()
    assert all(not p.requires_grad for n, p in standin.named_parameters() if n.startswith("entropy_bottleneck."))
    rows = {r.group: r for r in lr_table(opt, base_lr=1e-3, aux_params=aux, aux_lr=1e-3)}
    assert rows["entropy_bottleneck"].frozen and rows["entropy_bottleneck"].lr == 0
    assert rows["quantiles (aux loss)"].frozen
    for _ in range(3):
        opt.zero_grad()
        out = standin(torch.rand(2, 3, 8, 8))
        loss = out["x_hat"].pow(2).mean() - torch.log(out["likelihoods"]["z"]).mean()
        loss.backward()
        opt.step()
    for n, p in standin.named_parameters():
        if n in eb:
            assert torch.equal(p, eb[n]), n
    assert not torch.equal(standin.g_a[0].weight, ga)


def test_per_group_clipping(standin):
    cfg = LayerLRConfig()
    opt, _, _ = _optimizer(standin, cfg, llrd_decay=1.0)
    for p in standin.parameters():
        p.grad = torch.full_like(p, 10.0)
    norms = clip_grad_norms(opt.param_groups, clip_map="context:0.5", clip_max_norm=0.0)
    ctx = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in standin.context.parameters()]))
    assert norms["context"] > 0.5 and float(ctx) == pytest.approx(0.5, rel=1e-4)
    ga = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in standin.g_a.parameters()]))
    assert float(ga) == pytest.approx(norms["g_a"])  # unclipped
    clip_grad_norms(opt.param_groups, clip_max_norm=1.0)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for g in opt.param_groups for p in g["params"]]))
    assert float(total) == pytest.approx(1.0, rel=1e-4)


def test_bad_ratio_rejected():
    with pytest.raises(ValueError, match="context_lr_ratio"):
        LayerLRConfig(context_lr_ratio=-1)
