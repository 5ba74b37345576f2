"""Architecture-aware layer-group resolver.

Splits a model's parameters into ordered *layer groups* — stem first, head last — that
every strategy works on: linear probing trains the head, gradual and progressive
unfreezing release groups from the top, LLRD scales the learning rate by a group's depth.

Where the groups come from, in order of precedence:

1. ``patterns``: user-supplied regexes (CLI ``--layer_patterns``); one group per regex, in
   the given order, a regex with capture groups makes one group per captured value
   (``r"^blocks\\.(\\d+)"`` gives ``blocks.0``, ``blocks.1``, ...).
2. ``preset``: a registered preset (:mod:`finetune_kit.layer_presets`: ``vit``, ``resnet``,
   ``convnext`` and those tasks register) given by name.
3. the model's own ``group_matcher(coarse=...)`` in timm's format (every timm model has one;
   any model may define one), grouped with :func:`timm.models.group_with_matcher`.
4. a registered preset whose ``matches`` predicate accepts the model (non-timm models).

A registered preset that matches the model also supplies the family defaults (head,
``top_blocks``, ``stages``) when the groups come from patterns or ``group_matcher()``.

A parameter that no group claims, or that two user patterns claim, is an error; a model
none of the above understands gets :class:`UnknownArchitectureError` with how to pass
patterns.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from finetune_kit.keys import KeyMatcher
from finetune_kit.layer_presets import (LayerPreset, detect_layer_preset, get_layer_preset, layer_presets,
                                        register_layer_preset)

__all__ = [
    "LayerGroup",
    "LayerGroups",
    "LayerPreset",
    "UnknownArchitectureError",
    "resolve_layer_groups",
    "register_layer_preset",
    "layer_presets",
    "parameter_count",
]


class UnknownArchitectureError(ValueError):
    """The resolver cannot tell a model's layer groups; pass ``patterns``."""


