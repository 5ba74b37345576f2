"""Balanced R-D weight update against a hand-computed two-step example (finetune_kit.tasks.compression.objectives.balanced)."""
from __future__ import annotations

import math

import pytest
import torch

from finetune_kit.tasks.compression.objectives.balanced import BalancedRD, HierarchicalBalancedRD, scale_of_task


def _adam(g, m, v, t, lr=0.025, b1=0.9, b2=0.999, eps=1e-8):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return lr * (m / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps), m, v


def test_two_step_hand_computed():
    bal = BalancedRD(["distortion", "rate"], gamma=0.001, w_lr=0.025, floors=-1.0, eps=0.0)
    # step 1: w = 0, z = (.5, .5); D = l + 1 = (3, 1.5); c = .5/3 + .5/1.5 = 0.5
    loss = bal.combine(torch.tensor([2.0, 0.5]))
    assert float(loss) == pytest.approx(math.log(3) + math.log(1.5), rel=1e-6)  # (.5 ln3 + .5 ln1.5) / .5
    assert bal.last_record["contrib/distortion"] == pytest.approx(1 / 3)  # (.5/3)/.5
    # after the model step the same batch gives (1.0, 0.45): delta = (ln 3/2, ln 1.5/1.45)
    d1, d2 = math.log(3 / 2), math.log(1.5 / 1.45)
    g1 = 0.25 * (d1 - d2)  # softmax Jacobian at z=(.5,.5): [[.25,-.25],[-.25,.25]]; gamma*w = 0
    grad = bal.update(torch.tensor([1.0, 0.45]))
    assert grad.tolist() == pytest.approx([g1, -g1], rel=1e-5)
    step1, m1, v1 = _adam(g1, 0.0, 0.0, 1)
    assert step1 == pytest.approx(0.025, rel=1e-5)  # first Adam step is lr * sign(g)
    w = [-step1, step1]
    assert bal.w.tolist() == pytest.approx(w, rel=1e-5)
    # step 2: z = softmax(w)
    z1 = 1 / (1 + math.exp(w[1] - w[0]))
    z2 = 1 - z1
    assert bal.weights().tolist() == pytest.approx([z1, z2], rel=1e-5)
    bal.combine(torch.tensor([1.0, 0.45]))
    bal.update(torch.tensor([0.9, 0.44]))
    e1, e2 = math.log(2 / 1.9), math.log(1.45 / 1.44)
    g2 = z1 * z2 * (e1 - e2) + 0.001 * w[0]  # (J^T delta)_1 = z1 (e1 - (z1 e1 + z2 e2)) = z1 z2 (e1 - e2)
    step2, _, _ = _adam(g2, m1, v1, 2)
    assert bal.w.tolist() == pytest.approx([w[0] - step2, -(w[0] - step2)], rel=1e-4)
    assert bal.w[0] < 0  # distortion improved faster: its weight went down


def test_state_round_trip_continues_trajectory():
    a = BalancedRD(["d", "r"])
    for l0, l1 in [((2.0, 0.5), (1.5, 0.49)), ((1.5, 0.49), (1.4, 0.47))]:
        a.combine(torch.tensor(l0))
        a.update(torch.tensor(l1))
    b = BalancedRD(["d", "r"])
    b.load_state_dict(a.state_dict())
    for x in (a, b):
        x.combine(torch.tensor([1.4, 0.47]))
        x.update(torch.tensor([1.2, 0.46]))
    assert torch.equal(a.w, b.w)
    with pytest.raises(ValueError, match="tasks"):
        BalancedRD(["x", "y"]).load_state_dict(a.state_dict())


def test_errors():
    with pytest.raises(ValueError, match="at least 2"):
        BalancedRD(["only"])
    bal = BalancedRD(["d", "r"], floors=0.0)
    with pytest.raises(ValueError, match="floors"):
        bal.combine(torch.tensor([-0.5, 1.0]))
    with pytest.raises(RuntimeError, match="combine"):
        BalancedRD(["d", "r"]).update(torch.tensor([1.0, 1.0]))


def test_hierarchical_gammas_modulation_and_contributions():
    tasks = ["dist_coarse", "dist_mid", "dist_fine", "rate_s1", "rate_s2", "rate_s3", "rate_z"]
    assert [scale_of_task(t) for t in tasks] == ["s1", "s2", "s3", "s1", "s2", "s3", "s1"]
    h = HierarchicalBalancedRD(tasks, scale_modulation={"s3": 2.0})
    assert h.gamma.tolist() == pytest.approx([0.008, 0.006, 0.004, 0.008, 0.006, 0.004, 0.008])
    losses = torch.tensor([1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01], requires_grad=True)
    loss = h.combine(losses)
    loss.backward()
    eff = losses.grad
    assert float(eff.sum()) == pytest.approx(1.0, rel=1e-6)  # effective weights sum to 1
    assert eff[2] == pytest.approx(2 * eff[0])  # s3 modulated x2 (same D)
    assert sum(h.last_record[f"scale_contrib/{s}"] for s in ("s1", "s2", "s3")) == pytest.approx(1.0)
    h.set_gamma({"s1": 0.001})
    assert h.gamma[0] == pytest.approx(0.001) and h.gamma[6] == pytest.approx(0.001)
    h.update(losses.detach() * 0.9)
    assert "gamma/rate_z" in h.last_record and "delta/dist_fine" in h.last_record
