"""StrategyCallback: a real lightning.Trainer (CPU, 4 epochs, ResNet-18 at 32 px) drives
``progressive`` and ``gradual`` exactly as finetune-kit's own loop does: same unfreeze events,
same per-group learning rates at every optimizer step, frozen BatchNorm kept in eval."""
from __future__ import annotations

import copy

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")

from finetune_kit.integrations.lightning import StrategyCallback  # noqa: E402
from finetune_kit.layer_groups import resolve_layer_groups  # noqa: E402
from finetune_kit.schedulers import build_lr_scheduler  # noqa: E402
from finetune_kit.strategy import get_strategy  # noqa: E402

EPOCHS, BATCH, N_TRAIN = 4, 16, 48  # 3 optimizer steps per epoch
SCHEDULE = dict(warmup_epochs=0.5, min_lr=1e-6)
#: validation metric per epoch fed to ``gradual`` (both loops): a plateau after epoch 1 (patience 1)
METRICS = [0.6, 0.7, 0.65, 0.66]
CASES = {"progressive": dict(unfreeze_schedule="1,2", unfreeze_warmup_epochs=1),
         "gradual": dict(gradual_patience=1)}


def _model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=2)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + 16, 3, 32, 32, generator=g)
    y = torch.arange(N_TRAIN + 16) % 2
    x[y == 1] += 0.5
    ds = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.Subset(ds, range(N_TRAIN))
    val = torch.utils.data.Subset(ds, range(N_TRAIN, N_TRAIN + 16))
    return (torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=True, generator=g),
            torch.utils.data.DataLoader(val, batch_size=16))


def _bn_training(model) -> int:
    return sum(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


class _Module(L.LightningModule):
    def __init__(self, callback: StrategyCallback):
        super().__init__()
        self.model = _model()
        self.callback = callback
        self.seen: list[tuple[int, list[float], int]] = []  # (epoch, per-group LR, BN layers in train mode)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.callback.param_groups(self.model, weight_decay=0.05), lr=1e-3)

    def training_step(self, batch, batch_idx):
        opt = self.trainer.optimizers[0]
        self.seen.append((self.current_epoch, [g["lr"] for g in opt.param_groups], _bn_training(self.model)))
        x, y = batch
        return torch.nn.functional.cross_entropy(self.model(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.model(x), y))

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log("val_auroc", METRICS[self.current_epoch])


def _reference(name: str, steps: int):
    """Our own loop's hook sequence on the same schedule: per step (epoch, LRs, BN in train mode)."""
    model = _model()
    strategy = get_strategy(name, **CASES[name])
    opt = torch.optim.AdamW(strategy.build_param_groups(resolve_layer_groups(model), weight_decay=0.05), lr=1e-3)
    schedule = build_lr_scheduler(opt, epochs=EPOCHS, steps_per_epoch=steps, **SCHEDULE)
    seen, step = [], 0
    for epoch in range(EPOCHS):
        strategy.on_epoch_start(epoch, opt)
        strategy.train_mode(model)
        for _ in range(steps):
            schedule.apply(step)
            seen.append((epoch, [g["lr"] for g in opt.param_groups], _bn_training(model)))
            step += 1
        strategy.on_validation_end(epoch, METRICS[epoch], opt)
    return seen, [e.record() for e in strategy.events], strategy


@pytest.mark.parametrize("name", ["progressive", "gradual"])
def test_lightning_trainer_matches_our_loop(name):
    torch.set_num_threads(1)
    callback = StrategyCallback(name, monitor="val_auroc", lr_schedule=SCHEDULE, **CASES[name])
    module = _Module(callback)
    train, val = _data()
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[callback])
    trainer.fit(module, train, val)
    ref_seen, ref_events, ref = _reference(name, steps=N_TRAIN // BATCH)

    assert callback.events == ref_events and callback.events, callback.events
    if name == "progressive":  # unfreeze_schedule 1,2: stage 1 trains from epoch 2, stage 2 from epoch 3
        assert [e["epoch"] for e in callback.events] == [2, 3]
    else:  # plateaus at epochs 3 and 4 (patience 1): the next stages train from epochs 4 and 5
        assert [e["epoch"] for e in callback.events] == [4, 5]
    assert len(module.seen) == len(ref_seen) == EPOCHS * (N_TRAIN // BATCH)
    for (ep, lrs, bn), (rep, rlrs, rbn) in zip(module.seen, ref_seen):
        assert ep == rep and bn == rbn
        assert lrs == pytest.approx(rlrs, rel=1e-9, abs=1e-15)
    assert module.seen[0][2] == 0  # head only: every BatchNorm of the frozen backbone stays in eval
    assert callback.strategy.trainable == ref.trainable
    frozen = [p for g in callback.strategy.groups if g.name not in callback.strategy.trainable for p in g.params]
    assert not any(p.requires_grad for p in frozen)
    assert not frozen  # both reach their last stage (all groups) within the 4 epochs
    # the callback's state round-trips (Lightning checkpoints it)
    again = StrategyCallback(name, **CASES[name])
    again.load_state_dict(copy.deepcopy(callback.state_dict()))
    assert again.strategy.trainable == callback.strategy.trainable and again.events == callback.events


def test_callback_refuses_an_optimizer_not_built_from_its_groups():
    callback = StrategyCallback("linear")

    class Plain(_Module):
        def configure_optimizers(self):
            return torch.optim.SGD(self.model.parameters(), lr=0.1)

    train, val = _data()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[callback])
    with pytest.raises(RuntimeError, match="callback.param_groups"):
        trainer.fit(Plain(callback), train, val)


def test_lora_through_the_callback_trains_only_adapters_and_head():
    """``lora`` under a real Trainer: ``prepare_model`` injects PEFT adapters; after 1 epoch only the
    adapters and the head moved, every pretrained weight is bit-identical."""
    # conv1: timm zero-initialises each block's bn2, so adapters on a random ResNet's conv2 get no gradient
    callback = StrategyCallback("lora", lora_rank=2, lora_targets="conv1")

    class LoraModule(_Module):
        def __init__(self):
            super().__init__(callback)
            self.model = callback.prepare_model(self.model)

    module = LoraModule()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    train, val = _data()
    L.Trainer(max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(module, train, val)
    after = module.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k]) and not k.endswith("num_batches_tracked")}
    assert moved and all(".lora_" in k or k.startswith("fc.") for k in moved), sorted(moved)[:5]
    assert any(".lora_B." in k for k in moved) and {"fc.weight", "fc.bias"} <= moved, sorted(moved)
