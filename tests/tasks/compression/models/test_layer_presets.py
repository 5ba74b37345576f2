"""Compression layer groups: HPCM's own group_matcher, the ``hpcm`` preset the compression models
package registers, and the HPCM presets in CompressAI's model registry."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import finetune_kit.tasks.compression.models  # noqa: F401  (registers the "hpcm" preset and MODELS entries)
from finetune_kit.layer_groups import layer_presets, resolve_layer_groups
from finetune_kit.tasks.compression.models.hpcm.model import GROUP_MATCHER, HPCM, PRESET_CLASSES, PRESETS
from finetune_kit.tasks.compression.models.zoo import build_model

GROUPS = ["g_a", "g_s", "h_a", "h_s", "context", "entropy_bottleneck", "quantiles"]


class _HPCMShaped(nn.Module):
    """HPCM's top-level names (g_a, g_s, h_a, h_s, context, entropy models) and no group_matcher()."""

    def __init__(self):
        super().__init__()
        from compressai.entropy_models import EntropyBottleneck, GaussianConditional

        self.g_a = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2), nn.Conv2d(8, 8, 5, 2, 2))
        self.g_s = nn.Sequential(nn.ConvTranspose2d(8, 3, 4, 2, 1))
        self.h_a = nn.Sequential(nn.Conv2d(8, 4, 3))
        self.h_s = nn.Sequential(nn.Conv2d(4, 16, 3))
        self.context = nn.ModuleDict({"adaptor": nn.Conv2d(16, 16, 1), "spatial_prior": nn.Conv2d(16, 16, 3)})
        self.entropy_bottleneck = EntropyBottleneck(4)
        self.gaussian_conditional = GaussianConditional(None)


def _partition_ok(model, groups):
    names = [n for g in groups for n in g.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))


def test_hpcm_preset_detected_with_quantiles_apart():
    model = _HPCMShaped()
    groups = resolve_layer_groups(model)
    assert groups.source == "preset:hpcm"
    assert groups.names == GROUPS
    assert groups.by_name("quantiles").param_names == ["entropy_bottleneck.quantiles"]
    assert not groups.head
    _partition_ok(model, groups)
    stages = groups.default_stages()
    assert stages[0] == ["g_a", "g_s"]
    assert stages[1] == ["g_a", "g_s", "h_a", "h_s", "entropy_bottleneck"]
    assert set(stages[2]) == set(groups.names)
    assert groups.select(["re:^h_"]) == ["h_a", "h_s"]
    with pytest.raises(ValueError, match="matches no layer group"):
        groups.select(["decoder"])


def test_hpcm_resolves_through_its_own_group_matcher():
    torch.manual_seed(0)
    model = build_model("hpcm-tiny")
    assert list(model.group_matcher()) == GROUPS and model.group_matcher(coarse=True) == GROUP_MATCHER
    groups = resolve_layer_groups(model)
    assert groups.source.startswith("group_matcher:HPCM")  # the model's matcher (of the registered preset class), not the preset
    assert groups.preset is layer_presets()["hpcm"]  # the family defaults still come from the preset
    assert groups.names == GROUPS
    _partition_ok(model, groups)
    by_preset = resolve_layer_groups(model, preset="hpcm")
    assert by_preset.source == "preset:hpcm"
    assert [(g.name, g.param_names) for g in groups] == [(g.name, g.param_names) for g in by_preset]
    assert groups.default_stages() == by_preset.default_stages()
    fine = resolve_layer_groups(model, coarse=False)
    assert [(g.name, g.param_names) for g in fine] == [(g.name, g.param_names) for g in groups]


def test_hpcm_presets_in_compressai_model_registry():
    from compressai.registry import MODELS

    for name in PRESETS:
        cls = MODELS[name]
        assert cls is PRESET_CLASSES[name] and issubclass(cls, HPCM) and cls.preset_name == name
    model = MODELS["hpcm-base"]()
    assert isinstance(model, HPCM) and model.preset == PRESETS["hpcm-base"]
    total = sum(p.numel() for p in model.parameters())
    assert total == 68_505_299, total  # the paper's base model (68.5 M; the official code's count, per module equal)
    assert MODELS["bmshj2018-hyperprior"].__name__ == "ScaleHyperprior"  # CompressAI's own entries untouched
