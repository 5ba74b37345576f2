"""Compression models: HPCM (:mod:`.hpcm`) and the CompressAI zoo architectures (:mod:`.zoo`).

Importing this package registers them where the libraries look for them:

- the ``hpcm`` layer preset in the core's preset registry (:mod:`.layer_presets`), so
  :func:`finetune_kit.layer_groups.resolve_layer_groups` groups HPCM and the zoo models;
- the HPCM presets in CompressAI's model registry: ``compressai.registry.MODELS["hpcm-base"]()``
  builds the paper's base model (also ``hpcm-tiny``, ``hpcm-small``, ``hpcm-large``; classes
  :data:`.hpcm.model.PRESET_CLASSES`). CompressAI registers its own zoo classes itself.
"""
from __future__ import annotations

from compressai.registry import register_model

from finetune_kit.tasks.compression.models import layer_presets as _layer_presets  # noqa: F401  (registers "hpcm")
from finetune_kit.tasks.compression.models.hpcm.model import PRESET_CLASSES as _PRESET_CLASSES

for _name, _cls in _PRESET_CLASSES.items():
    register_model(_name)(_cls)
del _name, _cls
