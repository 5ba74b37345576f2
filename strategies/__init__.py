"""Built-in fine-tuning strategies, registered in :mod:`finetune_kit.strategy` on import.

``linear`` (linear probe), ``gradual`` (ULMFiT-style unfreezing on validation plateau),
``full`` (alias ``llrd``: all layers with layer-wise LR decay) and ``progressive``
(unfreezing on an epoch schedule with LR warm-up of newly unfrozen groups) and ``lp_ft``
(LP-FT: exact linear probe, then full fine-tuning with LLRD) and ``lora`` (LoRA adapters through
HF PEFT, the head fully trained).
"""
from finetune_kit.strategies import full, gradual, linear, lora, lp_ft, progressive  # noqa: F401

__all__ = ["linear", "gradual", "full", "progressive", "lp_ft", "lora"]
