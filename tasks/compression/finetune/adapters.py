"""Adapters for codec domain adaptation: small trainable modules in a frozen pretrained codec.

Zhang, Zhang, Li, Li, Liu, "Few-Shot Domain Adaptation for Learned Image Compression" (arXiv
2409.11111) adapt a pretrained codec to a new content domain with plug-in adapters that
re-allocate latent channels: convolution-based adapters and low-rank (LoRA) adapters. Only the
adapters train, so a decoder of the target domain must receive the adapter tensors besides the
base model it already has; that side cost is :func:`adapter_bits`.

Two kinds (``--adapter``):

``lora``
    LoRA (Hu et al., ICLR 2022) on every ``nn.Conv2d`` under ``--adapter-targets`` through HF
    PEFT's Conv2d LoRA (``W x + (alpha / r) B(A(x))``, ``B`` zero at the start). PEFT has no
    ``ConvTranspose2d`` LoRA, so the up-sampling layers of ``g_s`` keep their weights.
``conv``
    A residual 1x1 bottleneck after every ``nn.Conv2d``/``nn.ConvTranspose2d`` under the targets:
    ``y + up(down(y))``, ``down`` C -> r, ``up`` r -> C zero at the start, so the adapted model
    starts equal to the base. Each adapter is a child ``conv_adapter`` of its convolution (run by a
    forward hook), so the parameter names stay under the convolution (``g_s.3.pconv.conv_adapter.up.weight``):
    the layer groups, checkpoints and ``--resume`` see an ordinary model.

Every other parameter is frozen (:data:`ADAPTER_PARAMS` keeps only the adapters trainable), the
entropy models included, so the bitstream syntax of the base stays valid. Adapters placed only in
``g_s`` leave the entropy coding unchanged: the decoder's ``y_hat`` equals the encoder's bit for bit.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from torch import Tensor, nn

from finetune_kit.tasks.compression.finetune.adaptation_config import ADAPTER_KINDS
from finetune_kit.tasks.compression.models.zoo import build_model

__all__ = ["ConvAdapter", "attach_adapters", "check_adapter_targets", "attach_recorded_adapters", "adapter_parameters",
           "adapter_bits", "adapter_summary", "adapter_freeze_patterns", "ADAPTER_PARAMS", "ADAPTER_KINDS"]

#: regex (``re.search``) of the parameters that train when adapters are attached
ADAPTER_PARAMS = r"\.(?:lora_[AB]|conv_adapter)\."


class ConvAdapter(nn.Module):
    """Residual 1x1 bottleneck ``y + up(down(y))`` on a convolution's output (conv adapter of arXiv
    2409.11111: channel-wise re-allocation of the features).

    Args:
        channels: C, the output channels of the convolution it follows.
        rank: r, bottleneck channels (clipped to C).

    ``up`` starts at zero, so the adapter starts as the identity. Shape ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, channels: int, rank: int) -> None:
        super().__init__()
        r = min(rank, channels)
        self.down = nn.Conv2d(channels, r, kernel_size=1, bias=False)
        self.up = nn.Conv2d(r, channels, kernel_size=1, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, y: Tensor) -> Tensor:
        return y + self.up(self.down(y))

    def hook(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        """Forward hook of the convolution this adapter follows: returns the adapted output."""
        return self(output)


def _matches(name: str, targets: str) -> bool:
    if targets.startswith("re:"):
        return re.search(targets[3:], name) is not None
    return any(name == t or name.startswith(t + ".") for t in (s.strip() for s in targets.split(",")) if t)


def _target_modules(model: nn.Module, targets: str, kinds: tuple[type, ...], what: str) -> list[str]:
    """Names of the ``kinds`` modules of ``model`` under ``targets``.

    Raises:
        ValueError: the targets name no module of the model, or none of ``kinds`` under them.
    """
    names = [n for n, _ in model.named_modules() if n]
    under = [n for n in names if _matches(n, targets)]
    if not under:
        tops = sorted({n.split(".")[0] for n in names})
        raise ValueError(f"adapter_targets {targets!r}: {type(model).__name__} has no such module (its modules: "
                         f"{', '.join(tops)}): pass --adapter-targets with one of them, e.g. g_s")
    found = [n for n in under if isinstance(model.get_submodule(n), kinds)]
    if not found:
        raise ValueError(f"adapter_targets {targets!r} match {len(under)} modules of {type(model).__name__} but no "
                         f"{what}: use --adapter {'conv' if what == 'Conv2d' else 'lora'} or other --adapter-targets")
    return found


def attach_adapters(model: nn.Module, kind: str, rank: int = 8, targets: str = "g_s") -> list[str]:
    """Attach ``kind`` adapters to ``model`` in place (see the module docstring); returns the names of
    the modules that got one. ``kind="none"`` attaches nothing. The model's own weights are not
    touched (freezing them is the optimizer's part: :data:`ADAPTER_PARAMS`).

    Raises:
        ValueError: unknown ``kind``; ``targets`` name no module of the model, or no module an adapter
            of this kind can attach to (one line naming the model's modules / the fix).
    """
    if kind == "none":
        return []
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"adapter {kind!r}: use one of {', '.join(ADAPTER_KINDS)}")
    if kind == "lora":
        found = _target_modules(model, targets, (nn.Conv2d,), "Conv2d")
        # local: importing peft (transformers) takes seconds
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2.0 * rank, target_modules=found), model)
        return found
    found = _target_modules(model, targets, (nn.Conv2d, nn.ConvTranspose2d), "Conv2d/ConvTranspose2d")
    for name in found:
        conv = model.get_submodule(name)
        conv.conv_adapter = ConvAdapter(conv.out_channels, rank).to(conv.weight.device)
        conv.register_forward_hook(conv.conv_adapter.hook)
    return found


