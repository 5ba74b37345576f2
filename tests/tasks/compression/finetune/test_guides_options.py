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
    """hpcm-guides and hierarchical-guides are the guides' formulas at the guides' epochs (3000-epoch run)."""
    g = {e: gamma_at("hpcm-guides", e, epochs=3000, gamma=0.006) for e in (0, 150, 300, 1150, 1999, 2000, 2500, 3000)}
    assert g[0] == pytest.approx(0.006) and g[150] == pytest.approx(0.006 * 1.1)
    assert g[300] == pytest.approx(0.0072) and g[1150] == pytest.approx(0.0072 * 0.75)
    assert g[1999] == pytest.approx(0.0036, rel=1e-3)  # end of the scaling phase
    assert g[2000] == pytest.approx(0.0042) and g[2500] == pytest.approx(0.0042 * 0.85)  # the guide's jump, kept
    assert g[3000] == pytest.approx(0.00294)
    # the Phase 3 guide, per scale from 0.008 / 0.006 / 0.004
    hg = {e: scale_gammas_at("hierarchical-guides", e, epochs=3000) for e in (0, 299, 300, 900, 1500, 2000, 2500, 2999)}
    for e in (0, 299):
        assert hg[e] == pytest.approx({"s1": 0.0096, "s2": 0.0048, "s3": 0.0024})
    assert hg[900] == pytest.approx({"s1": 0.0088, "s2": 0.0054, "s3": 0.0032})  # s1 falls, s2 and s3 rise
    assert hg[1500] == pytest.approx({"s1": 0.008, "s2": 0.006, "s3": 0.004})
    assert hg[2000] == pytest.approx({"s1": 0.0068, "s2": 0.0054, "s3": 0.0046})  # converging
    for e in (2500, 2999):
        assert hg[e] == pytest.approx({"s1": 0.0056, "s2": 0.0048, "s3": 0.0052})  # s3 x1.3, s1 x0.7, s2 x0.8
    spread = [max(v.values()) - min(v.values()) for v in (hg[0], hg[1500], hg[2500])]
    assert spread == sorted(spread, reverse=True)
    # ours stay ours: hpcm holds gamma in its first phase, hierarchical starts at each scale's start gamma
    assert gamma_at("hpcm", 0, epochs=3000, gamma=0.006) == gamma_at("hpcm", 500, epochs=3000, gamma=0.006) == 0.006
    assert scale_gammas_at("hierarchical", 0, epochs=3000) == pytest.approx({"s1": 0.008, "s2": 0.006, "s3": 0.004})


def test_step_gamma_decay_in_python_and_as_an_option(photos):
    """The guides' AdaptiveGammaScheduler(strategy='step', step_epochs=[1000, 2000], gamma_decay=0.5) and
    --gamma-decay 0.3 on the command line reach the balanced optimizer."""
    from finetune_kit.tasks.compression.objectives.objective import RunObjective

    g = [gamma_at("step", e, epochs=3000, gamma=0.004, gamma_final=1e-6, step_epochs=[1000, 2000], gamma_decay=0.3)
         for e in (999, 1000, 2000)]
    assert g == pytest.approx([0.004, 0.0012, 0.00036])
    with pytest.raises(ValueError, match="gamma_decay=0"):
        gamma_at("step", 1, epochs=10, gamma_decay=0)
    cfg = FinetuneConfig(data=photos, use_balanced=True, gamma_strategy="step", gamma=0.004, gamma_final=1e-6,
                         step_epochs="1000 2000", gamma_decay=0.3)
    assert FinetuneConfig(data=photos).balanced.gamma_decay == 0.5
    obj = RunObjective(0.013, True, cfg.hierarchical, cfg.balanced, epochs=3000)
    assert obj.set_epoch_gamma(2000, [], {}) == pytest.approx({"gamma": 0.00036})
    with pytest.warns(OptionWarning, match="--gamma_decay only acts on --gamma_strategy step"):
        FinetuneConfig(data=photos, use_balanced=True, gamma_decay=0.3)


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
    assert (run / "training_curves.png").stat().st_size > 10_000  # compress train draws its curves too
    # a gamma option without --use_balanced: one WARNING line (as in compress finetune), the run goes on
    bad = CliRunner().invoke(app, ["compress", "train", "--data", str(few_photos), "--gamma_strategy", "step",
                                   "--epochs", "1", "--steps-per-epoch", "1", "-b", "2", "--patch-size", "64",
                                   "--val-fraction", "0.2", "--wandb", "disabled", "--no-progress",
                                   "--output-dir", str(tmp_path / "w")])
    assert bad.exit_code == 0 and "WARNING: --gamma_strategy only act on the balanced optimizer" in bad.output


def test_workflow_2_as_documented_gives_no_warning(photos):
    """README/docs workflow 2 carries --scale_modulation guides, so it validates without a WARNING line;
    the same line without it warns (the hierarchical loss alone would change nothing)."""
    wf2 = dict(data=photos, epochs=500, use_hierarchical=True, scale_early_stopping=True, early_stopping_patience=50,
               progressive_unfreeze=True, unfreeze_schedule="100,200")
    with warnings.catch_warnings():
        warnings.simplefilter("error", OptionWarning)
        FinetuneConfig(**wf2, scale_modulation="guides")
    with pytest.warns(OptionWarning, match="applying --scale_modulation guides"):
        FinetuneConfig(**wf2)
