"""Strategies on real timm models: trainable sets, LRs, transitions, frozen BN, state."""
from __future__ import annotations

import math

import pytest
import timm
import torch

from finetune_kit.runs.checkpoint import atomic_save, load_checkpoint
from finetune_kit.layer_groups import resolve_layer_groups
from finetune_kit.schedulers import build_lr_scheduler
from finetune_kit.strategy import UnknownStrategyError, get_strategy, list_strategies

BASE_LR = 1e-3


def _setup(name, model_name="resnet18", epochs=10, **options):
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=2)
    groups = resolve_layer_groups(model)
    strategy = get_strategy(name, **options)
    optimizer = torch.optim.AdamW(strategy.build_param_groups(groups, weight_decay=0.5), lr=BASE_LR)
    schedule = build_lr_scheduler(optimizer, epochs=epochs, steps_per_epoch=1, warmup_epochs=0, kind="constant")
    return model, groups, strategy, optimizer, schedule


def _lrs(optimizer):
    """Effective LR per layer group (max over its optimizer groups)."""
    out = {}
    for g in optimizer.param_groups:
        out[g["group_name"]] = max(out.get(g["group_name"], 0.0), g["lr"])
    return out


def _trainable_groups(groups):
    return {g.name for g in groups if any(p.requires_grad for p in g.params)}


def _step(model, optimizer, size=64):
    x = torch.randn(4, 3, size, size)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_registry_lists_the_builtin_five_and_rejects_unknown():
    assert set(list_strategies()) == {"linear", "lp_ft", "gradual", "full", "progressive", "lora"}
    assert all(list_strategies().values())
    with pytest.raises(UnknownStrategyError, match="registered: full, gradual, linear, lora, lp_ft, progressive"):
        get_strategy("fancy")
    with pytest.raises(TypeError, match="no option 'bogus'"):
        get_strategy("linear", bogus=1)
    assert get_strategy("llrd").name == "full"


def test_options_of_another_strategy_are_an_error_naming_what_is_accepted():
    """Nothing is dropped silently: an option of another strategy is as wrong as a made-up one."""
    from finetune_kit.strategy import StrategyOptionError, strategy_options

    with pytest.raises(StrategyOptionError) as info:
        get_strategy("linear", llrd_decay=0.8)
    msg = str(info.value)
    assert isinstance(info.value, TypeError) and "\n" not in msg
    assert "'linear'" in msg and "'llrd_decay'" in msg and "freeze_patterns, layer_stages, lr_mults" in msg
    with pytest.raises(StrategyOptionError, match="'unfreeze_schedule'"):
        get_strategy("full", llrd_decay=1.0, unfreeze_schedule="2,4")
    assert strategy_options("llrd") == strategy_options("full") >= {"llrd_decay", "lr_mults", "layer_stages"}
    assert "gradual_patience" in strategy_options("gradual") and "unfreeze_schedule" not in strategy_options("gradual")
    assert get_strategy("full", llrd_decay=0.8).llrd_decay == 0.8


def test_plugin_strategy_with_its_own_option():
    """A strategy registered from outside the package is built with its own option; others are refused."""
    from finetune_kit.strategy import _REGISTRY, StrategyOptionError

    from tests.conftest import PLUGIN_SOURCE

    exec(compile(PLUGIN_SOURCE, "plugin", "exec"), {})  # as a user's module registering its strategy
    try:
        s = get_strategy("myplugin", myopt=3, lr_mults="fc:2")
        assert s.myopt == 3 and s.lr_mults == {"fc": 2.0}
        with pytest.raises(StrategyOptionError, match="'myplugin' has no option 'llrd_decay'.*myopt"):
            get_strategy("myplugin", llrd_decay=0.9)
    finally:
        _REGISTRY.pop("myplugin", None)


