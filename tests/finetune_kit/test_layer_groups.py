"""Layer-group resolver and preset registry on real timm models (pretrained=False) and small stand-ins."""
from __future__ import annotations

import re

import pytest
import timm
import torch
from torch import nn

from finetune_kit.layer_groups import UnknownArchitectureError, layer_presets, register_layer_preset, resolve_layer_groups


def _partition_ok(model, groups):
    names = [n for g in groups for n in g.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))


@pytest.fixture(scope="module")
def vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2)


@pytest.fixture(scope="module")
def resnet():
    return timm.create_model("resnet18", pretrained=False, num_classes=2)


@pytest.fixture(scope="module")
def convnext():
    return timm.create_model("convnext_atto", pretrained=False, num_classes=2)


def test_vit_groups_stem_blocks_head(vit):
    groups = resolve_layer_groups(vit)
    assert groups.source == "timm" and groups.preset.name == "vit"
    assert groups.names[0] == "stem" and groups.names[-1] == "head"
    assert groups.names[1:13] == [f"blocks.{i}" for i in range(11)] + ["blocks.11+norm"]
    assert groups.by_name("stem").param_names[:3] == ["cls_token", "pos_embed", "patch_embed.proj.weight"]
    assert groups.by_name("head").param_names == ["head.weight", "head.bias"]
    assert "norm.weight" in groups.by_name("blocks.11+norm").param_names
    assert [g.depth for g in groups] == list(range(len(groups) - 1, -1, -1))
    _partition_ok(vit, groups)
    # gradual unfreezing defaults for ViT: head; + last 2 blocks + final norm; all
    stages = groups.default_stages()
    assert stages[0] == ["head"]
    assert stages[1] == ["blocks.10", "blocks.11+norm", "head"]
    assert stages[2] == groups.names


def test_resnet_coarse_and_fine(resnet):
    coarse = resolve_layer_groups(resnet, coarse=True)
    assert coarse.names == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert coarse.by_name("head").param_names == ["fc.weight", "fc.bias"]
    assert coarse.default_stages()[:2] == [["head"], ["layer4", "head"]]
    fine = resolve_layer_groups(resnet, coarse=False)
    assert fine.names[1:3] == ["layer1.0", "layer1.1"] and len(fine) == 10
    _partition_ok(resnet, coarse)
    _partition_ok(resnet, fine)


def test_convnext_stages_and_neck(convnext):
    groups = resolve_layer_groups(convnext)
    assert groups.names == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head.norm", "head"]
    assert groups.by_name("head").param_names == ["head.fc.weight", "head.fc.bias"]
    assert groups.default_stages()[1] == ["stages.3", "head.norm", "head"]
    _partition_ok(convnext, groups)


def test_named_preset_equals_timm_matcher_for_resnet(resnet):
    by_preset = resolve_layer_groups(resnet, preset="resnet")
    assert by_preset.names == resolve_layer_groups(resnet).names
    with pytest.raises(KeyError, match="registered presets"):
        resolve_layer_groups(resnet, preset="nope")


def test_user_patterns_override(resnet):
    groups = resolve_layer_groups(resnet, patterns=[r"^conv1\.|^bn1\.", r"^layer(\d+)\."])
    assert groups.source == "patterns"
    assert groups.names == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4", "head"]
    named = resolve_layer_groups(resnet, patterns={"low": r"^conv1\.|^bn1\.|^layer[12]\.", "high": r"^layer[34]\."})
    assert named.names == ["low", "high", "head"]


def test_parameter_in_no_group_or_two_groups_is_an_error(resnet):
    with pytest.raises(ValueError, match="in no layer group"):
        resolve_layer_groups(resnet, patterns=[r"^layer"])
    with pytest.raises(ValueError, match="two groups"):
        resolve_layer_groups(resnet, patterns=[r"^conv1|^bn1", r"^layer", r"^layer1"])


def test_unknown_architecture_says_how_to_pass_patterns():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(UnknownArchitectureError, match=re.escape("patterns=")):
        resolve_layer_groups(model)
    groups = resolve_layer_groups(model, patterns=[r"^0\.", r"^2\."])
    assert groups.names == ["0", "2"]


def test_select_keys_are_module_prefixes_not_string_prefixes(vit, convnext):
    groups = resolve_layer_groups(vit)
    assert groups.select(["blocks.1"]) == ["blocks.1"]  # not blocks.10 / blocks.11+norm
    assert groups.select(["blocks.11"]) == ["blocks.11+norm"]  # a part of a merged group
    assert groups.select(["norm"]) == ["blocks.11+norm"]
    assert groups.select(["re:^blocks\\.1[01]"]) == ["blocks.10", "blocks.11+norm"]
    assert resolve_layer_groups(convnext).select(["head"]) == ["head.norm", "head"]  # module prefix


def test_registered_preset_detected_for_a_headless_model(headless_codec):
    model = headless_codec  # the conftest registers the "test-codec" preset for it
    groups = resolve_layer_groups(model)
    assert groups.source == "preset:test-codec"
    assert groups.names == ["encoder", "decoder", "hyper_encoder", "hyper_decoder", "context", "prior", "quantiles"]
    assert groups.by_name("quantiles").param_names == ["prior.quantiles"]
    assert not groups.head
    _partition_ok(model, groups)
    stages = groups.default_stages()
    assert stages[0] == ["encoder", "decoder"]
    assert stages[1] == ["encoder", "decoder", "hyper_encoder", "hyper_decoder", "prior"]
    assert set(stages[2]) == set(groups.names)
    assert groups.select(["re:^hyper_"]) == ["hyper_encoder", "hyper_decoder"]
    with pytest.raises(ValueError, match="matches no layer group"):
        groups.select(["backbone"])


def test_register_preset_by_fields_and_by_name_only():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
            self.classifier = nn.Linear(2, 2)

    preset = register_layer_preset("test-net", {"trunk": r"^trunk\.(\d+)\."}, head=r"^classifier\.")
    assert layer_presets()["test-net"] is preset and preset.matches is None
    with pytest.raises(UnknownArchitectureError):  # no ``matches``: never auto-detected
        resolve_layer_groups(Net())
    groups = resolve_layer_groups(Net(), preset="test-net")
    assert groups.names == ["trunk.0", "trunk.1", "head"] and groups.head[0].param_names == ["classifier.weight",
                                                                                              "classifier.bias"]
    with pytest.raises(ValueError, match="test-bad"):
        register_layer_preset("test-bad", {"x": r"^x("})
    assert "test-bad" not in layer_presets()


def test_a_models_own_group_matcher_is_used_and_named_in_source():
    class Own(nn.Module):
        def __init__(self):
            super().__init__()
            self.low, self.high = nn.Linear(2, 2), nn.Linear(2, 2)

        def group_matcher(self, coarse=False):
            return {"low": r"^low\.", "high": r"^high\."}

    groups = resolve_layer_groups(Own())
    assert groups.source == "group_matcher:Own" and groups.names == ["low", "high"] and groups.preset is None


def test_core_resolver_names_no_task_model():
    import finetune_kit.keys as keys
    import finetune_kit.layer_groups as lg
    import finetune_kit.layer_presets as lp

    for mod in (lg, lp, keys):
        text = open(mod.__file__, encoding="utf-8").read().lower()
        for word in ("g_a", "entropy_bottleneck", "quantiles", "gaussian_conditional", "compressai", "hpcm"):
            assert word not in text, (mod.__name__, word)
    assert {"vit", "resnet", "convnext"} <= set(layer_presets())
