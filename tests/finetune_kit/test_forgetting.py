"""Forgetting measures (CKA, agreement/KL, drift), WiSE-FT interpolation and L2-SP, on real weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

from finetune_kit.forgetting import L2SP, interpolate_weights, linear_cka, prediction_agreement, relative_drift
from finetune_kit.layer_groups import resolve_layer_groups


def _hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA from its definition with Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = XX^T."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l = x.double() @ x.double().T, y.double() @ y.double().T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h)

    return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))


def test_linear_cka_matches_the_gram_definition_and_its_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 12, generator=g)
    y = x @ torch.randn(12, 7, generator=g) + 0.5 * torch.randn(60, 7, generator=g)
    assert linear_cka(x, y) == pytest.approx(_hsic_cka(x, y), rel=1e-9)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    assert linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-9)  # orthogonal, scale, shift
    independent = linear_cka(torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g))
    assert independent < 0.02
    with pytest.raises(ValueError, match="same N"):
        linear_cka(x, y[:10])
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.ones(5, 3), x[:5])


def test_prediction_agreement_counts_argmax_matches_and_kl_in_nats():
    ref = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    same = prediction_agreement(ref, ref)
    assert same == {"top1_agreement": 1.0, "kl": pytest.approx(0.0, abs=1e-12)}
    new = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    out = prediction_agreement(ref, new)
    assert out["top1_agreement"] == pytest.approx(2 / 3)  # row 3: argmax of a tie is 0, as ref's
    p = torch.softmax(ref.double(), 1)
    q = torch.softmax(new.double(), 1)
    assert out["kl"] == pytest.approx(float((p * (p / q).log()).sum(1).mean()), rel=1e-9)
    with pytest.raises(ValueError, match="one shape"):
        prediction_agreement(ref, new[:2])


@pytest.fixture(scope="module")
def mobilenet(mobilenetv2_weights):
    """The shared ImageNet MobileNetV2 with its 1000-class head, in eval mode."""
    model = timm.create_model("mobilenetv2_100", pretrained=True, num_classes=1000,
                              pretrained_cfg_overlay=dict(file=str(mobilenetv2_weights)))
    return model.eval()


def test_drift_is_zero_for_the_pretrained_model_and_exact_for_a_known_change(mobilenet):
    model = mobilenet
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    groups = resolve_layer_groups(model)
    assert set(relative_drift(model, reference, groups).values()) == {0.0}
    stem = groups[0]
    with torch.no_grad():
        for name, p in zip(stem.param_names, stem.params):
            p.mul_(1.1)
    try:
        drift = relative_drift(model, reference, groups)
        assert drift[stem.name] == pytest.approx(0.1, rel=1e-6)
        assert all(v == 0.0 for k, v in drift.items() if k != stem.name)
        assert list(drift) == groups.names  # stem first, head last
    finally:
        model.load_state_dict(reference)


def test_wise_ft_endpoints_reproduce_both_models_exactly_on_real_weights(mobilenet, kodak_dir):
    from PIL import Image

    theta_0 = {k: v.clone() for k, v in mobilenet.state_dict().items()}
    theta_ft = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v + 3 for k, v in theta_0.items()}
    image = Image.open(sorted(kodak_dir.glob("*.png"))[0]).convert("RGB").resize((224, 224))
    x = (torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float()[None] / 255 - 0.45) / 0.225
    model = timm.create_model("mobilenetv2_100", num_classes=1000).eval()
    logits = {}
    for name, state in (("0", theta_0), ("ft", theta_ft)):
        model.load_state_dict(state)
        logits[name] = model(x)
    for alpha, want in ((0.0, "0"), (1.0, "ft")):
        model.load_state_dict(interpolate_weights(theta_0, theta_ft, alpha))
        assert torch.equal(model(x), logits[want])
    half = interpolate_weights(theta_0, theta_ft, 0.5)
    key = "conv_stem.weight"
    assert torch.allclose(half[key], (theta_0[key] + theta_ft[key]) / 2, atol=1e-7)
    assert torch.equal(half["bn1.num_batches_tracked"], theta_ft["bn1.num_batches_tracked"])
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        interpolate_weights(theta_0, theta_ft, 1.5)
    with pytest.raises(ValueError, match="keys differ"):
        interpolate_weights(theta_0, {k: v for k, v in theta_ft.items() if k != key}, 0.5)


def test_l2sp_penalty_is_the_papers_form_and_its_gradient_pulls_back_to_w0():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    reference = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("0.")}  # "1." is new
    reg = L2SP(model, reference, alpha=0.1, beta=0.01)
    assert reg.new_params == ["1.bias", "1.weight"]
    assert float(reg.penalty(model)) == pytest.approx(0.5 * 0.01 * sum(float(p.pow(2).sum()) for p in model[1].parameters()))
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.zero_grad()
    reg.penalty(model).backward()
    assert torch.allclose(model[0].weight.grad, torch.full_like(model[0].weight, 0.1))  # alpha * (w - w0)
    assert torch.allclose(model[1].weight.grad, 0.01 * model[1].weight.detach())        # beta * w
    assert float(reg.terms(model)["sp"]) == pytest.approx(0.5 * 0.1 * model[0].weight.numel())
    for bad in (-1.0, math.inf):
        with pytest.raises(ValueError, match="finite number >= 0"):
            L2SP(model, reference, alpha=bad)
    with pytest.raises(ValueError, match="not parameters"):
        L2SP(model, reference, alpha=1.0, new_params=["nope"])