def test_builtin_strategies_found_through_entry_point_or_composition_root():
    """The core finds the built-ins only through the entry point; without package metadata the
    composition root (the CLI) still registers the six by importing them."""
    import subprocess
    import sys
    from pathlib import Path

    six = "['full', 'gradual', 'linear', 'lora', 'lp_ft', 'progressive']"
    via_entry_point = "from finetune_kit.strategy import list_strategies; print(sorted(list_strategies()))"
    without_metadata = ("import importlib.metadata as md; md.entry_points = lambda **kw: []; "
                        "from finetune_kit.tasks.cli import app; app(['strategies'], standalone_mode=False); " + via_entry_point)
    core_alone = "import importlib.metadata as md; md.entry_points = lambda **kw: []; " + via_entry_point
    for code, expected in ((via_entry_point, six), (without_metadata, six), (core_alone, "[]")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[2]).stdout
        assert out.strip().splitlines()[-1] == expected, code


def test_linear_probe_trains_head_only_and_keeps_bn_stats():
    model, groups, strategy, optimizer, schedule = _setup("linear")
    schedule.apply(0)
    assert _trainable_groups(groups) == {"head"}
    assert strategy.head_only
    lrs = _lrs(optimizer)
    assert lrs["head"] == pytest.approx(BASE_LR) and all(v == 0.0 for k, v in lrs.items() if k != "head")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("fc.")}
    stats = {n: b.detach().clone() for n, b in model.named_buffers() if "running" in n}
    head_before = model.fc.weight.detach().clone()
    strategy.train_mode(model)
    assert not model.bn1.training and not model.layer4[1].bn2.training
    for _ in range(2):
        _step(model, optimizer)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    for n, b in model.named_buffers():
        if n in stats:
            assert torch.equal(b, stats[n]), f"frozen BatchNorm statistic {n} moved"
    assert not torch.equal(model.fc.weight, head_before)


def test_linear_probe_rejects_model_without_head(hpcm_shaped):
    with pytest.raises(ValueError, match="needs a classifier head"):
        get_strategy("linear").build_param_groups(resolve_layer_groups(hpcm_shaped))


def test_full_llrd_lr_per_depth_and_no_decay_for_norms():
    model, groups, strategy, optimizer, schedule = _setup("full", model_name="vit_tiny_patch16_224", llrd_decay=0.8)
    schedule.apply(0)
    lrs = _lrs(optimizer)
    for g in groups:
        assert lrs[g.name] == pytest.approx(BASE_LR * 0.8 ** g.depth), g.name
    assert lrs["head"] == pytest.approx(BASE_LR) and lrs["stem"] == pytest.approx(BASE_LR * 0.8 ** 13)
    assert _trainable_groups(groups) == set(groups.names)
    decay = {n: g["weight_decay"] for g in optimizer.param_groups for n in g["param_names"]}
    assert decay["pos_embed"] == 0.0 and decay["cls_token"] == 0.0
    assert decay["blocks.0.norm1.weight"] == 0.0 and decay["blocks.0.attn.qkv.bias"] == 0.0
    assert decay["blocks.0.attn.qkv.weight"] == 0.5 and decay["head.weight"] == 0.5
    with pytest.raises(ValueError, match="llrd_decay"):
        get_strategy("full", llrd_decay=1.5)


def test_gradual_unfreezes_on_plateau_and_reports():
    model, groups, strategy, optimizer, schedule = _setup("gradual", gradual_patience=2, llrd_decay=1.0,
                                                          unfreeze_warmup_epochs=0)
    assert _trainable_groups(groups) == {"head"}
    metrics = [0.60, 0.70, 0.69, 0.70, 0.71, 0.71, 0.70, 0.80]
    events_by_epoch = {}
    for epoch, m in enumerate(metrics):
        strategy.on_epoch_start(epoch, optimizer)
        events = strategy.on_validation_end(epoch, m, optimizer)
        if events:
            events_by_epoch[epoch] = events
    # 0.69, 0.70 do not beat 0.70 -> stage 2 after epoch 3; 0.71 improves; 0.71, 0.70 -> stage 3 after epoch 6
    assert sorted(events_by_epoch) == [3, 6]
    (e1,), (e2,) = events_by_epoch[3], events_by_epoch[6]
    assert e1.epoch == 4 and e1.stage == 1 and e1.groups == ["layer4"]
    assert e1.trainable_params == sum(g.num_params for g in groups if g.name in ("layer4", "head"))
    assert e2.stage == 2 and set(e2.groups) == {"stem", "layer1", "layer2", "layer3"}
    assert e2.trainable_params == sum(g.num_params for g in groups)
    assert _trainable_groups(groups) == set(groups.names)
    schedule.apply(7)
    assert all(lr == pytest.approx(BASE_LR) for lr in _lrs(optimizer).values())


