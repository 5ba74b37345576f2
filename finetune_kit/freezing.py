"""Freezing helpers: ``requires_grad`` switches and frozen BatchNorm statistics."""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["freeze_batchnorm_stats", "frozen_batchnorm_modules"]


def frozen_batchnorm_modules(model: nn.Module) -> list[str]:
    """Names of BatchNorm modules (incl. timm's ``BatchNormAct2d``) whose affine parameters
    are all frozen (``requires_grad=False``). Non-affine BatchNorm layers are counted as
    frozen when every parameter of their parent module is frozen."""
    names = []
    modules = dict(model.named_modules())
    for name, m in modules.items():
        if not isinstance(m, _BatchNorm):
            continue
        params = list(m.parameters(recurse=False))
        if not params:
            parent = modules.get(name.rpartition(".")[0], model)
            params = list(parent.parameters())
        if params and not any(p.requires_grad for p in params):
            names.append(name)
    return names


def freeze_batchnorm_stats(model: nn.Module) -> list[str]:
    """Put frozen BatchNorm layers in eval mode so their running mean/var stop updating.

    Call it after every ``model.train()`` (strategies do, in ``train_mode``). A BatchNorm
    in train mode normalises with batch statistics and updates its buffers even when its
    weights are frozen; a linear probe on a frozen backbone must not. Returns the names
    of the modules put in eval mode.
    """
    names = frozen_batchnorm_modules(model)
    modules = dict(model.named_modules())
    for n in names:
        modules[n].eval()
    return names
