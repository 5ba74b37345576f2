"""Build compression models by name: HPCM presets and CompressAI zoo architectures.

Names: ``hpcm-tiny``, ``hpcm-small``, ``hpcm-base``, ``hpcm-large`` (:mod:`finetune_kit.tasks.compression.models.hpcm.model`)
and the CompressAI architectures ``bmshj2018-hyperprior`` (Balle et al. 2018, ScaleHyperprior),
``mbt2018-mean`` (Minnen et al. 2018, MeanScaleHyperprior), ``cheng2020-anchor`` (Cheng et al.
2020) and ``elic2022-chandelier`` (He et al. 2022, Chandelier's re-implementation), all built
from ``compressai.models`` classes with random weights (``pretrained=False``: no model hub here).
CompressAI sizes default to its low-rate configurations (qualities 1-5: N=128, M=192;
cheng2020 N=128; ELIC N=192, M=320); pass ``N=``/``M=`` to change them.
"""
from __future__ import annotations

from typing import Any

from compressai.registry import MODELS
from torch import nn

from finetune_kit.tasks.compression.config import HPCM_PRESETS, MODEL_NAMES

__all__ = ["build_model", "pad_multiple"]

#: CompressAI architectures with their low-rate sizes (built through ``compressai.registry.MODELS``)
_COMPRESSAI: dict[str, dict[str, int]] = {
    "bmshj2018-hyperprior": {"N": 128, "M": 192},
    "mbt2018-mean": {"N": 128, "M": 192},
    "cheng2020-anchor": {"N": 128},
    "elic2022-chandelier": {"N": 192, "M": 320},
}
_HPCM = HPCM_PRESETS
if set(MODEL_NAMES) != set(_HPCM) | set(_COMPRESSAI):  # one list of names, declared with the options
    raise ImportError("MODEL_NAMES (tasks/compression/config.py) and the zoo's models differ: update both")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the compression model ``name`` with random weights, read back from CompressAI's registry.

    The HPCM presets are registered in ``compressai.registry.MODELS`` by the models package
    (:mod:`finetune_kit.tasks.compression.models`, imported before this module); CompressAI
    registers its own architectures.

    Args:
        name: one of :data:`MODEL_NAMES`.
        **kwargs: constructor overrides for CompressAI architectures (``N``, ``M``); none for HPCM.

    Returns:
        a ``compressai.models.CompressionModel`` (``forward`` gives ``x_hat`` and
        ``likelihoods``; ``update``/``compress``/``decompress``/``aux_loss`` as in CompressAI).

    Raises:
        ValueError: unknown name, or keyword arguments given for an HPCM preset.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown compression model {name!r}: use one of {', '.join(MODEL_NAMES)}")
    if name in _HPCM and kwargs:
        raise ValueError(f"{name} takes no options ({sorted(kwargs)} given): pick another preset instead")
    return MODELS[name](**{**_COMPRESSAI.get(name, {}), **kwargs})


def pad_multiple(model: nn.Module) -> int:
    """Side multiple (pixels) an input needs: the model's own ``pad_multiple`` or 64 (z at 1/64)."""
    return int(getattr(model, "pad_multiple", 64))