@dataclass
class LayerGroup:
    """One layer group.

    Attributes:
        name: readable name (``stem``, ``blocks.3``, ``layer4``, ``head``, or the name of a
            matcher entry without capture groups).
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


@dataclass
class LayerGroups(Sequence[LayerGroup]):
    """Ordered layer groups of a model (stem first, head last) and how they were resolved.

    Behaves as a sequence of :class:`LayerGroup`. ``source`` says where the grouping came
    from: ``patterns``, ``preset:NAME``, ``timm`` (a timm model's ``group_matcher()``) or
    ``group_matcher:CLASS`` (another model's own ``group_matcher()``); ``preset`` holds the
    family defaults (the preset used, or one that matches the model; may be None).
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
        a part of a merged group (``norm`` matches ``blocks.11+norm``) or ``re:REGEX`` (searched
        in the whole name); the grammar of :mod:`finetune_kit.keys`. Every matching group is
        selected (not only the longest match), in key order, then group order, each once.
        Raises ValueError naming a key that matches nothing or a malformed ``re:`` key."""
        keys = list(keys)
        matcher = KeyMatcher(keys)
        hit_keys = {n: set(matcher.matching(n, parts=n.split("+"))) for n in self.names}
        out: list[str] = []
        for key in keys:
            hits = [n for n in self.names if key in hit_keys[n]]
            if not hits:
                raise ValueError(f"group key {key!r} matches no layer group; groups are: {', '.join(self.names)}")
            out += [h for h in hits if h not in out]
        return out

    def default_stages(self) -> list[list[str]]:
        """Default unfreezing stages, each the cumulative list of trainable group names.

        With a head (classifiers): ``[head]``, then head plus the top ``top_blocks`` block
        groups and everything between them and the head (final norm, neck), then all groups
        (ViT: head; + last 2 blocks + final norm; all. ResNet: head; + layer4; all).
        Without a head (e.g. an image codec): the preset's ``stages``, made cumulative; groups
        no stage names join the last stage.
        """
        names = self.names
        if self.preset is not None and self.preset.stages and not self.head:
            stages, acc = [], []
            for stage in self.preset.stages:
                acc = acc + [n for n in self.select(stage) if n not in acc]
                stages.append(list(acc))
            rest = [n for n in names if n not in acc]
            if rest:
                stages[-1] += rest  # groups no stage names train with the last stage
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
    """``(entry name, compiled regex)`` for every regex of a timm-style matcher, in order."""
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
    out = ({str(k): str(v) for k, v in patterns.items()} if isinstance(patterns, Mapping)
           else {f"group{i}": p for i, p in enumerate(patterns)})
    for rx in out.values():
        try:
            re.compile(rx)
        except re.error as exc:
            raise ValueError(f"--layer_patterns {rx!r}: not a valid regular expression ({exc}); escape literal "
                             "dots and brackets, e.g. '^layer4\\.'") from None
    return out


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


@dataclass
class _Source:
    """Where a model's groups come from: the timm-style ``matcher``, its ``name`` (``patterns``,
    ``preset:vit``, ``timm`` ...), whether every body parameter must match (``strict``), the
    registered preset that supplies the family defaults (``preset``) and the head's parameter names."""

    matcher: dict
    name: str
    strict: bool
    preset: LayerPreset | None
    head_names: set[str]


def _choose_source(model: nn.Module, all_names: list[str], patterns: Sequence[str] | Mapping[str, str] | None,
                   preset: str | None, coarse: bool) -> _Source:
    """Job 1: pick the matcher by precedence (patterns, preset, ``group_matcher()``, a matching
    preset) and find the head. Raises KeyError / UnknownArchitectureError / ValueError as
    :func:`resolve_layer_groups`."""
    if patterns:
        matcher = _matcher_from_patterns(patterns)
        chosen = detect_layer_preset(model)
        head_names = _head_names(model, None, all_names) or (_head_names(model, chosen, all_names) if chosen else set())
        _check_overlap(matcher, [n for n in all_names if n not in head_names])
        return _Source(matcher, "patterns", True, chosen, head_names)
    if preset is not None:
        chosen = get_layer_preset(preset)
        return _Source(dict(chosen.matcher), f"preset:{preset}", True, chosen, _head_names(model, chosen, all_names))
    if callable(getattr(model, "group_matcher", None)):
        source = "timm" if type(model).__module__.startswith("timm.") else f"group_matcher:{type(model).__name__}"
        return _Source(model.group_matcher(coarse=coarse), source, False, detect_layer_preset(model),
                       _head_names(model, None, all_names))
    chosen = detect_layer_preset(model)
    if chosen is None:
        raise UnknownArchitectureError(
            f"cannot resolve layer groups of {type(model).__name__}: it has no timm group_matcher() and "
            f"matches no preset ({', '.join(sorted(layer_presets()))}); pass regexes bottom to top, e.g. "
            "patterns=[r'^stem\\.', r'^blocks\\.(\\d+)\\.', r'^head\\.'] (CLI: --layer_patterns '^stem\\.' --layer_patterns '^blocks\\.(\\d+)\\.' ...)")
    return _Source(dict(chosen.matcher), f"preset:{chosen.name}", True, chosen, _head_names(model, chosen, all_names))


def _group_body(body: list[str], source: _Source) -> tuple[list[list[str]], list[int], list[tuple[str, re.Pattern]]]:
    """Job 2: the body's parameter names grouped bottom to top with timm's
    ``group_with_matcher``, with each group's timm ordinal and the compiled regexes.

    Raises:
        ValueError: ``source.strict`` and a parameter matches no regex.
    """
    from timm.models._manipulate import group_with_matcher  # timm's grouping, loaded only when resolving

    ordinals = group_with_matcher(((n, None) for n in body), source.matcher, reverse=True)
    compiled = _compiled(source.matcher)
    if source.strict:
        # group_with_matcher puts unmatched names in a last catch-all group: find them.
        unmatched = [n for n in body if not any(rx.match(n) for _, rx in compiled)]
        if unmatched:
            raise ValueError(f"{len(unmatched)} parameter(s) are in no layer group, e.g. {unmatched[:3]}: "
                             "add a pattern that matches them (patterns are tried with re.match from the name's start)")
    by_id: dict[int, list[str]] = {}
    for n in body:
        by_id.setdefault(ordinals[n], []).append(n)
    ids = sorted(by_id)
    return [by_id[i] for i in ids], ids, compiled


_BLOCK_RX = re.compile(r"(^|\.)(blocks|layer\d+|stages|layers|features)(\.|$)")


def _body_group_name(names: list[str], ordinal: int, compiled: list[tuple[str, re.Pattern]]) -> str:
    """Job 3: a body group's name: a named matcher entry without capture groups names its group
    (``stem``); otherwise the text its regexes matched (:func:`_group_name`)."""
    key, rx = next(((k, r) for k, r in compiled if r.match(names[0])), (None, None))
    if key is not None and rx.groups == 0 and not re.fullmatch(r"group\d+", key) and key != "blocks":
        return key
    return _group_name(names, compiled, f"group{ordinal}")


def _number_groups(groups: list[LayerGroup]) -> None:
    """Job 4: make names unique (``name#1`` ...) and set ``index`` (stem = 0) and ``depth`` (head = 0)."""
    seen: dict[str, int] = {}
    for g in groups:
        if g.name in seen:
            seen[g.name] += 1
            g.name = f"{g.name}#{seen[g.name]}"
        else:
            seen[g.name] = 0
    n = len(groups)
    for i, g in enumerate(groups):
        g.index, g.depth = i, n - 1 - i


def resolve_layer_groups(
    model: nn.Module,
    *,
    patterns: Sequence[str] | Mapping[str, str] | None = None,
    preset: str | None = None,
    coarse: bool = True,
) -> LayerGroups:
    """Resolve ``model`` into ordered layer groups (stem first, head last).

    Args:
        model: a timm model, a model with its own ``group_matcher()``, or any ``nn.Module`` a
            registered preset matches (see the module docstring).
        patterns: user regexes (list, or ``{name: regex}``) matched with ``re.match`` against
            parameter names; they override presets and ``group_matcher()``. The classifier head
            (timm's ``get_classifier()``) is added as the last group when not matched.
        preset: name of a registered preset (:func:`finetune_kit.layer_presets.layer_presets`).
        coarse: passed to ``group_matcher(coarse=...)``: with timm models ``True`` gives stages
            (``layer4``), ``False`` blocks (``layer4.1``). Presets are coarse.

    Returns:
        :class:`LayerGroups`: each group has a name, ``index`` (stem = 0), ``depth`` (head = 0)
        and its parameters; every parameter is in exactly one group.

    Raises:
        KeyError: unknown ``preset`` (lists the registered ones).
        UnknownArchitectureError: no patterns, no preset, no ``group_matcher()`` and no
            registered preset matches; the message says how to pass patterns.
        ValueError: a parameter in no group, or matched by two user patterns.
    """
    named = list(model.named_parameters())
    if not named:
        raise ValueError(f"{type(model).__name__} has no parameters to group")
    all_names = [n for n, _ in named]
    params = dict(named)
    source = _choose_source(model, all_names, patterns, preset, coarse)
    body = [n for n in all_names if n not in source.head_names]
    groups: list[LayerGroup] = []
    body_groups, ordinals, compiled = _group_body(body, source)
    for names, ordinal in zip(body_groups, ordinals):
        gname = _body_group_name(names, ordinal, compiled)
        groups.append(LayerGroup(gname, 0, 0, names, [params[n] for n in names],
                                 is_block=bool(_BLOCK_RX.search(gname)) and gname != "stem"))
    if source.head_names:
        hn = [n for n in all_names if n in source.head_names]
        groups.append(LayerGroup("head", 0, 0, hn, [params[n] for n in hn], is_head=True))
    _number_groups(groups)
    if sum(len(g.param_names) for g in groups) != len(all_names):  # defensive: the steps above partition the names
        raise ValueError("internal error: layer groups do not partition the parameters")
    return LayerGroups(groups, source.name, source.preset)


def parameter_count(model: nn.Module | Iterable[torch.Tensor]) -> int:
    """Number of scalar parameters of a module or an iterable of tensors."""
    ps = model.parameters() if isinstance(model, nn.Module) else model
    return sum(p.numel() for p in ps)
