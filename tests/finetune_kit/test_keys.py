"""The key grammar (finetune_kit.keys): module prefixes at dot boundaries, re: regexes, longest match."""
from __future__ import annotations

import pytest

from finetune_kit.keys import KeyMatcher, match_key


def test_prefix_is_a_module_prefix_at_a_dot_boundary():
    m = KeyMatcher(["blocks.1", "layer4"])
    assert m.match("blocks.1") == "blocks.1"  # the name itself
    assert m.match("blocks.1.attn.qkv.weight") == "blocks.1"
    assert m.match("blocks.10.attn.qkv.weight") is None  # not a string prefix
    assert m.match("layer40.conv.weight") is None
    assert m.match("x.layer4.conv.weight") is None  # prefixes anchor at the start
    assert KeyMatcher([""]).match("anything") is None


def test_regex_keys_are_searched():
    m = KeyMatcher([r"re:\.bias$", r"re:^h_s\."])
    assert m.match("fc.bias") == r"re:\.bias$"
    assert m.match("h_s.0.weight") == r"re:^h_s\."
    assert m.match("g_a.h_s.weight") is None  # ^ anchors
    assert m.match("fc.weight") is None


def test_longest_key_wins_and_ties_go_to_the_first():
    m = KeyMatcher(["layer4", "layer4.1", "re:conv"])
    assert m.match("layer4.0.conv1.weight") == "re:conv"  # 7 characters beat "layer4" (6)
    m = KeyMatcher(["layer4", "layer4.1"])
    assert m.match("layer4.1.conv1.weight") == "layer4.1"
    assert m.match("layer4.0.conv1.weight") == "layer4"
    tie = KeyMatcher(["re:a", "abcd"])  # both 4 characters long
    assert tie.match("abcd.weight") == "re:a"
    assert KeyMatcher(["abcd", "re:a"]).match("abcd.weight") == "abcd"


def test_matching_lists_every_key_in_given_order_and_parts():
    m = KeyMatcher(["norm", "blocks", "re:^blocks\\.11", "blocks.11"])
    assert m.matching("blocks.11.mlp.fc1.weight") == ["blocks", "re:^blocks\\.11", "blocks.11"]
    # prefix keys tried against the parts of a merged name, regexes against the whole name
    assert m.matching("blocks.11+norm", parts=["blocks.11", "norm"]) == ["norm", "blocks", "re:^blocks\\.11",
                                                                         "blocks.11"]
    assert KeyMatcher(["re:^norm"]).matching("blocks.11+norm", parts=["blocks.11", "norm"]) == []


def test_built_once_from_a_mapping_and_the_function_form():
    mults = {"g_a": 1.0, "g_a.0": 0.2}
    m = KeyMatcher(mults)
    assert m.keys == ("g_a", "g_a.0") and len(m) == 2 and bool(m)
    assert not KeyMatcher([])
    assert match_key("g_a.0.weight", mults) == "g_a.0"
    assert match_key("g_s.0.weight", mults) is None


def test_malformed_regex_is_a_one_line_value_error_naming_the_key():
    with pytest.raises(ValueError) as info:
        KeyMatcher(["g_a", "re:blocks.(1"])
    msg = str(info.value)
    assert "'re:blocks.(1'" in msg and "\n" not in msg
