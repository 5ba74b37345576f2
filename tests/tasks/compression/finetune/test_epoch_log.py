"""Unfreeze events, per-group learning rates and task weights in metrics.jsonl, drawn on training_curves.png."""
from __future__ import annotations

import json

from finetune_kit.tasks.compression.run.config import FinetuneConfig
from finetune_kit.tasks.compression.run.loop import run as finetune


def test_metrics_record_unfreezing_lrs_and_task_weights(tiny_base_checkpoint, few_photos, tmp_path):
    cfg = FinetuneConfig(checkpoint=tiny_base_checkpoint, data=few_photos, epochs=3, steps_per_epoch=1, batch_size=2,
                         patch_size=64, val_fraction=0.2, wandb="disabled", progress=False, threads=1,
                         output_dir=tmp_path, learning_rate=1e-4, progressive_unfreeze=True, unfreeze_schedule="1,2",
                         unfreeze_warmup_epochs=0, use_balanced=True, gamma_strategy="linear")
    final = finetune(cfg)
    run = final["run_dir"]
    recs = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    assert [r["unfrozen"] for r in recs] == [[], ["h_a", "h_s", "entropy_bottleneck"], ["context"]]
    assert recs[1]["unfreeze_events"][0]["epoch"] == 2 and recs[1]["unfreeze_stage"] == 1
    assert recs[0]["lr/g_a"] > 0 and recs[0]["lr/h_a"] == 0 and recs[0]["lr/context"] == 0
    assert recs[1]["lr/h_a"] > 0 and recs[1]["lr/context"] == 0 and recs[2]["lr/context"] > 0
    for r in recs:
        assert abs(r["task_weight/distortion"] + r["task_weight/rate"] - 1) < 1e-6
        assert abs(r["task_contrib/distortion"] + r["task_contrib/rate"] - 1) < 1e-6
    png = tmp_path / run.split("/")[-1] / "training_curves.png"
    assert png.is_file() and png.stat().st_size > 10_000
