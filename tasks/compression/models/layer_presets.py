"""Layer presets of the compression models, registered in the core's preset registry.

The core resolver (:mod:`finetune_kit.layer_groups`) knows no compression model; importing
:mod:`finetune_kit.tasks.compression.models` imports this module, which registers:

``hpcm``
    HPCM and the CompressAI zoo architectures of :mod:`~finetune_kit.tasks.compression.models.zoo`
    (``bmshj2018-hyperprior``, ``mbt2018-mean``, ``cheng2020-anchor``, ``elic2022-chandelier``):
    groups ``g_a``, ``g_s``, ``h_a``, ``h_s``, ``context``, ``entropy_bottleneck``, ``quantiles``
    and ``gaussian_conditional`` (the last has no parameters in CompressAI, so no group), in that
    order, no head. It is HPCM's own :data:`~finetune_kit.tasks.compression.models.hpcm.model.GROUP_MATCHER`
    widened to the zoo's module names: every module named in :data:`CONTEXT_MODULES` (at any
    depth) goes to ``context`` so the context LR multiplier reaches it (cheng2020/mbt2018:
    ``context_prediction``, ``entropy_parameters``; ELIC: ``channel_context`` and the
    checkerboard codecs under ``latent_codec.y``; channel-wise models: ``cc_*_transforms``,
    ``lrp_transforms``), and latent-codec models keep ``h_a``/``h_s``/``entropy_bottleneck``
    under ``latent_codec.<name>.``. The entropy bottleneck's ``quantiles`` (trained only by the
    aux loss) are a group of their own so they can be frozen or trained apart. Auto-detected
    for any model with ``g_a`` and ``g_s`` children and an ``entropy_bottleneck`` module;
    HPCM itself resolves through its ``group_matcher()`` to the same groups. Default
    progressive stages: ``g_a`` + ``g_s``, then ``h_a`` + ``h_s`` + ``entropy_bottleneck``, then
    ``context`` (and every other group).
"""
from __future__ import annotations

from torch import nn

from finetune_kit.layer_presets import LayerPreset, has_children, register_layer_preset

__all__ = ["CONTEXT_MODULES", "HPCM_PRESET", "is_compression_model"]

#: module names whose parameters belong to the ``context`` group, wherever they sit
CONTEXT_MODULES = ("context", "context_prediction", "entropy_parameters", "channel_context", "spatial_context",
                   "param_aggregation", "cc_transforms", "cc_mean_transforms", "cc_scale_transforms",
                   "lrp_transforms")
_LC = r"(?:latent_codec\.\w+\.)?"  # CompressAI latent codecs (ELIC): latent_codec.hyper.h_a...


def is_compression_model(model: nn.Module) -> bool:
    """HPCM / CompressAI layout: ``g_a`` and ``g_s`` children and an ``entropy_bottleneck``
    module (top-level or inside a latent codec)."""
    return has_children(model, "g_a", "g_s") and any(
        n.rsplit(".", 1)[-1] == "entropy_bottleneck" for n, _ in model.named_modules())


#: the registered ``hpcm`` preset (see the module docstring)
HPCM_PRESET: LayerPreset = register_layer_preset(
    "hpcm",
    {"g_a": r"^g_a\.", "g_s": r"^g_s\.", "h_a": rf"^{_LC}h_a\.", "h_s": rf"^{_LC}h_s\.",
     "context": rf"^(?:[\w.]+\.)?(?:{'|'.join(CONTEXT_MODULES)})\.",
     "entropy_bottleneck": rf"^{_LC}entropy_bottleneck\.(?!quantiles$)",
     "quantiles": rf"^{_LC}entropy_bottleneck\.quantiles$",
     "gaussian_conditional": r"^(?:[\w.]+\.)?gaussian_conditional\."},
    head=None,
    matches=is_compression_model,
    stages=(("g_a", "g_s"), ("h_a", "h_s", "entropy_bottleneck"), ("context",)),
)
