"""CompressAI zoo models in the compression layer preset and in a real fine-tune step."""
from __future__ import annotations

import json

import pytest
import torch

from finetune_kit.runs.checkpoint import load_checkpoint
from finetune_kit.layer_groups import resolve_layer_groups
from finetune_kit.strategy import get_strategy
from finetune_kit.tasks.compression.finetune.lr_manager import LayerLRConfig, lr_table, split_aux_groups
from finetune_kit.tasks.compression.models.zoo import build_model

# (name, small constructor sizes, parameter-name prefixes of its context modules)
ZOO = [
    ("bmshj2018-hyperprior", {"N": 16, "M": 24}, ()),
    ("mbt2018-mean", {"N": 16, "M": 24}, ()),
    ("cheng2020-anchor", {"N": 16}, ("context_prediction.", "entropy_parameters.")),
    ("elic2022-chandelier", {"N": 16, "M": 160}, ("latent_codec.y.",)),  # channel context + checkerboard codecs
]


@pytest.mark.parametrize("name,sizes,context_prefixes", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_model_groups_partition_parameters(name, sizes, context_prefixes):
    torch.manual_seed(0)
    model = build_model(name, **sizes)
    groups = resolve_layer_groups(model)  # auto-detected, as compress finetune resolves it
    assert groups.source == "preset:hpcm"
    owner: dict[str, list[str]] = {}
    for g in groups:
        for n in g.param_names:
            owner.setdefault(n, []).append(g.name)
    assert sorted(owner) == sorted(n for n, _ in model.named_parameters())
    assert all(len(v) == 1 for v in owner.values()), {n: v for n, v in owner.items() if len(v) > 1}
    assert {"g_a", "g_s", "h_a", "h_s", "entropy_bottleneck", "quantiles"} <= set(groups.names)
    in_context = {n for n, (g,) in owner.items() if g == "context"}
    expected = {n for n in owner if n.startswith(context_prefixes)} if context_prefixes else set()
    assert in_context == expected and ("context" in groups.names) == bool(context_prefixes)
    assert all(n.endswith("entropy_bottleneck.quantiles") for n in groups.by_name("quantiles").param_names)
    # the context multiplier and --freeze_entropy reach these parameters (names differ from HPCM's)
    cfg = LayerLRConfig(context_lr_ratio=0.25, freeze_entropy=True)
    strat = get_strategy("full", llrd_decay=1.0, **cfg.strategy_options(groups))
    main, aux = split_aux_groups(strat.build_param_groups(groups, weight_decay=0))
    rows = lr_table(torch.optim.Adam(main, lr=1e-4), base_lr=1e-4)
    for r in rows:
        if r.group == "context":
            assert r.lr == pytest.approx(2.5e-5), r
        elif r.group in ("h_a", "h_s"):
            assert r.lr == pytest.approx(5e-5), r
        elif r.group == "entropy_bottleneck":
            assert r.frozen, r
    assert [p for p in aux] == [p for n, p in model.named_parameters() if n.endswith("quantiles")]


def test_progressive_stages_skip_a_missing_context_group():
    from finetune_kit.tasks.compression.finetune.optimizers import progressive_stages as _stages

    groups = resolve_layer_groups(build_model("bmshj2018-hyperprior", N=16, M=24))
    stages = _stages(groups, progressive=True)
    assert stages == [["g_a", "g_s"], ["h_a", "h_s", "entropy_bottleneck"]]
    strat = get_strategy("progressive", unfreeze_schedule="1", layer_stages=stages, unfreeze_warmup_epochs=0)
    main, _ = split_aux_groups(strat.build_param_groups(groups, weight_decay=0))
    opt = torch.optim.Adam(main, lr=1e-4)
    assert strat.on_epoch_start(0, opt) == []
    (event,) = strat.on_epoch_start(1, opt)
    assert event.groups == ["h_a", "h_s", "entropy_bottleneck"]
    assert _stages(resolve_layer_groups(build_model("hpcm-tiny")), progressive=True) is None  # preset default


def test_finetune_step_on_cheng2020(photos, tmp_path, capsys):
    """The model of the bug report: its context modules were in no layer group."""
    from finetune_kit.runs.checkpoint import atomic_save
    from finetune_kit.tasks.compression.run.loop import run as finetune
    from finetune_kit.tasks.compression.run.config import FinetuneConfig

    torch.manual_seed(0)
    before = build_model("cheng2020-anchor").state_dict()
    src = atomic_save({"state_dict": before, "model": "cheng2020-anchor", "config": {"lmbda": 0.0067}}, tmp_path / "c.pt")
    cfg = FinetuneConfig(data=photos, output_dir=tmp_path, checkpoint=src, epochs=2, steps_per_epoch=1,
                         batch_size=2, patch_size=64, val_fraction=0.25, val_max_batches=1, wandb="disabled",
                         progress=False, threads=1, learning_rate=1e-4, context_lr_ratio=0.1, freeze_entropy=True,
                         progressive_unfreeze=True, unfreeze_schedule="1", unfreeze_warmup_epochs=0)
    res = finetune(cfg)
    rows = {r["group"]: r for r in json.load(open(f"{res['run_dir']}/lr_table.json"))["groups"]}
    assert rows["context"]["lr_key"].startswith("re:") and rows["context"]["lr_mult"] == 0.1
    assert "unfroze h_a, h_s (" in capsys.readouterr().out  # entropy bottleneck pinned: not announced
    sd = load_checkpoint(res["checkpoint"])["state_dict"]
    assert sd["entropy_parameters.0.weight"].device.type == "cpu"
    assert any(not torch.equal(sd[k], before[k]) for k in before if k.startswith("g_a."))  # trained 2 steps
    assert any(not torch.equal(sd[k], before[k]) for k in before if k.startswith("h_a."))  # stage 2 at epoch 1
    mask = before["context_prediction.mask"]  # the masked conv zeroes its weights in place on forward
    for k in before:
        if k.startswith(("context_prediction.", "entropy_parameters.", "entropy_bottleneck._")):
            a, b = (sd[k] * mask, before[k] * mask) if k == "context_prediction.weight" else (sd[k], before[k])
            assert torch.equal(a, b), k  # context joins later (no 3rd stage), entropy pinned
    assert torch.isfinite(torch.tensor(res["val_rd"]))
