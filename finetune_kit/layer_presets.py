"""Named layer-group presets and their registry.

A preset tells :func:`finetune_kit.layer_groups.resolve_layer_groups` how to split a model
family's parameters into ordered groups when the model has no ``group_matcher()`` of its own
(or when a preset is asked for by name), and carries the family's defaults for the
strategies (head pattern, how many top blocks gradual unfreezing releases first, default
unfreezing stages of head-less models).

The core registers the generic families it knows (``vit``, ``resnet``, ``convnext``); a task
registers its own families with :func:`register_layer_preset` when its package is imported
(the core knows nothing about any task's model names).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from torch import nn

__all__ = ["LayerPreset", "register_layer_preset", "layer_presets", "get_layer_preset", "detect_layer_preset",
           "has_children"]


@dataclass(frozen=True)
class LayerPreset:
    """A named grouping rule.

    Attributes:
        name: preset name (``vit``, ``resnet``, ``convnext``, or one a task registered).
        matcher: timm-style group matcher, ``{group_name: regex | [(regex, suffix), ...]}`` in
            bottom-to-top order (see ``timm.models.group_with_matcher``); regexes are tried with
            ``re.match`` against parameter names, the first matching entry claims the name.
        head: regex (``re.search``) of the head's parameter names; ``None``: the family has no
            classifier head.
        matches: predicate on a model telling whether the preset applies (auto-detection);
            ``None``: the preset is only used when asked for by name.
        top_blocks: how many block groups the second stage of gradual unfreezing releases
            with the head (ViT: last 2 blocks; ResNet: layer4; ConvNeXt: the last stage).
        stages: default unfreezing stages as lists of group keys (:mod:`finetune_kit.keys`),
            used by ``progressive`` for models without a head; ``None`` derives them.
    """

    name: str
    matcher: Mapping[str, object]
    head: str | None = None
    matches: Callable[[nn.Module], bool] | None = None
    top_blocks: int = 1
    stages: tuple[tuple[str, ...], ...] | None = None

    def detect(self, model: nn.Module) -> bool:
        """Whether this preset applies to ``model`` (False when it has no ``matches`` predicate)."""
        return bool(self.matches(model)) if self.matches is not None else False


def has_children(model: nn.Module, *names: str) -> bool:
    """Whether ``model`` has all of ``names`` as direct children (a helper for ``matches``)."""
    children = dict(model.named_children())
    return all(n in children for n in names)


def _regexes(matcher: Mapping[str, object]) -> list[str]:
    out = []
    for spec in matcher.values():
        if spec is None:
            continue
        for s in (spec if isinstance(spec, (list, tuple)) else [spec]):
            out.append(s[0] if isinstance(s, (list, tuple)) else s)
    return out


_PRESETS: dict[str, LayerPreset] = {}


def register_layer_preset(
    name: str | LayerPreset,
    matcher: Mapping[str, object] | None = None,
    *,
    head: str | None = None,
    matches: Callable[[nn.Module], bool] | None = None,
    top_blocks: int = 1,
    stages: Sequence[Sequence[str]] | None = None,
) -> LayerPreset:
    """Register (or replace) a named preset and return it.

    Either pass a :class:`LayerPreset`, or its fields: ``register_layer_preset("mynet",
    {"stem": r"^stem\\.", "blocks": r"^blocks\\.(\\d+)\\."}, head=r"^head\\.", matches=lambda m:
    hasattr(m, "blocks"))``. Presets are looked up by name (``preset=``) and, for models
    without ``group_matcher()``, by their ``matches`` predicate in registration order.

    Raises:
        ValueError: empty name, no ``matcher``, a regex that does not compile (names the
            preset), ``top_blocks`` < 1.
    """
    if isinstance(name, LayerPreset):
        preset = name
    else:
        if matcher is None:
            raise ValueError(f"layer preset {name!r} needs a matcher ({{group name: regex}})")
        preset = LayerPreset(str(name), dict(matcher), head, matches, int(top_blocks),
                             tuple(tuple(s) for s in stages) if stages is not None else None)
    if not preset.name:
        raise ValueError("a layer preset needs a name")
    if not preset.matcher:
        raise ValueError(f"layer preset {preset.name!r} has an empty matcher")
    if preset.top_blocks < 1:
        raise ValueError(f"layer preset {preset.name!r}: top_blocks={preset.top_blocks} must be >= 1")
    for rx in _regexes(preset.matcher) + ([preset.head] if preset.head else []):
        try:
            re.compile(rx)
        except re.error as exc:
            raise ValueError(f"layer preset {preset.name!r}: pattern {rx!r} is not a valid regex: {exc}") from None
    _PRESETS[preset.name] = preset
    return preset


def layer_presets() -> dict[str, LayerPreset]:
    """All registered presets by name, in registration order (a copy)."""
    return dict(_PRESETS)


def get_layer_preset(name: str) -> LayerPreset:
    """The preset registered as ``name``.

    Raises:
        KeyError: no such preset; the message lists the registered ones.
    """
    try:
        return _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown layer preset {name!r}; registered presets: {', '.join(sorted(_PRESETS))}") from None


def detect_layer_preset(model: nn.Module) -> LayerPreset | None:
    """The first registered preset whose ``matches(model)`` is true, or None."""
    return next((p for p in _PRESETS.values() if p.detect(model)), None)


register_layer_preset(
    "vit",  # ViT, DeiT, DINOv2, EVA... (timm and most ports share these names)
    {"stem": r"^cls_token|^reg_token|^pos_embed|^patch_embed|^norm_pre|^mask_token",
     "blocks": [(r"^blocks\.(\d+)", None), (r"^norm\.", (99999,))]},
    head=r"^head\.|^fc_norm\.|^head_drop",
    matches=lambda m: has_children(m, "patch_embed", "blocks"),
    top_blocks=2,
)
register_layer_preset(
    "resnet",  # timm and torchvision ResNet/ResNeXt/Wide-ResNet
    {"stem": r"^conv1\.|^bn1\.|^maxpool", "blocks": r"^layer(\d+)\."},
    head=r"^fc\.",
    matches=lambda m: has_children(m, "conv1", "layer1", "layer4"),
)
register_layer_preset(
    "convnext",
    {"stem": r"^stem\.", "blocks": [(r"^stages\.(\d+)\.", None), (r"^norm_pre\.", (99999,))]},
    head=r"^head\.",
    matches=lambda m: has_children(m, "stem", "stages"),
)
