"""Architecture-aware layer-group resolver.

Splits a model's parameters into ordered *layer groups* — stem first, head last — that
every strategy works on: linear probing trains the head, gradual and progressive
unfreezing release groups from the top, LLRD scales the learning rate by a group's depth.

Where the groups come from, in order of precedence:

1. ``patterns``: user-supplied regexes (CLI ``--layer_patterns``); one group per regex, in
   the given order, a regex with capture groups makes one group per captured value
   (``r"^blocks\\.(\\d+)"`` gives ``blocks.0``, ``blocks.1``, ...).
2. ``preset``: a named preset (``vit``, ``resnet``, ``convnext``, ``hpcm``) given explicitly.
3. the model's own timm ``group_matcher(coarse=...)`` (every timm model has one), grouped
   with :func:`timm.models.group_with_matcher`.
4. a preset detected from the model's module names (non-timm models).

A parameter that no group claims, or that two user patterns claim, is an error; a model
none of the above understands gets :class:`UnknownArchitectureError` with how to pass
patterns.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "LayerGroup",
    "LayerGroups",
    "LayerPreset",
    "UnknownArchitectureError",
    "resolve_layer_groups",
    "register_layer_preset",
    "layer_presets",
]


class UnknownArchitectureError(ValueError):
    """The resolver cannot tell a model's layer groups; pass ``patterns``."""


@dataclass
class LayerGroup:
    """One layer group.

    Attributes:
        name: readable name (``stem``, ``blocks.3``, ``layer4``, ``head``, ``g_a`` ...).
        index: position from the bottom (stem = 0).
        depth: distance from the top (head = 0); LLRD gives this group ``lr * decay**depth``.
        param_names: names of its parameters, as in ``model.named_parameters()``.
        params: the parameters themselves (same order as ``param_names``).
        is_head: True for the classifier head (what a linear probe trains).
        is_block: True for a backbone block/stage group (what gradual unfreezing counts).
    """

    name: str
    index: int
    depth: int
    param_names: list[str]
    params: list[nn.Parameter] = field(repr=False)
    is_head: bool = False
    is_block: bool = False

    @property
    def num_params(self) -> int:
        """Number of scalar parameters in the group."""
        return sum(p.numel() for p in self.params)


@dataclass(frozen=True)
class LayerPreset:
    """A named grouping rule.

    Attributes:
        name: preset name (``vit``, ``resnet``, ``convnext``, ``hpcm`` ...).
        matcher: timm-style group matcher, ``{group_name: regex | [(regex, suffix), ...]}`` in
            bottom-to-top order (see ``timm.models.group_with_matcher``).
        head: regex of the head's parameter names (``None``: no head, e.g. compression models).
        detect: predicate on the model telling whether the preset applies (auto-detection).
        top_blocks: how many block groups the second stage of gradual unfreezing releases
            with the head (ViT: last 2 blocks; ResNet: layer4; ConvNeXt: the last stage).
        stages: default unfreezing stages as lists of group-name prefixes (used by
            ``progressive`` for models without a head, e.g. HPCM); ``None`` derives them.
    """

    name: str
    matcher: Mapping[str, object]
    head: str | None
    detect: Callable[[nn.Module], bool] = lambda m: False
    top_blocks: int = 1
    stages: tuple[tuple[str, ...], ...] | None = None


def _has(model: nn.Module, *names: str) -> bool:
    children = dict(model.named_children())
    return all(n in children for n in names)


_PRESETS: dict[str, LayerPreset] = {}


def register_layer_preset(preset: LayerPreset) -> LayerPreset:
    """Register (or replace) a named preset; returns it. Presets are looked up by name
    (``preset=``) and, for models without ``group_matcher()``, by their ``detect`` predicate."""
    _PRESETS[preset.name] = preset
    return preset


def layer_presets() -> dict[str, LayerPreset]:
    """All registered presets by name."""
    return dict(_PRESETS)


