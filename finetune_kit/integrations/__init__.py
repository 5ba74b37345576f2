"""Adapters that let other training frameworks drive finetune-kit strategies.

Each submodule imports its framework lazily (an optional extra): importing
:mod:`finetune_kit.integrations` itself needs nothing beyond the core.
"""
