"""--nproc / --sync-bn: taken off the command line wherever they stand; the torchrun command line."""
from __future__ import annotations

import sys

import pytest

from finetune_kit.tasks.launch import LaunchError, handle_launch_options, split_launch_options, torchrun_argv


def test_split_anywhere_on_the_line():
    assert split_launch_options(["classify", "--nproc", "2", "--data", "x", "--sync-bn"]) == (
        ["classify", "--data", "x"], 2, True)
    assert split_launch_options(["--nproc=3", "compress", "train"]) == (["compress", "train"], 3, False)
    assert split_launch_options(["a", "--", "--nproc", "2"]) == (["a", "--", "--nproc", "2"], None, False)


@pytest.mark.parametrize("args,match", [(["--nproc"], "needs a value"), (["--nproc", "two"], "integer"),
                                        (["--nproc", "0"], "integer >= 1")])
def test_bad_nproc(args, match):
    with pytest.raises(LaunchError, match=match):
        split_launch_options(args)


def test_torchrun_line_and_refusal_inside_a_worker(monkeypatch):
    assert torchrun_argv("prog", ["classify"], 2) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      "--nproc-per-node=2", "prog", "classify"]
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("FINETUNE_KIT_SYNC_BN", raising=False)
    with pytest.raises(LaunchError, match="inside a torchrun worker"):
        handle_launch_options(["--nproc", "2"])
    assert handle_launch_options(["x", "--sync-bn"]) == ["x"]
    import os
    assert os.environ["FINETUNE_KIT_SYNC_BN"] == "1"