def check_adapter_targets(model_name: str, kind: str, targets: str) -> list[str]:
    """The modules of ``model_name`` that ``kind`` adapters under ``targets`` would attach to, found on
    a freshly built model, so a run refuses bad targets before it starts (exit 2, no run folder).
    ``kind="none"``: ``[]``.

    Raises:
        ValueError: as :func:`attach_adapters`.
    """
    if kind == "none":
        return []
    model = build_model(model_name)
    if kind == "lora":
        return _target_modules(model, targets, (nn.Conv2d,), "Conv2d")
    return _target_modules(model, targets, (nn.Conv2d, nn.ConvTranspose2d), "Conv2d/ConvTranspose2d")


def attach_recorded_adapters(model: nn.Module, config: Optional[Mapping[str, Any]]) -> list[str]:
    """Attach the adapters a checkpoint's recorded ``config`` names (``adapter``, ``adapter_rank``,
    ``adapter_targets``), so its state dict loads; nothing for a config without adapters."""
    config = config or {}
    kind = config.get("adapter") or "none"
    return attach_adapters(model, kind, int(config.get("adapter_rank") or 8), config.get("adapter_targets") or "g_s")


def adapter_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors of ``model`` by name (what a target-domain decoder must receive)."""
    rx = re.compile(ADAPTER_PARAMS)
    return {n: p for n, p in model.named_parameters() if rx.search(n)}


def adapter_bits(model: nn.Module, bits_per_value: int = 32) -> int:
    """Side cost of the adapters in bits: every adapter value at ``bits_per_value`` (32: float32 as
    checkpoints store them; 16 halves it). 0 for a model without adapters."""
    return sum(p.numel() for p in adapter_parameters(model).values()) * bits_per_value


def adapter_summary(model: nn.Module) -> dict[str, int]:
    """``{"adapter_params": count, "adapter_bits": float32 bits}`` of ``model``."""
    n = sum(p.numel() for p in adapter_parameters(model).values())
    return {"adapter_params": int(n), "adapter_bits": int(32 * n)}


def adapter_freeze_patterns(layer_lr: Any, kind: str) -> Any:
    """``layer_lr`` (a :class:`~finetune_kit.tasks.compression.finetune.config.LayerLRSection`) with every
    parameter but the adapters' frozen, the entropy models included, when ``kind`` attaches adapters;
    unchanged for ``"none"``."""
    if kind == "none":
        return layer_lr
    keep = rf"^(?!.*{ADAPTER_PARAMS})"
    return layer_lr.model_copy(update={"freeze_patterns": [*layer_lr.freeze_patterns, keep], "freeze_entropy": True})