def test_gradual_lrs_are_ulmfit_discriminative_with_a_ramp_after_each_unfreeze():
    """ULMFiT's three parts on resnet18: depth-decayed LRs, a ramp for a newly unfrozen group, and the
    head stage skipped when the run solved the head (an event says so, at epoch index 0)."""
    model, groups, strategy, optimizer, schedule = _setup("gradual", gradual_patience=1, llrd_decay=0.5,
                                                          unfreeze_warmup_epochs=2, warmup_start=0.1)
    depth = {g.name: g.depth for g in groups}
    strategy.on_head_probed()
    (event,) = strategy.on_epoch_start(0, optimizer)
    schedule.apply(0)
    assert (event.epoch, event.stage, event.groups) == (0, 1, ["layer4"]) and "linear probe" in event.reason
    assert _trainable_groups(groups) == {"head", "layer4"}
    lrs = _lrs(optimizer)
    assert lrs["head"] == pytest.approx(BASE_LR) and lrs["layer3"] == 0.0
    assert lrs["layer4"] == pytest.approx(BASE_LR * 0.5 ** depth["layer4"] * 0.1)  # ramp starts at 0.1 x
    assert strategy.on_validation_end(0, 0.9, optimizer) == []
    for epoch, ramp in ((1, 0.55), (2, 1.0)):
        assert strategy.on_epoch_start(epoch, optimizer) == []
        schedule.apply(epoch)
        assert _lrs(optimizer)["layer4"] == pytest.approx(BASE_LR * 0.5 ** depth["layer4"] * ramp)
    (event,) = strategy.on_validation_end(2, 0.8, optimizer)  # plateau: all groups from epoch index 3
    assert event.epoch == 3 and event.stage == 2
    strategy.on_epoch_start(3, optimizer)
    schedule.apply(3)
    lrs = _lrs(optimizer)
    assert lrs["stem"] == pytest.approx(BASE_LR * 0.5 ** depth["stem"] * 0.1)
    assert lrs["layer4"] == pytest.approx(BASE_LR * 0.5 ** depth["layer4"])  # its ramp is over
    # the skipped head stage and the ramps survive a checkpoint
    other = get_strategy("gradual", gradual_patience=1, llrd_decay=0.5, unfreeze_warmup_epochs=2)
    other.build_param_groups(resolve_layer_groups(model), weight_decay=0.5)
    other.load_state_dict(strategy.state_dict())
    assert other.head_probed and other.stage == 2 and other.lr_factor("stem", 4) == strategy.lr_factor("stem", 4)
    with pytest.raises(ValueError, match="llrd_decay"):
        get_strategy("gradual", llrd_decay=0.0)


def test_progressive_schedule_with_warmup_ramp():
    model, groups, strategy, optimizer, schedule = _setup(
        "progressive", unfreeze_schedule="1,3", unfreeze_warmup_epochs=2, warmup_start=0.1,
        lr_mults="layer4:0.5")
    expected_trainable = {0: {"head"}, 1: {"head", "layer4"}, 3: set(groups.names)}
    seen = {}
    for epoch in range(5):
        events = strategy.on_epoch_start(epoch, optimizer)
        schedule.apply(epoch)
        seen[epoch] = (_trainable_groups(groups), _lrs(optimizer), events)
    assert seen[0][0] == expected_trainable[0] and seen[1][0] == expected_trainable[1]
    assert seen[3][0] == expected_trainable[3]
    assert [e.groups for e in seen[1][2]] == [["layer4"]] and seen[3][2][0].stage == 2
    # layer4: multiplier 0.5, ramp 0.1 -> 0.55 -> 1.0 over 2 epochs from epoch 1
    assert [seen[e][1]["layer4"] for e in (1, 2, 3)] == pytest.approx([BASE_LR * 0.5 * f for f in (0.1, 0.55, 1.0)])
    assert [seen[e][1]["layer1"] for e in (2, 3, 4)] == pytest.approx([0.0, BASE_LR * 0.1, BASE_LR * 0.55])
    assert seen[4][1]["head"] == pytest.approx(BASE_LR)
    with pytest.raises(ValueError, match="strictly increasing"):
        get_strategy("progressive", unfreeze_schedule="5,3")


