"""The guides' options as they wrote them: hierarchical loss never a silent no-op, --step_epochs,
--adaptive_window/--adaptive_threshold, the guides' gamma schedules, balanced R-D in compress train."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from finetune_kit.tasks.compression.run.config import FinetuneConfig, OptionWarning
from finetune_kit.tasks.compression.objectives.gamma_schedules import gamma_at, scale_gammas_at


def _grads(objective, model, x) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same quantization noise for both objectives
    loss, _ = objective.compute(model, x)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_hierarchical_without_balanced_changes_the_gradients(photos):
    from finetune_kit.tasks.compression.data import list_images, load_rgb, to_tensor
    from finetune_kit.tasks.compression.objectives.objective import RunObjective

    def objective(hier_section):
        return RunObjective(0.013, True, hier_section, hier_cfg.balanced, epochs=10)
    from finetune_kit.tasks.compression.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("hpcm-tiny").train()
    x = to_tensor(load_rgb(list_images(photos)[0]))[:, :64, :64].unsqueeze(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hier_cfg = FinetuneConfig(data=photos, use_hierarchical=True)  # default: --scale_modulation guides
    assert any("scale_modulation guides" in str(w.message) for w in caught if w.category is OptionWarning)
    plain = _grads(objective(FinetuneConfig(data=photos).hierarchical), model, x)
    hier_obj = objective(hier_cfg.hierarchical)
    assert hier_obj.modulation == {"s1": 1.2, "s2": 1.05, "s3": 0.75}
    hier = _grads(hier_obj, model, x)
    cos = float(torch.nn.functional.cosine_similarity(plain, hier, dim=0))
    assert cos < 0.9999, "per-scale weights must change the gradient's direction, not only its length"
    # uniform modulation: the tasks sum to the plain loss, so the gradients are the plain ones
    same = hier_cfg.hierarchical.model_copy(update={"scale_modulation": "uniform"})
    assert torch.allclose(_grads(objective(same), model, x), plain, rtol=1e-4, atol=1e-6)


def test_hierarchical_with_equal_weights_and_no_balancing_is_an_error(photos):
    for mod in ("uniform", "s1:2,s2:2,s3:2"):
        with pytest.raises(ValueError, match="changes nothing.*--use_balanced.*--scale_modulation guides"):
            FinetuneConfig(data=photos, use_hierarchical=True, scale_modulation=mod)
    FinetuneConfig(data=photos, use_hierarchical=True, use_balanced=True, scale_modulation="uniform")  # fine


def test_step_epochs_decay_at_exactly_the_given_epochs():
    g = [gamma_at("step", e, epochs=3000, gamma=0.004, gamma_final=1e-5, step_epochs=[1000, 2000]) for e in range(3000)]
    changes = [e for e in range(1, 3000) if g[e] != g[e - 1]]
    assert changes == [1000, 2000]
    assert (g[999], g[1000], g[2000]) == pytest.approx((0.004, 0.002, 0.001))


def test_guides_gamma_schedules():
    rise = [gamma_at("hpcm-guides", e, epochs=100, gamma=0.003, gamma_final=0.001) for e in range(100)]
    assert rise[0] == pytest.approx(0.001) and rise[10] == pytest.approx(0.003)
    assert all(b > a for a, b in zip(rise[:10], rise[1:11]))  # the warm-up rise
    assert gamma_at("hpcm", 0, epochs=100, gamma=0.003, gamma_final=0.001) == pytest.approx(0.003)  # ours: none
    assert rise[25:] == [gamma_at("hpcm", e, epochs=100, gamma=0.003, gamma_final=0.001) for e in range(25, 100)]
    low = {s: g * 0.1 for s, g in {"s1": 0.008, "s2": 0.006, "s3": 0.004}.items()}
    for epoch, emphasised in ((0, "s1"), (50, "s2"), (99, "s3")):
        gs = scale_gammas_at("hierarchical-guides", epoch, epochs=100, final_ratio=0.1)
        assert [s for s in gs if gs[s] == pytest.approx(low[s])] == [emphasised]


def test_adaptive_window_and_threshold_are_the_gamma_options(photos):
    cfg = FinetuneConfig(data=photos, use_balanced=True, gamma_strategy="adaptive", adaptive_window=3,
                         adaptive_threshold=0.01)
    assert (cfg.balanced.gamma_window, cfg.balanced.gamma_threshold) == (3, 0.01)


def test_compress_train_balanced_with_step_epochs_as_the_guides_write_them(few_photos, tmp_path):
    """compress train --use_balanced --gamma_strategy step --step_epochs 1 2 (space separated): the
    gamma of each epoch's record halves exactly at epochs 1 and 2 (0-based), task weights are logged."""
    from typer.testing import CliRunner

    from finetune_kit.tasks.cli import app

    res = CliRunner().invoke(app, ["compress", "train", "--data", str(few_photos), "--epochs", "3", "--steps-per-epoch",
                                   "1", "-b", "2", "--patch-size", "64", "--val-fraction", "0.2", "--wandb", "disabled",
                                   "--no-progress", "--threads", "1", "--output-dir", str(tmp_path), "--use_balanced",
                                   "--gamma_strategy", "step", "--gamma", "0.004", "--gamma_final", "0.0001",
                                   "--step_epochs", "1", "2"])
    assert res.exit_code == 0, res.output
    run = next(tmp_path.iterdir())
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["gamma"] for r in recs] == pytest.approx([0.004, 0.002, 0.001])
    assert all(abs(r["task_weight/distortion"] + r["task_weight/rate"] - 1) < 1e-6 for r in recs)
    assert recs[0]["task_weight/distortion"] == 0.5 and recs[-1]["task_weight/distortion"] != 0.5
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["finetune"]["balanced"]["steps"] == 3  # the balanced state rides in the checkpoint (resume)
    # a gamma option without --use_balanced: one WARNING line (as in compress finetune), the run goes on
    bad = CliRunner().invoke(app, ["compress", "train", "--data", str(few_photos), "--gamma_strategy", "step",
                                   "--epochs", "1", "--steps-per-epoch", "1", "-b", "2", "--patch-size", "64",
                                   "--val-fraction", "0.2", "--wandb", "disabled", "--no-progress",
                                   "--output-dir", str(tmp_path / "w")])
    assert bad.exit_code == 0 and "WARNING: --gamma_strategy only act on the balanced optimizer" in bad.output
