"""Optimizer parameter groups (finetune_kit.param_groups) on a real timm ResNet-18 (pretrained=False)."""
from __future__ import annotations

import pytest
import timm
import torch

from finetune_kit.layer_groups import resolve_layer_groups
from finetune_kit.param_groups import build_param_groups, is_no_weight_decay, parse_multipliers


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("resnet18", pretrained=False, num_classes=3)


@pytest.fixture(scope="module")
def groups(resnet):
    return resolve_layer_groups(resnet)  # stem, layer1..layer4, head


def _by_name(pgs):
    out = {}
    for g in pgs:
        for n, p in zip(g["param_names"], g["params"]):
            assert n not in out, f"{n} in two optimizer groups"
            out[n] = g
    return out


def test_every_parameter_in_exactly_one_group_with_the_documented_keys(resnet, groups):
    pgs = build_param_groups(groups, weight_decay=0.05)
    by_name = _by_name(pgs)
    assert sorted(by_name) == sorted(n for n, _ in resnet.named_parameters())
    ids = [id(p) for g in pgs for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(resnet.parameters()))
    for g in pgs:
        assert {"params", "param_names", "group_name", "lr_key", "lr_mult", "lr_scale", "weight_decay",
                "pinned_frozen"} <= set(g)
        assert len(g["params"]) == len(g["param_names"])
        assert g["group_name"] in groups.names
    layer_of = {n: lg.name for lg in groups for n in lg.param_names}
    assert all(g["group_name"] == layer_of[n] for n, g in by_name.items())
    # no key: multiplier 1, nothing pinned; a torch optimizer accepts the groups as they are
    assert all(g["lr_mult"] == 1.0 == g["lr_scale"] and g["lr_key"] is None and not g["pinned_frozen"] for g in pgs)
    opt = torch.optim.AdamW(pgs, lr=1e-3)
    assert len(opt.param_groups) == len(pgs)


def test_no_weight_decay_for_norms_and_biases(groups):
    by_name = _by_name(build_param_groups(groups, weight_decay=0.05, no_weight_decay_names=["layer1.0.conv1.weight"]))
    assert by_name["conv1.weight"]["weight_decay"] == 0.05
    assert by_name["layer4.1.conv2.weight"]["weight_decay"] == 0.05
    assert by_name["fc.weight"]["weight_decay"] == 0.05
    for n in ("bn1.weight", "bn1.bias", "layer2.0.bn2.weight", "fc.bias"):
        assert by_name[n]["weight_decay"] == 0.0, n
    assert by_name["layer1.0.conv1.weight"]["weight_decay"] == 0.0  # extra name (timm's no_weight_decay())


def test_is_no_weight_decay_rules():
    w2d, w1d = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    assert is_no_weight_decay("norm.weight", w1d)  # 1-D
    assert not is_no_weight_decay("blocks.0.mlp.fc1.weight", w2d)
    assert is_no_weight_decay("pos_embed", w2d) and is_no_weight_decay("cls_token", w2d)
    assert is_no_weight_decay("x.y", w2d, extra=["x.y"])


def test_lr_multipliers_longest_key_wins_and_split_groups(groups):
    mults = {"layer4": 0.5, "layer4.1": 0.2, "re:^fc\\.": 10.0, "layer1": 0.0}
    pgs = build_param_groups(groups, lr_mults=mults, weight_decay=0.05)
    by_name = _by_name(pgs)
    assert by_name["layer4.0.conv1.weight"]["lr_mult"] == 0.5 and by_name["layer4.0.conv1.weight"]["lr_key"] == "layer4"
    assert by_name["layer4.1.conv1.weight"]["lr_mult"] == 0.2  # finer key
    assert by_name["fc.weight"]["lr_mult"] == 10.0 and by_name["fc.weight"]["lr_key"] == "re:^fc\\."
    assert by_name["layer1.0.conv1.weight"]["lr_mult"] == 0.0
    assert by_name["conv1.weight"]["lr_mult"] == 1.0 and by_name["conv1.weight"]["lr_key"] is None
    assert all(g["lr_scale"] == g["lr_mult"] for g in pgs)
    # one optimizer group per (layer group, LR key, weight decay, pinned): layer4 splits in two keys x wd
    layer4 = [g for g in pgs if g["group_name"] == "layer4"]
    assert {(g["lr_key"], g["weight_decay"]) for g in layer4} == {("layer4", 0.05), ("layer4", 0.0),
                                                                  ("layer4.1", 0.05), ("layer4.1", 0.0)}
    assert len(layer4) == 4


def test_weight_decay_map_overrides_weights_only(groups):
    by_name = _by_name(build_param_groups(groups, weight_decay=0.05, weight_decay_map={"layer3": 0.2, "layer3.1": 0.0}))
    assert by_name["layer3.0.conv1.weight"]["weight_decay"] == 0.2
    assert by_name["layer3.1.conv1.weight"]["weight_decay"] == 0.0  # longest key
    assert by_name["layer3.0.bn1.weight"]["weight_decay"] == 0.0  # norms still never decay
    assert by_name["layer2.0.conv1.weight"]["weight_decay"] == 0.05


def test_freeze_patterns_pin_parameters(groups):
    pgs = build_param_groups(groups, freeze_patterns=[r"^layer1\.", r"bn\d\.bias$"])
    by_name = _by_name(pgs)
    assert by_name["layer1.0.conv1.weight"]["pinned_frozen"]
    assert by_name["layer2.0.bn1.bias"]["pinned_frozen"]  # searched anywhere
    assert not by_name["layer2.0.bn1.weight"]["pinned_frozen"] and not by_name["fc.weight"]["pinned_frozen"]
    assert all(all(by_name[n]["pinned_frozen"] == g["pinned_frozen"] for n in g["param_names"]) for g in pgs)
    with pytest.raises(ValueError, match="freeze pattern"):
        build_param_groups(groups, freeze_patterns=["layer1.("])


def test_bad_regex_key_fails_naming_the_key(groups):
    with pytest.raises(ValueError, match=r"'re:\^layer\('"):
        build_param_groups(groups, lr_mults={"re:^layer(": 0.5})


def test_parse_multipliers():
    assert parse_multipliers("layer4:0.5, layer4.1:0.2,re:\\.bias$:0") == {"layer4": 0.5, "layer4.1": 0.2,
                                                                          "re:\\.bias$": 0.0}
    assert parse_multipliers({"a": 1}) == {"a": 1.0}
    assert parse_multipliers(None) == {} and parse_multipliers("") == {}
    with pytest.raises(ValueError, match="KEY:FLOAT"):
        parse_multipliers("layer4=0.5")
    with pytest.raises(ValueError, match=">= 0"):
        parse_multipliers("layer4:-1")
    with pytest.raises(ValueError, match="re:layer"):
        parse_multipliers("re:layer[:0.5")
