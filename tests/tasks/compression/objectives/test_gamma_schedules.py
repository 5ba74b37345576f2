"""Gamma schedules at key epochs (finetune_kit.tasks.compression.objectives.gamma_schedules)."""
from __future__ import annotations

import pytest

from finetune_kit.tasks.compression.objectives.gamma_schedules import gamma_at, scale_gammas_at

E, G0, G1 = 101, 0.01, 0.001


@pytest.mark.parametrize("strategy,epoch,expected", [
    ("constant", 50, G0),
    ("linear", 0, G0), ("linear", 50, (G0 + G1) / 2), ("linear", 100, G1), ("linear", 500, G1),
    ("cosine", 0, G0), ("cosine", 50, (G0 + G1) / 2), ("cosine", 25, G1 + (G0 - G1) * (1 + 2 ** -0.5) / 2),
    ("cosine", 100, G1),
    ("step", 0, G0), ("step", 24, G0), ("step", 25, G0 / 2), ("step", 50, G0 / 4), ("step", 100, G1),
    ("hpcm", 0, G0), ("hpcm", 19, G0), ("hpcm", 20, G0), ("hpcm", 71, G1), ("hpcm", 100, G1),
])
def test_values(strategy, epoch, expected):
    assert gamma_at(strategy, epoch, epochs=E, gamma=G0, gamma_final=G1) == pytest.approx(expected)


def test_hpcm_middle_phase_decays():
    vals = [gamma_at("hpcm", e, epochs=E, gamma=G0, gamma_final=G1) for e in range(20, 72)]
    assert all(a >= b for a, b in zip(vals, vals[1:])) and vals[0] == pytest.approx(G0) and vals[-1] == pytest.approx(G1)
    assert gamma_at("hpcm", 45, epochs=E, gamma=G0, gamma_final=G1) == pytest.approx((G0 + G1) / 2, rel=0.05)


def test_adaptive_plateau():
    improving = [10 - i for i in range(10)]
    assert gamma_at("adaptive", 10, epochs=E, gamma=G0, gamma_final=G1, history=improving, window=3) == G0
    flat = [5.0, 4.0, 3.0] + [3.0] * 10  # plateau from epoch 3 on
    # after k=6 finished epochs the last 3 (3,3,3) do not beat best-before (3) -> halve; next check at k=9, 12
    assert gamma_at("adaptive", 5, epochs=E, gamma=G0, gamma_final=G1, history=flat, window=3) == G0
    assert gamma_at("adaptive", 6, epochs=E, gamma=G0, gamma_final=G1, history=flat, window=3) == G0 / 2
    assert gamma_at("adaptive", 9, epochs=E, gamma=G0, gamma_final=G1, history=flat, window=3) == G0 / 4
    assert gamma_at("adaptive", 13, epochs=E, gamma=G0, gamma_final=G1, history=flat, window=3) == G0 / 8
    assert gamma_at("adaptive", 60, epochs=E, gamma=G0, gamma_final=G1, history=flat * 5, window=3) == G1
    # history beyond the asked epoch is ignored (pure function of finished epochs)
    assert gamma_at("adaptive", 5, epochs=E, gamma=G0, gamma_final=G1, history=flat + [0.0], window=3) == G0


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown gamma strategy"):
        gamma_at("nope", 0, epochs=10)
    with pytest.raises(ValueError, match="per-scale"):
        scale_gammas_at("nope", 0, epochs=10)


def test_per_scale():
    fixed = scale_gammas_at("fixed", 50, epochs=E)
    assert fixed == pytest.approx({"s1": 0.008, "s2": 0.006, "s3": 0.004})
    lin = scale_gammas_at("linear", 100, epochs=E, final_ratio=0.1)
    assert lin == pytest.approx({"s1": 0.0008, "s2": 0.0006, "s3": 0.0004})
    cos = scale_gammas_at("cosine", 50, epochs=E, final_ratio=0.1)
    assert cos["s1"] == pytest.approx(0.0044)
    hier = scale_gammas_at("hierarchical", 34, epochs=E, final_ratio=0.1)
    assert hier["s1"] == pytest.approx(0.0008)  # s1 done after the first third (34 epochs)
    assert 0.0006 < hier["s2"] < 0.006 and 0.0004 < hier["s3"] < 0.004
    assert scale_gammas_at("hierarchical", 100, epochs=E)["s3"] == pytest.approx(0.0004)
    ada = scale_gammas_at("adaptive", 6, epochs=E, histories={"s1": [3.0] * 6, "s2": [6, 5, 4, 3, 2, 1]}, window=3)
    assert ada["s1"] == pytest.approx(0.004) and ada["s2"] == pytest.approx(0.006) and ada["s3"] == 0.004


def test_plot_draws_every_schedule_and_the_scripts_are_thin(tmp_path, capsys):
    import runpy
    import sys
    from pathlib import Path

    from finetune_kit.tasks.compression.objectives.gamma_plots import gamma_curves, plot_gamma_schedules
    from finetune_kit.tasks.compression.objectives.gamma_schedules import GAMMA_STRATEGIES, SCALE_GAMMA_STRATEGIES

    curves = gamma_curves(60, 0.001, 0.0001)
    plot = plot_gamma_schedules(tmp_path / "g" / "gammas.png", curves)
    assert plot.path.stat().st_size > 10_000
    assert plot.single_labels == list(GAMMA_STRATEGIES)
    assert plot.scale_labels == [f"{s} {sc}" for s in SCALE_GAMMA_STRATEGIES for sc in ("s1", "s2", "s3")]
    # the adaptive curves react to the synthetic plateau (not constant), per scale at different epochs
    assert curves.single["adaptive"][0] == 0.001 and curves.single["adaptive"][-1] < 0.001
    drops = {sc: next(e for e, v in enumerate(curves.per_scale["adaptive"][sc]) if v < v0)
             for sc, v0 in (("s1", 0.008), ("s2", 0.006), ("s3", 0.004))}
    assert drops["s1"] < drops["s2"] < drops["s3"]
    repo = Path(__file__).resolve().parents[4]
    for script, out_flag in (("plot_gamma_schedules.py", "--out"), ("test_gamma_scheduler.py", "--output")):
        out = tmp_path / f"{script}.png"
        argv, sys.argv = sys.argv, [script, "--epochs", "30", out_flag, str(out)]
        try:
            runpy.run_path(str(repo / "scripts" / script), run_name="__main__")
        except SystemExit as exc:
            assert exc.code in (0, None)
        finally:
            sys.argv = argv
        assert out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "adaptive:s3" in printed and "hpcm" in printed
