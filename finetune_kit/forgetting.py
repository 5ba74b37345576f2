"""Measures of forgetting, and the two cheap methods that control it: WiSE-FT and L2-SP.

Forgetting is measured three ways, each comparing a fine-tuned model with its pretrained start:

- *source retention* -- :func:`prediction_agreement`: top-1 agreement and mean KL divergence between
  the pretrained model's predictions on a reference set and those of the fine-tuned backbone under
  the pretrained (source) head;
- *feature drift* -- :func:`linear_cka`: linear centred kernel alignment (Kornblith et al., ICML
  2019, Eq. 2 with a linear kernel) between penultimate features before and after;
- *parameter drift* -- :func:`relative_drift`: ``||w - w0|| / ||w0||`` per layer group.

Control:

- :func:`interpolate_weights` -- WiSE-FT (Wortsman et al., CVPR 2022, Eq. 1): the weight-space
  ensemble ``theta(alpha) = (1 - alpha) * theta_0 + alpha * theta_ft``;
- :class:`L2SP` -- the L2-SP penalty (Li, Grandvalet & Davoine, ICML 2018, Eq. 3):
  ``alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_new||^2`` over the pretrained parameters ``S`` and
  the new ones (the head).

Every function works on any ``nn.Module`` and plain tensors; nothing here knows a task.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from finetune_kit.layer_groups import LayerGroups

__all__ = ["linear_cka", "prediction_agreement", "relative_drift", "interpolate_weights", "L2SP"]


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between two representations of the same ``N`` examples (Kornblith et al. 2019).

    ``CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)`` on column-centred ``X`` and ``Y``
    (the linear-kernel form of their Eq. 2), computed in float64. 1.0 for identical
    representations, invariant to orthogonal transforms and isotropic scaling of either side.

    Args:
        x: ``[N, D1]`` features (e.g. penultimate features of the pretrained model).
        y: ``[N, D2]`` features of the same examples (e.g. of the fine-tuned model).

    Returns:
        CKA in [0, 1].

    Raises:
        ValueError: ``x`` and ``y`` are not 2-D with the same number of rows, or ``N < 2``, or a
            representation is constant (zero variance: CKA undefined).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs [N, D] features of the same N examples, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if x.shape[0] < 2:
        raise ValueError("linear_cka needs at least 2 examples")
    x = x.detach().double()
    y = y.detach().double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    norm_x, norm_y = torch.linalg.matrix_norm(x.T @ x), torch.linalg.matrix_norm(y.T @ y)
    if norm_x == 0 or norm_y == 0:
        raise ValueError("linear_cka: a representation is constant over the examples (zero variance)")
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2 / (norm_x * norm_y))


def prediction_agreement(reference_logits: Tensor, logits: Tensor) -> dict[str, float]:
    """Top-1 agreement and mean KL divergence of ``logits`` from ``reference_logits``.

    Args:
        reference_logits: ``[N, K]`` logits of the pretrained model (its source head, e.g. the
            1000 ImageNet classes).
        logits: ``[N, K]`` logits of the fine-tuned backbone under the same source head.

    Returns:
        ``{"top1_agreement": fraction in [0, 1] of examples whose arg-max class is the same,
        "kl": mean over examples of KL(p_reference || p) in nats}``.

    Raises:
        ValueError: shapes differ or are not ``[N, K]`` with ``N >= 1``.
    """
    if reference_logits.shape != logits.shape or reference_logits.ndim != 2 or not len(logits):
        raise ValueError(f"prediction_agreement needs two [N, K] logit tensors of one shape, got "
                         f"{tuple(reference_logits.shape)} and {tuple(logits.shape)}")
    ref = torch.log_softmax(reference_logits.detach().double(), dim=1)
    new = torch.log_softmax(logits.detach().double(), dim=1)
    kl = (ref.exp() * (ref - new)).sum(1).clamp_min(0.0).mean()
    agree = (reference_logits.argmax(1) == logits.argmax(1)).double().mean()
    return {"top1_agreement": float(agree), "kl": float(kl)}


def relative_drift(model: nn.Module, reference: Mapping[str, Tensor], groups: LayerGroups) -> dict[str, float]:
    """Relative L2 distance ``||w - w0|| / ||w0||`` of each layer group from the pretrained weights.

    Args:
        model: the fine-tuned model.
        reference: parameter name -> pretrained tensor (``model.state_dict()`` before training,
            e.g.); parameters absent from it or of another shape (a new head) are skipped.
        groups: the model's layer groups (:func:`finetune_kit.layer_groups.resolve_layer_groups`).

    Returns:
        group name -> relative drift (0.0 = unchanged), in group order (stem first, head last);
        a group none of whose parameters is in ``reference`` is left out; ``inf`` when
        ``||w0|| = 0`` and the weights moved.
    """
    params = dict(model.named_parameters())
    out: dict[str, float] = {}
    for group in groups:
        diff = base = 0.0
        found = False
        for name in group.param_names:
            w0 = reference.get(name)
            if w0 is None or w0.shape != params[name].shape:
                continue
            found = True
            w0 = w0.detach().to(device=params[name].device, dtype=torch.float64)
            diff += float((params[name].detach().double() - w0).pow(2).sum())
            base += float(w0.pow(2).sum())
        if found:
            out[group.name] = math.sqrt(diff / base) if base else (0.0 if diff == 0 else math.inf)
    return out


def interpolate_weights(theta_0: Mapping[str, Tensor], theta_ft: Mapping[str, Tensor],
                        alpha: float) -> dict[str, Tensor]:
    """WiSE-FT's weight-space ensemble (Wortsman et al. 2022, Eq. 1):
    ``theta(alpha) = (1 - alpha) * theta_0 + alpha * theta_ft``.

    Floating-point tensors (weights, and BatchNorm running means and variances) are interpolated;
    ``alpha = 0`` returns ``theta_0``'s values and ``alpha = 1`` ``theta_ft``'s exactly. Integer
    tensors (``num_batches_tracked``) are taken from ``theta_ft`` unless ``alpha = 0``.

    Args:
        theta_0: state dict of the zero-shot / linear-probed model (the pretrained backbone with
            the probed head, as in LP-FT).
        theta_ft: state dict of the fine-tuned model (same keys and shapes).
        alpha: mixing coefficient in [0, 1].

    Returns:
        A new state dict (tensors on ``theta_ft``'s devices).

    Raises:
        ValueError: ``alpha`` outside [0, 1]; the key sets or a tensor's shape differ.
    """
    if not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"WiSE-FT alpha {alpha} is outside [0, 1]: 0 is the probed pretrained model, 1 the "
                         "fine-tuned one")
    if set(theta_0) != set(theta_ft):
        missing = sorted(set(theta_0) ^ set(theta_ft))
        raise ValueError(f"WiSE-FT needs two state dicts of one architecture; keys differ: {', '.join(missing[:5])}")
    out: dict[str, Tensor] = {}
    for key, t1 in theta_ft.items():
        t0 = theta_0[key].to(t1.device)
        if t0.shape != t1.shape:
            raise ValueError(f"WiSE-FT: {key} has shape {tuple(t0.shape)} in theta_0 and {tuple(t1.shape)} in theta_ft")
        if alpha == 0:
            out[key] = t0.clone()
        elif alpha == 1 or not t1.is_floating_point():
            out[key] = t1.clone()
        else:
            out[key] = ((1.0 - alpha) * t0.double() + alpha * t1.double()).to(t1.dtype)
    return out


class L2SP:
    """The L2-SP regulariser (Li, Grandvalet & Davoine, ICML 2018, Eq. 3).

    ``Omega(w) = alpha/2 * sum_S ||w - w0||^2 + beta/2 * sum_new ||w||^2`` where ``S`` are the
    parameters that have a pretrained value ``w0`` (the backbone) and ``new`` the parameters that
    do not (the new head). Add ``penalty(model)`` to the loss before ``backward``; use it with plain
    (not decoupled) weight decay switched off for the backbone, as the paper does.

    Args:
        model: the model being fine-tuned; its current parameters are read at each call.
        reference: parameter name -> pretrained tensor; copied (detached) at construction.
        alpha: strength towards the pretrained weights (paper: 0.01-0.1), >= 0.
        beta: L2 strength on the new parameters (paper: 0.01), >= 0.
        new_params: names of the new parameters (default: those missing from ``reference`` or
            of another shape there).

    Raises:
        ValueError: a negative or non-finite ``alpha``/``beta``; a name in ``new_params`` that is
            not a parameter of ``model``.
    """

    def __init__(self, model: nn.Module, reference: Mapping[str, Tensor], alpha: float, beta: float = 0.0,
                 new_params: Iterable[str] | None = None) -> None:
        for label, value in (("alpha", alpha), ("beta", beta)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"L2-SP {label} {value} must be a finite number >= 0 (e.g. --l2-sp 0.01,0.01)")
        self.alpha, self.beta = float(alpha), float(beta)
        params = dict(model.named_parameters())
        if new_params is None:
            new = {n for n, p in params.items() if n not in reference or reference[n].shape != p.shape}
        else:
            new = set(new_params)
            unknown = sorted(new - set(params))
            if unknown:
                raise ValueError(f"L2-SP new_params {', '.join(unknown[:3])} are not parameters of the model")
        self.new_params = sorted(new)
        self.reference = {n: reference[n].detach().clone().to(p.device) for n, p in params.items() if n not in new}

    def terms(self, model: nn.Module) -> dict[str, Tensor]:
        """``{"sp": alpha/2 * ||w_S - w0||^2, "new": beta/2 * ||w_new||^2}`` as scalar tensors with
        gradients (frozen parameters contribute a constant)."""
        params = dict(model.named_parameters())
        zero = next(iter(params.values())).new_zeros(())
        sp = sum(((params[n] - w0).pow(2).sum() for n, w0 in self.reference.items()), zero)
        new = sum((params[n].pow(2).sum() for n in self.new_params), zero)
        return {"sp": 0.5 * self.alpha * sp, "new": 0.5 * self.beta * new}

    def penalty(self, model: nn.Module) -> Tensor:
        """The scalar penalty ``Omega(w)`` (a tensor with gradients) to add to the loss."""
        t = self.terms(model)
        return t["sp"] + t["new"]
