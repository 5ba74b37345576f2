"""finetune-kit core: what every fine-tuning run needs, independent of any task.

Layer-group resolution, parameter groups with per-group LR multipliers, freezing,
schedulers, early stopping, checkpoints, calibration and run logging, plus the
strategy registry. Nothing in here imports ``strategies`` or ``tasks`` (only the
``finetune_kit.cli`` composition root does, lazily).
"""
import os as _os

# albumentations contacts the package index on import unless told not to; there is no
# network on many research machines, and the check costs a timeout there.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