register_layer_preset(LayerPreset(
    name="vit",  # ViT, DeiT, DINOv2, EVA... (timm and most ports share these names)
    matcher={"stem": r"^cls_token|^reg_token|^pos_embed|^patch_embed|^norm_pre|^mask_token",
             "blocks": [(r"^blocks\.(\d+)", None), (r"^norm\.", (99999,))]},
    head=r"^head\.|^fc_norm\.|^head_drop",
    detect=lambda m: _has(m, "patch_embed", "blocks"),
    top_blocks=2,
))
register_layer_preset(LayerPreset(
    name="resnet",  # timm and torchvision ResNet/ResNeXt/Wide-ResNet
    matcher={"stem": r"^conv1\.|^bn1\.|^maxpool", "blocks": r"^layer(\d+)\."},
    head=r"^fc\.",
    detect=lambda m: _has(m, "conv1", "layer1", "layer4"),
    top_blocks=1,
))
register_layer_preset(LayerPreset(
    name="convnext",
    matcher={"stem": r"^stem\.", "blocks": [(r"^stages\.(\d+)\.", None), (r"^norm_pre\.", (99999,))]},
    head=r"^head\.",
    detect=lambda m: _has(m, "stem", "stages"),
    top_blocks=1,
))
# HPCM and the CompressAI models: analysis/synthesis transforms, hyper transforms, context
# model and entropy models. The entropy bottleneck's ``quantiles`` (trained only by the aux
# loss) are a group of their own so they can be frozen or trained separately. CompressAI
# zoo models name their context modules differently (cheng2020/mbt2018: context_prediction,
# entropy_parameters; ELIC: channel_context and per-group checkerboard codecs under
# latent_codec.y; channel-wise models: cc_*_transforms, lrp_transforms): every module named
# in ``_COMPRESSION_CONTEXT`` goes to ``context`` so the context LR multiplier applies;
# latent-codec models keep h_a/h_s/entropy_bottleneck under ``latent_codec.<name>.``.
_COMPRESSION_CONTEXT = ("context", "context_prediction", "entropy_parameters", "channel_context",
                        "spatial_context", "param_aggregation", "cc_transforms", "cc_mean_transforms",
                        "cc_scale_transforms", "lrp_transforms")
_LC = r"(?:latent_codec\.\w+\.)?"  # CompressAI latent codecs (ELIC): latent_codec.hyper.h_a...


def _is_compression_model(m: nn.Module) -> bool:
    """HPCM / CompressAI layout: g_a and g_s, and an entropy bottleneck (top-level or in a latent codec)."""
    return _has(m, "g_a", "g_s") and any(n.rsplit(".", 1)[-1] == "entropy_bottleneck" for n, _ in m.named_modules())


register_layer_preset(LayerPreset(
    name="hpcm",
    matcher={"g_a": r"^g_a\.", "g_s": r"^g_s\.", "h_a": rf"^{_LC}h_a\.", "h_s": rf"^{_LC}h_s\.",
             "context": rf"^(?:[\w.]+\.)?(?:{'|'.join(_COMPRESSION_CONTEXT)})\.",
             "entropy_bottleneck": rf"^{_LC}entropy_bottleneck\.(?!quantiles$)",
             "quantiles": rf"^{_LC}entropy_bottleneck\.quantiles$",
             "gaussian_conditional": r"^(?:[\w.]+\.)?gaussian_conditional\."},
    head=None,
    detect=_is_compression_model,
    stages=(("g_a", "g_s"), ("h_a", "h_s", "entropy_bottleneck"), ("context",)),
))


