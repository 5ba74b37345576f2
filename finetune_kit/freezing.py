"""Freezing helpers: ``requires_grad`` switches and frozen BatchNorm statistics."""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["freeze_batchnorm_stats", "frozen_batchnorm_modules"]


def frozen_batchnorm_modules(model: nn.Module) -> list[str]:
    """Names of BatchNorm modules (incl. timm's ``BatchNormAct2d``) whose affine parameters
    are all frozen (``requires_grad=False``). A non-affine BatchNorm layer (no parameters)
    follows its nearest ancestor that has parameters: frozen when every parameter of that
    ancestor is frozen (the parent, or above it when the parent holds none, e.g. a
    parameter-free wrapper; the model itself at the top). A model without parameters has none."""
    names = []
    modules = dict(model.named_modules())
    for name, m in modules.items():
        if not isinstance(m, _BatchNorm):
            continue
        params = list(m.parameters(recurse=False))
        parent = name
        while not params and parent:
            parent = parent.rpartition(".")[0]
            params = list(modules.get(parent, model).parameters())
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
