"""``--accum-steps`` and ``--grad-checkpointing``: accumulating 4 micro-batches of 8 is one step of
batch 32, checkpointing changes memory, not gradients, and a run counts optimizer steps."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch

from finetune_kit.amp import resolve_amp
from finetune_kit.schedulers import build_lr_scheduler
from finetune_kit.tasks.classification.accumulation import micro_batches, optimizer_steps
from finetune_kit.tasks.classification.engine import train_one_epoch
from tests.tasks.classification.conftest import small_config

#: absolute tolerance of the comparisons (float32 sums in another order)
ATOL = 1e-6


def _vit() -> torch.nn.Module:
    """A BatchNorm-free model: timm's ViT-Tiny on 32 px inputs (a 2 x 2 patch grid), 3 classes."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=3)


def _step(model: torch.nn.Module, batches: list, accum: int) -> int:
    amp = resolve_amp(False, torch.device("cpu"), "auto")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, epochs=1, steps_per_epoch=1, warmup_epochs=0.0)
    model.train()
    _, steps = train_one_epoch(forward=model, batches=batches, prepare=lambda x: x,
                               criterion=torch.nn.CrossEntropyLoss(), optimizer=opt, schedule=sched, global_step=0,
                               amp=amp, scaler=amp.grad_scaler(), grad_clip=None, accum_steps=accum)
    return steps


def test_accum_4_of_8_equals_one_batch_of_32():
    """Gradients (unclipped: a clip could hide a wrong scale) and weights after the optimizer step agree
    within 1e-6; both runs make exactly one optimizer step."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 3, (32,), generator=g)
    big, small = _vit(), _vit()
    assert _step(big, [(x, y)], 1) == 1
    assert _step(small, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)], 4) == 1
    for (name, a), b in zip(big.named_parameters(), small.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=ATOL, rtol=0, msg=name)
        torch.testing.assert_close(b, a, atol=ATOL, rtol=0, msg=name)
    assert any((a - b).abs().max() > 0 for a, b in zip(_vit().parameters(), big.parameters()))  # it stepped


def test_grad_checkpointing_gives_the_same_gradients():
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    plain = _vit().train()
    ckpt = copy.deepcopy(plain).train()
    ckpt.set_grad_checkpointing(True)
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    for m in (plain, ckpt):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=ATOL, rtol=0, msg=name)


def test_micro_batch_groups():
    flags = [(first, last, size) for _, _, first, last, size in micro_batches([(i, i) for i in range(10)], 4)]
    assert [f for f, _, _ in flags] == [True, False, False, False] * 2 + [True, False]
    assert [i for i, (_, last, _) in enumerate(flags) if last] == [3, 7, 9]
    assert [s for _, _, s in flags] == [4] * 8 + [2] * 2
    assert optimizer_steps(10, 4) == 3 and optimizer_steps(10, 1) == 10
    with pytest.raises(ValueError, match="--accum-steps 0: must be >= 1"):
        list(micro_batches([], 0))


@pytest.mark.slow  # ~25 s: a real training run
def test_run_counts_optimizer_steps(acrima_flat, tmp_path):
    """A real run with --accum-steps 2 and --grad-checkpointing: global_step = ceil(batches / 2) per epoch."""
    from finetune_kit.tasks.classification.train import run_training

    cfg = small_config(acrima_flat, tmp_path, ft_strategy="full", label_preset="acrima", num_epochs=1, batch_size=4,
                       accum_steps=2, grad_checkpointing=True)
    run = Path(run_training(cfg)["run_dir"])
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    train = sum(1 for line in (run / "split.csv").read_text().splitlines()[1:] if line.rstrip().endswith(",train"))
    assert record["global_step"] == optimizer_steps(-(-train // 4), 2)