@dataclass
class LayerGroups(Sequence[LayerGroup]):
    """Ordered layer groups of a model (stem first, head last) and how they were resolved.

    Behaves as a sequence of :class:`LayerGroup`. ``source`` says where the grouping came
    from (``patterns``, ``preset:NAME`` or ``timm``) and ``preset`` holds family defaults.
    """

    groups: list[LayerGroup]
    source: str
    preset: LayerPreset | None = None

    def __getitem__(self, i):  # type: ignore[override]
        return self.groups[i]

    def __len__(self) -> int:
        return len(self.groups)

    def by_name(self, name: str) -> LayerGroup:
        """The group called ``name``. Raises KeyError listing the names."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no layer group {name!r}; groups are: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        """Group names in order, stem first and head last."""
        return [g.name for g in self.groups]

    @property
    def head(self) -> list[LayerGroup]:
        """The head group(s) (empty for models without a classifier)."""
        return [g for g in self.groups if g.is_head]

    def select(self, keys: Iterable[str]) -> list[str]:
        """Names of the groups matching ``keys``: a key is a group name, a module prefix of
        group names (``blocks`` matches ``blocks.0`` ..., but ``blocks.1`` not ``blocks.10``),
        a part of a merged group (``norm`` matches ``blocks.11+norm``) or ``re:REGEX``.
        Raises ValueError naming a key that matches nothing."""
        out: list[str] = []
        for key in keys:
            hits = [n for n in self.names if _key_matches(key, n)]
            if not hits:
                raise ValueError(f"group key {key!r} matches no layer group; groups are: {', '.join(self.names)}")
            out += [h for h in hits if h not in out]
        return out

    def default_stages(self) -> list[list[str]]:
        """Default unfreezing stages, each the cumulative list of trainable group names.

        With a head (classifiers): ``[head]``, then head plus the top ``top_blocks`` block
        groups and everything between them and the head (final norm, neck), then all groups
        (ViT: head; + last 2 blocks + final norm; all. ResNet: head; + layer4; all).
        Without a head (HPCM): the preset's ``stages``, made cumulative.
        """
        names = self.names
        if self.preset is not None and self.preset.stages and not self.head:
            stages, acc = [], []
            for stage in self.preset.stages:
                acc = acc + [n for n in self.select(stage) if n not in acc]
                stages.append(list(acc))
            rest = [n for n in names if n not in acc]
            if rest:
                stages[-1] += rest  # e.g. quantiles, gaussian_conditional: trained with the last stage
            return stages
        top = self.preset.top_blocks if self.preset is not None else 1
        head = [g.name for g in self.head] or [names[-1]]
        blocks = [g.index for g in self.groups if g.is_block]
        if not blocks:
            return [head, names]
        cut = blocks[-top] if len(blocks) >= top else blocks[0]
        second = [g.name for g in self.groups if g.index >= cut]
        stages = [head, second, names]
        return [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]


def _key_matches(key: str, name: str) -> bool:
    """Whether group ``name`` is selected by ``key``: the name itself, a module prefix of it
    (``head`` selects ``head.norm``), a part of a merged group (``blocks.11`` selects
    ``blocks.11+norm``), or ``re:REGEX`` (searched). ``blocks.1`` does not select ``blocks.10``."""
    if key.startswith("re:"):
        return re.search(key[3:], name) is not None
    return any(part == key or part.startswith(key + ".") for part in name.split("+"))


def _common_prefix(names: Sequence[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    prefix: list[str] = []
    for items in zip(*parts):
        if all(x == items[0] for x in items):
            prefix.append(items[0])
        else:
            break
    return ".".join(prefix)


def _compiled(matcher: Mapping[str, object]) -> list[tuple[str, re.Pattern]]:
    out = []
    for key, spec in matcher.items():
        if spec is None:
            continue
        for s in (spec if isinstance(spec, (list, tuple)) else [spec]):
            out.append((key, re.compile(s[0] if isinstance(s, (list, tuple)) else s)))
    return out


def _group_name(param_names: Sequence[str], compiled: list[tuple[str, re.Pattern]], fallback: str) -> str:
    """Name a group by the text its regexes matched (``blocks.11``, ``layer4``), joined with
    ``+`` when a group spans several matches (timm folds ViT's final ``norm`` into the last
    block: ``blocks.11+norm``); the common module prefix for unmatched catch-all groups."""
    keys: list[str] = []
    for n in param_names:
        for _, rx in compiled:
            m = rx.match(n)
            if m:
                k = m.group(0).rstrip(".")
                if k not in keys:
                    keys.append(k)
                break
        else:
            keys = []
            break
    if keys and len(keys) <= 3:
        return "+".join(keys)
    return _common_prefix(param_names) or fallback


def _head_names(model: nn.Module, preset: LayerPreset | None, names: list[str]) -> set[str]:
    """Parameter names of the classifier head."""
    if preset is not None:
        if preset.head is None:
            return set()
        rx = re.compile(preset.head)
        return {n for n in names if rx.search(n)}
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        clf = get_classifier()
        if isinstance(clf, nn.Module):
            ids = {id(p) for p in clf.parameters()}
            return {n for n, p in model.named_parameters() if id(p) in ids}
    return set()


def _matcher_from_patterns(patterns: Sequence[str] | Mapping[str, str]) -> dict[str, object]:
    if isinstance(patterns, Mapping):
        return {str(k): str(v) for k, v in patterns.items()}
    return {f"group{i}": p for i, p in enumerate(patterns)}


def _check_overlap(matcher: Mapping[str, object], names: list[str]) -> None:
    compiled = []
    for key, spec in matcher.items():
        regexes = [s[0] for s in spec] if isinstance(spec, (list, tuple)) else [spec]
        compiled.append((key, [re.compile(r) for r in regexes]))
    for n in names:
        hits = [k for k, rxs in compiled if any(rx.match(n) for rx in rxs)]
        if len(hits) > 1:
            raise ValueError(f"parameter {n!r} matches layer patterns of two groups ({', '.join(hits)}): "
                             "make the patterns disjoint (anchor them with ^ and end with \\.)")


def resolve_layer_groups(
    model: nn.Module,
    *,
    patterns: Sequence[str] | Mapping[str, str] | None = None,
    preset: str | None = None,
    coarse: bool = True,
) -> LayerGroups:
    """Resolve ``model`` into ordered layer groups (stem first, head last).

    Args:
        model: a timm model, a CompressAI/HPCM model, or any ``nn.Module`` (see module doc).
        patterns: user regexes (list, or ``{name: regex}``) matched with ``re.match`` against
            parameter names; they override presets and timm's matcher. The classifier head
            (timm's ``get_classifier()``) is added as the last group when not matched.
        preset: name of a registered preset (``vit``, ``resnet``, ``convnext``, ``hpcm``).
        coarse: with timm matchers, ``True`` gives stages (``layer4``), ``False`` blocks
            (``layer4.1``). Presets are coarse.

    Returns:
        :class:`LayerGroups`: each group has a name, ``index`` (stem = 0), ``depth`` (head = 0)
        and its parameters; every parameter is in exactly one group.

    Raises:
        KeyError: unknown ``preset`` (lists the registered ones).
        UnknownArchitectureError: no patterns, no preset, no ``group_matcher()`` and no
            preset detected; the message says how to pass patterns.
        ValueError: a parameter in no group, or matched by two user patterns.
    """
    from timm.models._manipulate import group_with_matcher

    named = list(model.named_parameters())
    if not named:
        raise ValueError(f"{type(model).__name__} has no parameters to group")
    all_names = [n for n, _ in named]
    chosen: LayerPreset | None = None
    strict = False
    if patterns:
        matcher, source, strict = _matcher_from_patterns(patterns), "patterns", True
        chosen = next((p for p in _PRESETS.values() if p.detect(model)), None)
        head_names = _head_names(model, None, all_names) or (_head_names(model, chosen, all_names) if chosen else set())
        _check_overlap(matcher, [n for n in all_names if n not in head_names])
    elif preset is not None:
        if preset not in _PRESETS:
            raise KeyError(f"unknown layer preset {preset!r}; registered presets: {', '.join(sorted(_PRESETS))}")
        chosen = _PRESETS[preset]
        matcher, source, strict = dict(chosen.matcher), f"preset:{preset}", True
        head_names = _head_names(model, chosen, all_names)
    elif callable(getattr(model, "group_matcher", None)):
        matcher, source = model.group_matcher(coarse=coarse), "timm"
        chosen = next((p for p in _PRESETS.values() if p.detect(model)), None)
        head_names = _head_names(model, None, all_names)
    else:
        chosen = next((p for p in _PRESETS.values() if p.detect(model)), None)
        if chosen is None:
            raise UnknownArchitectureError(
                f"cannot resolve layer groups of {type(model).__name__}: it has no timm group_matcher() and "
                f"matches no preset ({', '.join(sorted(_PRESETS))}); pass regexes bottom to top, e.g. "
                "patterns=[r'^stem\\.', r'^blocks\\.(\\d+)\\.', r'^head\\.'] (CLI: --layer_patterns '^stem\\.' --layer_patterns '^blocks\\.(\\d+)\\.' ...)")
        matcher, source, strict = dict(chosen.matcher), f"preset:{chosen.name}", True
        head_names = _head_names(model, chosen, all_names)

    body = [n for n in all_names if n not in head_names]
    ordinals = group_with_matcher(((n, None) for n in body), matcher, reverse=True)
    if strict:
        # group_with_matcher puts unmatched names in a last catch-all group: find them.
        unmatched = [n for n in body if not any(rx.match(n) for _, rx in _compiled(matcher))]
        if unmatched:
            raise ValueError(f"{len(unmatched)} parameter(s) are in no layer group, e.g. {unmatched[:3]}: "
                             "add a pattern that matches them (patterns are tried with re.match from the name's start)")
    by_id: dict[int, list[str]] = {}
    for n in body:
        by_id.setdefault(ordinals[n], []).append(n)
    block_rx = re.compile(r"(^|\.)(blocks|layer\d+|stages|layers|features)(\.|$)")
    compiled = _compiled(matcher)
    params = dict(named)
    groups: list[LayerGroup] = []
    for lid in sorted(by_id):
        names = by_id[lid]
        key, rx = next(((k, r) for k, r in compiled if r.match(names[0])), (None, None))
        if key is not None and rx.groups == 0 and not re.fullmatch(r"group\d+", key) and key != "blocks":
            gname = key  # a named entry without capture groups names its group: stem, g_a, context, ...
        else:
            gname = _group_name(names, compiled, f"group{lid}")
        is_block = bool(block_rx.search(gname)) and gname != "stem"
        groups.append(LayerGroup(gname, 0, 0, names, [params[n] for n in names], is_block=is_block))
    if head_names:
        hn = [n for n in all_names if n in head_names]
        groups.append(LayerGroup("head", 0, 0, hn, [params[n] for n in hn], is_head=True))
    seen: dict[str, int] = {}
    for g in groups:  # names must be unique
        if g.name in seen:
            seen[g.name] += 1
            g.name = f"{g.name}#{seen[g.name]}"
        else:
            seen[g.name] = 0
    n = len(groups)
    for i, g in enumerate(groups):
        g.index, g.depth = i, n - 1 - i
    counted = sum(len(g.param_names) for g in groups)
    if counted != len(all_names):  # defensive: the construction above partitions the names
        raise ValueError("internal error: layer groups do not partition the parameters")
    return LayerGroups(groups, source, chosen)


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of scalar parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_count(model: nn.Module | Iterable[torch.Tensor]) -> int:
    """Number of scalar parameters of a module or an iterable of tensors."""
    ps = model.parameters() if isinstance(model, nn.Module) else model
    return sum(p.numel() for p in ps)
