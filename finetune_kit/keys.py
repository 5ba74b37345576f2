"""One key grammar for everything that addresses parameters or layer groups by name.

LR multipliers (``lr_mults``), per-key weight decay, per-group gradient clipping, per-group
warm-ups and layer-group selection (``LayerGroups.select``) all name their targets with *keys*:

- ``MODULE.PREFIX``: a module prefix at a dot boundary. ``blocks.1`` matches ``blocks.1``
  and ``blocks.1.attn.qkv.weight`` but not ``blocks.10.attn.qkv.weight``: a name matches when
  it equals the key or starts with the key followed by ``"."``. A key is never matched as a
  plain string prefix, and the empty key matches nothing.
- ``re:REGEX``: a regular expression *searched* anywhere in the name (``re.search``); anchor
  it with ``^`` to match from the start (``re:^head\\.``, ``re:\\.bias$``).

When several keys match one name the **longest key wins** (its length as written, ``re:``
included), so a finer key refines a coarser one (``layer4:0.5`` and ``layer4.1:0.2``); of
equally long keys the first given wins. This is the rule the three earlier copies of the
grammar shared (parameter groups, layer-group selection, per-group clipping and warm-ups).

:class:`KeyMatcher` compiles the keys once (regexes compiled, prefixes in a set) and then
answers :meth:`KeyMatcher.match` per name without recompiling, so building the optimizer
groups of a model with hundreds of parameters costs one compilation per key.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

__all__ = ["KeyMatcher", "match_key", "REGEX_PREFIX"]

#: how a key marks itself as a regular expression
REGEX_PREFIX = "re:"


def _dot_prefixes(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``: every prefix of ``name`` that ends at a dot
    boundary, and ``name`` itself (the strings a module-prefix key may equal)."""
    out = [name[:i] for i, ch in enumerate(name) if ch == "."]
    out.append(name)
    return out


class KeyMatcher:
    """Keys compiled once; :meth:`match` gives the key that matches a name best.

    Args:
        keys: module prefixes and ``re:REGEX`` keys (see the module docstring). Any iterable of
            strings; a mapping contributes its keys. Duplicates are kept once (first position).

    Raises:
        ValueError: a ``re:`` key whose regex does not compile; one line naming the key.

    Example::

        m = KeyMatcher(["layer4", "layer4.1", "re:\\\\.bias$"])
        m.match("layer4.1.conv1.weight")   # "layer4.1" (longest)
        m.match("layer40.conv.weight")     # None (dot boundary)
        m.match("fc.bias")                 # "re:\\.bias$"
    """

    __slots__ = ("keys", "_order", "_prefixes", "_regexes")

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys: tuple[str, ...] = tuple(dict.fromkeys(str(k) for k in keys))
        self._order = {k: i for i, k in enumerate(self.keys)}
        self._prefixes: set[str] = set()
        self._regexes: list[tuple[str, re.Pattern]] = []
        for key in self.keys:
            if key.startswith(REGEX_PREFIX):
                try:
                    self._regexes.append((key, re.compile(key[len(REGEX_PREFIX):])))
                except re.error as exc:
                    raise ValueError(f"key {key!r} is not a valid regular expression: {exc}") from None
            elif key:
                self._prefixes.add(key)

    def __len__(self) -> int:
        return len(self.keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __repr__(self) -> str:
        return f"KeyMatcher({list(self.keys)!r})"

    def matching(self, name: str, parts: Sequence[str] | None = None) -> list[str]:
        """All keys that match ``name``, in the order the keys were given.

        Args:
            name: a parameter or layer-group name.
            parts: names the *prefix* keys are tried against instead of ``name`` (default
                ``(name,)``); ``re:`` keys are always searched in ``name`` itself. Layer-group
                selection passes the parts of a merged group name (``blocks.11+norm``).
        """
        hits: set[str] = set()
        if self._prefixes:
            for part in (name,) if parts is None else parts:
                hits.update(p for p in _dot_prefixes(part) if p in self._prefixes)
        hits.update(k for k, rx in self._regexes if rx.search(name))
        return sorted(hits, key=self._order.__getitem__)

    def match(self, name: str) -> str | None:
        """The best key for ``name``: the longest matching key, the first given among equally
        long ones; None when no key matches."""
        best: str | None = None
        for key in self.matching(name):
            if best is None or len(key) > len(best):
                best = key
        return best


def match_key(name: str, keys: Iterable[str]) -> str | None:
    """The key of ``keys`` that matches ``name`` best, or None (compiles ``keys`` on each call:
    build one :class:`KeyMatcher` when matching many names).

    Raises:
        ValueError: a ``re:`` key whose regex does not compile.
    """
    return KeyMatcher(keys).match(name)
