"""Frozen BatchNorm statistics (finetune_kit.freezing) on real timm models (pretrained=False)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from finetune_kit.freezing import freeze_batchnorm_stats, frozen_batchnorm_modules


def _stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm buffer (running mean/var, batch count), by module name."""
    return {f"{n}.{b}": t.clone() for n, m in model.named_modules() if isinstance(m, _BatchNorm)
            for b, t in m.named_buffers(recurse=False)}


def _bn_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def _freeze_all_but(model: nn.Module, *prefixes: str) -> None:
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(prefixes)


@pytest.fixture
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=2)


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g) * 2 + 1  # far from the initial running stats (0, 1)


def test_frozen_bn_keeps_statistics_through_train_and_forward_unfrozen_bn_updates(resnet):
    _freeze_all_but(resnet, "layer4.", "fc.")
    frozen = frozen_batchnorm_modules(resnet)
    all_bn = _bn_names(resnet)
    assert frozen == [n for n in all_bn if not n.startswith("layer4.")] and len(frozen) < len(all_bn)
    before = _stats(resnet)
    for epoch in range(2):  # the epoch loop: model.train() each epoch, then the freeze
        resnet.train()
        assert freeze_batchnorm_stats(resnet) == frozen
        modules = dict(resnet.named_modules())
        assert all(not modules[n].training for n in frozen)
        assert all(modules[n].training for n in all_bn if n not in frozen)
        assert resnet.training and modules["layer4"].training and modules["fc"].training
        with torch.no_grad():
            resnet(_images(seed=epoch))
    after = _stats(resnet)
    for key, value in before.items():
        module = key.rsplit(".", 1)[0]
        if module in frozen:
            assert torch.equal(after[key], value), key
        elif not key.endswith("num_batches_tracked"):
            assert not torch.allclose(after[key], value), key  # updated by the two batches
        else:
            assert int(after[key]) == int(value) + 2, key


def test_train_without_the_freeze_updates_frozen_bn(resnet):
    """Why strategies call the freeze after every model.train(): train() alone re-enables the updates."""
    _freeze_all_but(resnet, "fc.")
    resnet.train()
    freeze_batchnorm_stats(resnet)
    resnet.train()  # e.g. the next epoch, without the freeze
    before = _stats(resnet)
    with torch.no_grad():
        resnet(_images())
    assert not torch.equal(_stats(resnet)["bn1.running_mean"], before["bn1.running_mean"])


def test_frozen_backbone_normalises_with_running_stats_not_the_batch(resnet):
    _freeze_all_but(resnet, "fc.")
    resnet.train()
    freeze_batchnorm_stats(resnet)
    x = _images(8)
    with torch.no_grad():
        whole, first = resnet(x), resnet(x[:2])
    assert torch.allclose(whole[:2], first, atol=1e-5)  # a sample's output ignores the rest of its batch
    resnet.eval()
    with torch.no_grad():
        assert torch.allclose(resnet(x), whole, atol=1e-5)  # the same as inference


def test_nothing_frozen_nothing_changed(resnet):
    resnet.train()
    assert frozen_batchnorm_modules(resnet) == [] and freeze_batchnorm_stats(resnet) == []
    assert all(m.training for m in resnet.modules())


def test_timm_batchnorm_act_layers_are_found():
    from timm.layers import BatchNormAct2d

    model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=2)
    _freeze_all_but(model, "classifier.")
    names = freeze_batchnorm_stats(model)
    modules = dict(model.named_modules())
    assert names and any(isinstance(modules[n], BatchNormAct2d) for n in names)
    assert set(names) == set(_bn_names(model))  # every BatchNorm, timm's fused ones included
    before = _stats(model)
    with torch.no_grad():
        model(_images())
    after = _stats(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_non_affine_bn_follows_its_parent():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)),  # "0.1": parent frozen below
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, affine=False)),  # "1.1": parent trains
        nn.Sequential(nn.BatchNorm2d(4, affine=False)),  # "2.0": parent has no parameters
    )
    for p in model[0].parameters():
        p.requires_grad = False
    model.train()
    assert freeze_batchnorm_stats(model) == ["0.1"]
    assert not model[0][1].training and model[1][1].training and model[2][0].training


def test_non_affine_bn_in_a_parameter_free_wrapper_of_a_frozen_model_is_frozen():
    """The nearest ancestor with parameters decides (here the whole model, all frozen)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4, affine=False)))
    for p in model.parameters():
        p.requires_grad = False
    model.train()
    assert freeze_batchnorm_stats(model) == ["1.0"]
    before = model[1][0].running_mean.clone()
    with torch.no_grad():
        model(_images())
    assert torch.equal(model[1][0].running_mean, before)
