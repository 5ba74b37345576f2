"""LoRA (Hu et al., ICLR 2022) through Hugging Face PEFT: low-rank adapters, the new head fully trained.

The adapters are injected with ``peft.inject_adapter_in_model`` into the timm model itself, so the
parameter names stay timm's (``blocks.3.conv_pw.base_layer.weight``, ``blocks.3.conv_pw.lora_A.default.weight``)
and the layer-group resolver, checkpoints, ``--resume`` and DDP see an ordinary model. Anything
downstream (``predict``, ``evaluate``, export, WiSE-FT, the forgetting measures) uses the merged
model: :func:`merge_adapters` folds each adapter into its base layer with PEFT's own ``merge``.
"""
from __future__ import annotations

import copy
import re
from typing import Sequence

from torch import nn

from finetune_kit.layer_groups import LayerGroups, resolve_layer_groups
from finetune_kit.strategy import FineTuneStrategy, register_strategy

__all__ = ["LoRA", "default_lora_targets", "has_adapters", "merge_adapters", "merged_copy"]

#: ViT-family targets (HF PEFT's documented timm ViT recipe plus the MLP).
VIT_TARGETS = ("qkv", "proj", "fc1", "fc2")


def default_lora_targets(model: nn.Module) -> list[str]:
    """LoRA targets of ``model`` by architecture family, outside its head layer group:

    - ViT family (a ``*.attn.qkv`` module): ``qkv``, ``proj``, ``fc1``, ``fc2``;
    - CNNs: every pointwise convolution (``Conv2d`` 1x1, ``groups=1``; PEFT's Conv2d LoRA);
    - otherwise every ``nn.Linear``.

    Returns:
        Module names (full names for CNNs/linear layers, suffixes for the ViT family).
    """
    names = dict(model.named_modules())
    if any(n.endswith("attn.qkv") for n in names):
        return list(VIT_TARGETS)
    try:
        head = {n for g in resolve_layer_groups(model).head for n in g.param_names}
    except ValueError:
        head = set()
    head_modules = {n.rsplit(".", 1)[0] for n in head}
    convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
             and n not in head_modules]
    if convs:
        return convs
    return [n for n, m in names.items() if isinstance(m, nn.Linear) and n not in head_modules]


def has_adapters(model: nn.Module) -> bool:
    """Whether ``model`` holds LoRA adapters (parameters named ``*.lora_A.*``/``*.lora_B.*``)."""
    return any(".lora_A." in n or ".lora_B." in n for n, _ in model.named_parameters())


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every PEFT adapter into its base layer (PEFT's ``merge(safe_merge=True)``) and put the base
    layer back in its place, in place; the result has the plain timm parameter names. A model without
    adapters is returned unchanged.

    Raises:
        ValueError: a merge produced NaN/inf weights (PEFT's safe merge).
    """
    if not has_adapters(model):
        return model
    from peft.tuners.tuners_utils import BaseTunerLayer  # local: importing peft (transformers) takes seconds

    tuners = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in tuners:
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no adapters, else a merged deep copy (the model keeps training)."""
    return merge_adapters(copy.deepcopy(model)) if has_adapters(model) else model


def _targets(value: str | Sequence[str] | None) -> str | list[str] | None:
    """``"qkv,proj"`` / ``["qkv"]`` -> list of module-name suffixes; ``"re:REGEX"`` -> the regex (full match)."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        if value.startswith("re:"):
            re.compile(value[3:])
            return value[3:]
        return [t.strip() for t in value.split(",") if t.strip()]
    return [str(t) for t in value]


@register_strategy("lora")
class LoRA(FineTuneStrategy):
    """LoRA through HF PEFT: rank-``lora_rank`` adapters on the target modules, the new head fully
    trained, every pretrained weight frozen (BatchNorm statistics as ``--bn-stats`` says).

    :meth:`prepare_model` injects the adapters (the run calls it before building the optimizer);
    every layer group stays "trainable" while the pretrained weights are pinned frozen, so only
    adapters and the head get gradients.

    Args:
        lora_rank: rank ``r`` of each adapter (>= 1). Default 8.
        lora_alpha: PEFT's ``lora_alpha`` (the update is scaled by ``alpha / r``). Default ``2 * rank``.
        lora_dropout: dropout on the adapters' input. Default 0.
        lora_targets: module names (suffixes, e.g. ``"qkv,proj"``) or ``"re:REGEX"`` (full match);
            default per architecture family (:func:`default_lora_targets`).

    Raises:
        ValueError: rank < 1, negative alpha, dropout outside [0, 1); at :meth:`prepare_model`, targets
            that match no module of the model.
    """

    description = "LoRA via HF peft: low-rank adapters (pointwise convs / ViT qkv,proj,fc1,fc2), head fully trained"

    def __init__(self, *, lora_rank: int = 8, lora_alpha: float | None = None, lora_dropout: float = 0.0,
                 lora_targets: str | Sequence[str] | None = None, **common) -> None:
        super().__init__(**common)
        if int(lora_rank) < 1:
            raise ValueError(f"lora_rank={lora_rank}: must be an integer >= 1 (e.g. --strategy-kwargs lora_rank=8)")
        if lora_alpha is not None and float(lora_alpha) <= 0:
            raise ValueError(f"lora_alpha={lora_alpha}: must be > 0 (default 2 * lora_rank)")
        if not 0.0 <= float(lora_dropout) < 1.0:
            raise ValueError(f"lora_dropout={lora_dropout}: must be in [0, 1)")
        self.lora_rank = int(lora_rank)
        self.lora_alpha = float(lora_alpha) if lora_alpha is not None else 2.0 * self.lora_rank
        self.lora_dropout = float(lora_dropout)
        self.lora_targets = _targets(lora_targets)
        self.targeted: list[str] = []

    def lora_config(self, model: nn.Module):
        """The ``peft.LoraConfig`` for ``model`` (targets resolved)."""
        from peft import LoraConfig  # local: importing peft (transformers) takes seconds

        targets = self.lora_targets if self.lora_targets is not None else default_lora_targets(model)
        return LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=targets)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Inject the adapters into ``model`` in place (``peft.inject_adapter_in_model``) and return it.

        Raises:
            ValueError: the targets match no module (names them and how to list the model's modules).
        """
        from peft import inject_adapter_in_model  # local: importing peft (transformers) takes seconds
        from peft.tuners.tuners_utils import check_target_module_exists

        config = self.lora_config(model)
        matched = [n for n, m in model.named_modules() if n and check_target_module_exists(config, n)
                   and isinstance(m, (nn.Linear, nn.Conv2d))]
        if not matched:
            raise ValueError(f"lora_targets {config.target_modules}: match no Linear/Conv2d module of "
                             f"{type(model).__name__}; list its modules with [n for n, _ in model.named_modules()]")
        inject_adapter_in_model(config, model)
        self.targeted = matched
        return model

    def initial_trainable(self, groups: LayerGroups):
        return groups.names

    def build_param_groups(self, groups: LayerGroups, *, weight_decay: float = 0.05,
                           no_weight_decay_names=()) -> list[dict]:
        """As the base class, with every pretrained weight outside the head pinned frozen (the adapters
        and the head train)."""
        head = [re.escape(n) for g in groups.head for n in g.param_names]
        keep = "|".join([r".*\.lora_[AB]\.", *(h + "$" for h in head)])
        self.freeze_patterns = [*self.freeze_patterns, rf"^(?!(?:{keep}))"]
        return super().build_param_groups(groups, weight_decay=weight_decay, no_weight_decay_names=no_weight_decay_names)
