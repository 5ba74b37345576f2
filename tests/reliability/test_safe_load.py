"""A crafted pickle runs nothing: every loader refuses it with one line naming the opt-in flag;
our own checkpoints (with NumPy RNG state) and safetensors load safely."""
from __future__ import annotations

import os

import pytest
import torch

from finetune_kit.runs.checkpoint import load_checkpoint
from finetune_kit.runs.safe_load import TRUST_ENV, UnsafeWeightsError, safe_torch_load
from finetune_kit.seeding import rng_state


class _Payload:
    """Unpickling this writes a marker file (what an attacker's ``__reduce__`` would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "x": _Payload(marker)}, path)
    return path, marker


def test_crafted_pickle_runs_nothing_in_any_loader(crafted, monkeypatch):
    from finetune_kit.tasks.classification.model import ModelError, read_weights_file
    from finetune_kit.tasks.compression.checkpoints import load_model

    monkeypatch.delenv(TRUST_ENV, raising=False)
    path, marker = crafted
    for load, exc in ((lambda: read_weights_file(path), ModelError), (lambda: load_checkpoint(path), UnsafeWeightsError),
                      (lambda: load_model(path), UnsafeWeightsError)):
        with pytest.raises(exc) as info:
            load()
        msg = str(info.value)
        assert "\n" not in msg and "--trust-pickled-weights" in msg and str(path) in msg and "needs the pickled global" in msg and "open" in msg
    assert not marker.exists(), "unpickling ran code"


def test_the_opt_in_flag_is_what_runs_it(crafted, monkeypatch):
    path, marker = crafted
    monkeypatch.setenv(TRUST_ENV, "1")
    safe_torch_load(path)
    assert marker.exists()  # proves the payload is live: the refusal above is what protects


def test_own_checkpoints_and_safetensors_load_safely(tmp_path):
    from safetensors.torch import save_file

    from finetune_kit.tasks.classification.model import read_weights_file

    torch.save({"model": {"w": torch.ones(2)}, "rng": rng_state(), "config": {"a": [1, None, "x"]}}, tmp_path / "c.pt")
    ck = load_checkpoint(tmp_path / "c.pt")
    assert ck["rng"]["numpy"][1].dtype.name == "uint32" and ck["config"] == {"a": [1, None, "x"]}
    save_file({"w": torch.ones(3)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_weights_file(tmp_path / "w.safetensors")["w"], torch.ones(3))


def test_cli_flag_sets_the_opt_in(monkeypatch, capfd):
    from finetune_kit.tasks.cli import app

    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        app(["--trust-pickled-weights", "strategies"])
    assert info.value.code == 0 and os.environ.get(TRUST_ENV) == "1"
    assert "can run code" in capfd.readouterr().err
    monkeypatch.delenv(TRUST_ENV)
