"""Balanced rate-distortion optimization: learned task weights for rate and distortion.

Source: Zhang, Duan, Huang, Zhu, "Balanced Rate-Distortion Optimization in Learned Image
Compression", CVPR 2025 (arXiv 2502.20161), which adapts FAMO (Liu, Liang, Chen, Liu, "FAMO:
Fast Adaptive Multitask Optimization", NeurIPS 2023) to the two R-D tasks. Algorithm (one
training step, ``n`` tasks with losses ``l_i``, logits ``w`` (zeros at start), floors ``m_i``)::

    z   = softmax(w)                              task weights, sum to 1
    D_i = l_i - m_i + eps                         m_i = -1 in the reference, so D_i = l_i + 1
    c   = sum_i a_i z_i / D_i          (detached) a_i = scale modulation weight (1 for two tasks)
    L   = sum_i a_i z_i log(D_i) / c              back-propagated into the model
    ... model step (clip 1.0) ...
    l'_i  = losses of the same batch again, no grad
    delta = log D_i(before) - log D_i(after)      how much each task improved (log scale)
    g_w   = J_softmax(w)^T delta + gamma * w      (J = diag(z) - z z^T)
    w    <- Adam(w, g_w, lr = w_lr)

A task that improves fast gets its weight lowered; ``gamma`` pulls the logits back to equal
weights (it is the L2 decay of FAMO's weight optimizer). The gradient of ``L`` is
``sum_i (a_i z_i / D_i / c) grad l_i``: the *effective weights* ``a_i z_i / (D_i c)`` sum to 1 and
are what the logs call each task's contribution.

Reference defaults: ``gamma = 0.001`` (0.003 on their ELIC run, "tune per model"),
``w_lr = 0.025``, gradient-norm clip 1.0 on the model. :class:`HierarchicalBalancedRD` is the
per-scale variant (tasks of the s1/s2/s3 coding scales and z): a gamma per scale (defaults
0.008 / 0.006 / 0.004; z shares s1's, both being 1/64-resolution) and a modulation weight
``a`` per scale (default 1, i.e. the plain method). Units: task losses are whatever the caller
gives (here ``lambda * 255^2 * MSE`` terms and bpp); steps are optimizer steps.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import Tensor

from finetune_kit.distributed import all_reduce_mean

__all__ = ["BalancedRD", "HierarchicalBalancedRD", "DEFAULT_SCALE_GAMMAS", "scale_of_task"]

#: per-scale gamma defaults of the hierarchical variant (coarse scales regularized harder)
DEFAULT_SCALE_GAMMAS = {"s1": 0.008, "s2": 0.006, "s3": 0.004}


class BalancedRD:
    """FAMO-style balanced optimizer of ``n`` task weights (two tasks: distortion, rate).

    Args:
        task_names: names of the tasks, e.g. ``("distortion", "rate")``.
        gamma: logit decay, one float or one per task. Default 0.001 (reference).
        w_lr: Adam learning rate of the logits. Default 0.025 (reference).
        floors: ``m_i``, one float or one per task. Default -1 (reference: ``D_i = l_i + 1``).
        eps: added to ``D_i``. Default 1e-8.
        modulation: ``a_i``, one per task (default all 1).

    Raises:
        ValueError: fewer than 2 tasks, lengths that do not match the tasks, negative gamma,
            non-positive ``w_lr`` or modulation.
    """

    def __init__(self, task_names: Sequence[str], *, gamma: float | Sequence[float] = 0.001, w_lr: float = 0.025,
                 floors: float | Sequence[float] = -1.0, eps: float = 1e-8,
                 modulation: Sequence[float] | None = None) -> None:
        self.task_names = list(task_names)
        n = len(self.task_names)
        if n < 2:
            raise ValueError(f"balanced R-D needs at least 2 tasks, got {self.task_names}")
        if w_lr <= 0:
            raise ValueError(f"w_lr={w_lr}: must be > 0 (reference 0.025)")
        self.w = torch.zeros(n, requires_grad=True)
        self.w_lr = float(w_lr)
        self.optimizer = torch.optim.Adam([self.w], lr=self.w_lr)
        self.floors = self._vector(floors, "floors")
        self.modulation = self._vector(1.0 if modulation is None else modulation, "modulation")
        if (self.modulation <= 0).any():
            raise ValueError(f"modulation weights {self.modulation.tolist()} must all be > 0")
        self.eps = float(eps)
        self.gamma = torch.zeros(n)
        self.set_gamma(gamma)
        self.prev_losses: Tensor | None = None
        self.steps = 0
        self.last_record: dict[str, float] = {}

    def _vector(self, value, what: str) -> Tensor:
        if isinstance(value, (int, float)):
            return torch.full((len(self.task_names),), float(value))
        v = torch.as_tensor([float(x) for x in value])
        if v.numel() != len(self.task_names):
            raise ValueError(f"{what} has {v.numel()} values for {len(self.task_names)} tasks {self.task_names}")
        return v

    # -- gamma -------------------------------------------------------------------------
    def set_gamma(self, gamma: float | Sequence[float] | Mapping[str, float]) -> None:
        """Set the logit decay: a float, one value per task, or ``{task: gamma}`` (others unchanged)."""
        if isinstance(gamma, Mapping):
            g = self.gamma.clone()
            for k, v in gamma.items():
                g[self.task_names.index(k)] = float(v)
        else:
            g = self._vector(gamma, "gamma")
        if (g < 0).any():
            raise ValueError(f"gamma {g.tolist()} must be >= 0")
        self.gamma = g

    # -- the two halves of a step --------------------------------------------------------
    def weights(self) -> Tensor:
        """Current task weights ``softmax(w)`` (detached, ``[n]``)."""
        return torch.softmax(self.w.detach(), 0)

    def _stack(self, losses: Mapping[str, Tensor] | Sequence[Tensor] | Tensor) -> Tensor:
        if isinstance(losses, Mapping):
            missing = [t for t in self.task_names if t not in losses]
            if missing:
                raise KeyError(f"task losses lack {missing}; expected {self.task_names}")
            losses = [losses[t] for t in self.task_names]
        l = losses if isinstance(losses, Tensor) else torch.stack([torch.as_tensor(x) for x in losses])
        if l.shape != (len(self.task_names),):
            raise ValueError(f"expected {len(self.task_names)} task losses, got shape {tuple(l.shape)}")
        return l

    def _d(self, l: Tensor) -> Tensor:
        d = l - self.floors.to(l) + self.eps
        if (d.detach() <= 0).any():
            raise ValueError(f"task losses {l.detach().tolist()} are not above their floors {self.floors.tolist()}: "
                             "lower the floors (the reference uses -1)")
        return d

    def combine(self, losses: Mapping[str, Tensor] | Sequence[Tensor] | Tensor) -> Tensor:
        """The loss to back-propagate, ``sum a_i z_i log D_i / c`` (scalar, differentiable).

        Remembers the losses (detached) for :meth:`update`. Raises ValueError when a loss is not
        above its floor (``log D`` undefined).
        """
        l = self._stack(losses)
        d = self._d(l)
        z = self.weights().to(l)
        a = self.modulation.to(l)
        # DDP: D_i of the global batch (the mean of the ranks' D_i; equal rank batches). Each rank
        # back-propagates sum a z D_i^rank / (c D_i^global), whose rank-averaged gradient is that of
        # sum a z log D_i^global / c on the global batch; alone, D^rank = D^global and it is exactly
        # the gradient of the log form, whose value is what the loss reports.
        d_global = all_reduce_mean(d.detach())
        c = (a * z / d_global).sum().detach()
        self.prev_losses = all_reduce_mean(l.detach()).cpu()  # DDP: every rank updates w from the same losses
        eff = (a * z / d_global).detach() / c
        self.last_record = {f"weight/{t}": float(z[i].detach()) for i, t in enumerate(self.task_names)}
        self.last_record.update({f"contrib/{t}": float(eff[i]) for i, t in enumerate(self.task_names)})
        value = (a * z * torch.log(d_global)).sum() / c
        surrogate = (a * z * d / d_global).sum() / c
        return value + surrogate - surrogate.detach()

    def update(self, new_losses: Mapping[str, Tensor] | Sequence[Tensor] | Tensor) -> Tensor:
        """Step the logits from the losses of the same batch after the model step (no grad).

        Returns the logit gradient ``J^T delta + gamma * w`` (``[n]``).

        Raises:
            RuntimeError: called before :meth:`combine`.
        """
        if self.prev_losses is None:
            raise RuntimeError("BalancedRD.update() called before combine(): compute the loss with combine() first")
        new = all_reduce_mean(self._stack(new_losses).detach().float()).cpu()  # DDP: mean over ranks
        delta = torch.log(self._d(self.prev_losses.float())) - torch.log(self._d(new))
        with torch.enable_grad():
            z = torch.softmax(self.w, 0)
            (jtd,) = torch.autograd.grad(z, self.w, grad_outputs=delta)
        grad = jtd + self.gamma * self.w.detach()
        self.optimizer.zero_grad(set_to_none=True)
        self.w.grad = grad
        self.optimizer.step()
        self.steps += 1
        self.last_record.update({f"delta/{t}": float(delta[i]) for i, t in enumerate(self.task_names)})
        self.last_record.update({f"gamma/{t}": float(self.gamma[i]) for i, t in enumerate(self.task_names)})
        return grad

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Logits, floors, previous losses, gamma, modulation, step count and the Adam state."""
        return {"task_names": list(self.task_names), "w": self.w.detach().clone(), "floors": self.floors.clone(),
                "prev_losses": None if self.prev_losses is None else self.prev_losses.clone(),
                "gamma": self.gamma.clone(), "modulation": self.modulation.clone(), "steps": self.steps,
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`. Raises ValueError when the task names differ."""
        if list(state["task_names"]) != self.task_names:
            raise ValueError(f"balanced-optimizer state is for tasks {list(state['task_names'])}, not {self.task_names}: "
                             "resume with the same --use_hierarchical/--decomposition options")
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.floors = state["floors"].clone()
        self.prev_losses = None if state["prev_losses"] is None else state["prev_losses"].clone()
        self.gamma = state["gamma"].clone()
        self.modulation = state["modulation"].clone()
        self.steps = int(state["steps"])
        self.optimizer.load_state_dict(state["optimizer"])


def scale_of_task(task: str) -> str:
    """Coding scale a task belongs to: the suffix ``s1``/``s2``/``s3`` of its name, ``z`` -> ``s1``
    (z and s1 are both at 1/64 resolution), distortion bands ``coarse``/``mid``/``fine`` ->
    ``s1``/``s2``/``s3``.

    Raises:
        ValueError: a name with none of these suffixes.
    """
    suffix = task.rsplit("_", 1)[-1]
    table = {"s1": "s1", "s2": "s2", "s3": "s3", "z": "s1", "coarse": "s1", "mid": "s2", "fine": "s3"}
    if suffix not in table:
        raise ValueError(f"task {task!r} names no coding scale: end it with _s1/_s2/_s3/_z/_coarse/_mid/_fine")
    return table[suffix]


class HierarchicalBalancedRD(BalancedRD):
    """Balanced optimizer over per-scale tasks, with a gamma and a modulation weight per scale.

    Args:
        task_names: per-scale tasks, e.g. ``dist_coarse, dist_mid, dist_fine, rate_s1, rate_s2,
            rate_s3, rate_z`` (see :func:`scale_of_task`).
        scale_gammas: ``{scale: gamma}``; default :data:`DEFAULT_SCALE_GAMMAS`.
        scale_modulation: ``{scale: a}``; default 1 per scale.
        w_lr, floors, eps: as :class:`BalancedRD`.
    """

    def __init__(self, task_names: Sequence[str], *, scale_gammas: Mapping[str, float] | None = None,
                 scale_modulation: Mapping[str, float] | None = None, w_lr: float = 0.025,
                 floors: float | Sequence[float] = -1.0, eps: float = 1e-8) -> None:
        self.task_scales = {t: scale_of_task(t) for t in task_names}
        self.scale_gammas = {**DEFAULT_SCALE_GAMMAS, **dict(scale_gammas or {})}
        self.scale_modulation = {"s1": 1.0, "s2": 1.0, "s3": 1.0, **dict(scale_modulation or {})}
        super().__init__(task_names, gamma=[self.scale_gammas[self.task_scales[t]] for t in task_names], w_lr=w_lr,
                         floors=floors, eps=eps,
                         modulation=[self.scale_modulation[self.task_scales[t]] for t in task_names])

    def set_gamma(self, gamma) -> None:
        """A float (every scale), ``{scale: gamma}`` (``s1``/``s2``/``s3``) or ``{task: gamma}``."""
        if isinstance(gamma, Mapping) and set(gamma) <= {"s1", "s2", "s3"}:
            self.scale_gammas.update({k: float(v) for k, v in gamma.items()})
            gamma = [self.scale_gammas[self.task_scales[t]] for t in self.task_names]
        super().set_gamma(gamma)

    def combine(self, losses) -> Tensor:
        loss = super().combine(losses)
        for s in ("s1", "s2", "s3"):
            self.last_record[f"scale_contrib/{s}"] = sum(self.last_record[f"contrib/{t}"]
                                                         for t in self.task_names if self.task_scales[t] == s)
        return loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "scale_gammas": dict(self.scale_gammas)}

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.scale_gammas.update(state.get("scale_gammas", {}))