def test_freeze_patterns_pin_parameters():
    model, groups, strategy, optimizer, schedule = _setup("full", freeze_patterns=[r"^layer1\."], llrd_decay=1.0)
    before = model.layer1[0].conv1.weight.detach().clone()
    strategy.train_mode(model)
    _step(model, optimizer)
    assert torch.equal(model.layer1[0].conv1.weight, before)
    assert not model.layer1[0].bn1.training  # its BatchNorm is frozen too
    assert model.layer2[0].bn1.training


def test_state_round_trips_through_a_checkpoint(tmp_path):
    model, groups, strategy, optimizer, schedule = _setup("gradual", gradual_patience=1)
    for epoch, m in enumerate([0.5, 0.4]):
        strategy.on_epoch_start(epoch, optimizer)
        strategy.on_validation_end(epoch, m, optimizer)
    assert strategy.stage == 1
    path = atomic_save({"strategy": strategy.state_dict(), "optimizer": optimizer.state_dict(),
                        "model": model.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(path)

    model2, groups2, strategy2, optimizer2, _ = _setup("gradual", gradual_patience=1)
    model2.load_state_dict(ckpt["model"])
    strategy2.load_state_dict(ckpt["strategy"])
    optimizer2.load_state_dict(ckpt["optimizer"])
    strategy2.apply(optimizer2, 2)
    assert strategy2.stage == 1 and _trainable_groups(groups2) == {"head", "layer4"}
    assert strategy2.plateau.best == 0.5 and strategy2.events[0].groups == ["layer4"]
    # both continue identically
    for s, o in ((strategy, optimizer), (strategy2, optimizer2)):
        s.on_epoch_start(2, o)
        s.on_validation_end(2, 0.3, o)
    assert strategy.stage == strategy2.stage == 2
    with pytest.raises(ValueError, match="--ft_strategy gradual"):
        get_strategy("linear").load_state_dict(ckpt["strategy"])


def test_progressive_state_round_trips_mid_warmup(tmp_path):
    opts = dict(unfreeze_schedule="1,3", unfreeze_warmup_epochs=2, warmup_start=0.1)
    model, groups, strategy, optimizer, schedule = _setup("progressive", **opts)
    for epoch in range(2):  # stop in the middle of layer4's warm-up ramp
        strategy.on_epoch_start(epoch, optimizer)
    path = atomic_save({"strategy": strategy.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "p.pt")
    ckpt = load_checkpoint(path)
    model2, groups2, strategy2, optimizer2, schedule2 = _setup("progressive", **opts)
    strategy2.load_state_dict(ckpt["strategy"])
    optimizer2.load_state_dict(ckpt["optimizer"])
    for epoch in range(2, 5):
        strategy.on_epoch_start(epoch, optimizer)
        strategy2.on_epoch_start(epoch, optimizer2)
        schedule.apply(epoch)
        schedule2.apply(epoch)
        assert _lrs(optimizer) == _lrs(optimizer2)
        assert _trainable_groups(groups) == _trainable_groups(groups2)
    assert [e.epoch for e in strategy2.events] == [1, 3]


def test_scheduler_warmup_cosine_honours_group_multipliers():
    model, groups, strategy, optimizer, _ = _setup("full", llrd_decay=0.5)
    schedule = build_lr_scheduler(optimizer, epochs=10, steps_per_epoch=10, warmup_epochs=1, min_lr=0.0)
    head = next(g for g in optimizer.param_groups if g["group_name"] == "head")
    layer4 = next(g for g in optimizer.param_groups if g["group_name"] == "layer4")
    seen = []
    for step in (0, 5, 10, 55, 99):
        schedule.apply(step)
        seen.append((head["lr"], layer4["lr"]))
        assert layer4["lr"] == pytest.approx(0.5 * head["lr"])
    assert seen[0][0] == pytest.approx(BASE_LR / 100)          # warm-up start
    assert seen[2][0] == pytest.approx(BASE_LR)                 # warm-up done
    assert seen[3][0] == pytest.approx(BASE_LR * 0.5 * (1 + math.cos(math.pi * 45 / 90)))  # cosine
    assert seen[4][0] < BASE_LR * 0.01
