"""HPCM as a CompressAI ``CompressionModel`` (Li, Zhang, Li, Liu, ICCV 2025, arXiv 2507.19125).

Top-level children: ``g_a``, ``g_s``, ``h_a``, ``h_s``, ``context`` (all context modules),
``entropy_bottleneck`` (z: CompressAI ``EntropyBottleneck(N)`` or the official mean-scale model)
and ``gaussian_conditional`` (y: CompressAI ``GaussianConditional(None)`` or the official
generalized Gaussian); see the options below. y is coded progressively over three scales in
11 steps (:mod:`finetune_kit.tasks.compression.models.hpcm.schedule`); ``compress``/``decompress`` use CompressAI's
rANS coder (``compressai.ans``) in the same order and reproduce ``y_hat`` bit-exactly on CPU.

Presets (:data:`PRESETS`): ``hpcm-tiny`` / ``hpcm-small`` for CPU tests and demos,
``hpcm-base`` (N=256, M=320, ~68.5 M parameters as in the paper), ``hpcm-large`` (~89.7 M).

Options of a preset (fields of :class:`HPCMPreset`, or keyword overrides of :class:`HPCM`):
``schedule`` ``"paper"`` (the official code's positions per step, :mod:`...hpcm.paper_schedule`)
or ``"kit"`` (this package's earlier schedule, :mod:`...hpcm.schedule`); ``y_entropy``
``"generalized-gaussian"`` (official: shape 1.5, scale bound 0.12, 60-level table 0.12-64) or
``"gaussian"`` (CompressAI ``GaussianConditional``, bound 0.11, 128-level table 0.11-256);
``z_entropy`` ``"mean-scale"`` (official: learned mean/scale per channel, no aux loss) or
``"bottleneck"`` (CompressAI ``EntropyBottleneck``, trained quantiles and aux loss). The paper's
presets (hpcm-base, hpcm-large) default to the paper's three; hpcm-tiny/small keep the kit
schedule and CompressAI's entropy models (their existing checkpoints and the aux-loss training
loop depend on them). The modules keep the names ``entropy_bottleneck`` (z) and
``gaussian_conditional`` (y) whichever is chosen.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.models import CompressionModel
from compressai.models.base import get_scale_table
from compressai.ops import quantize_ste
from torch import Tensor

from finetune_kit.tasks.compression.models.hpcm.context import HPCMContext
from finetune_kit.tasks.compression.models.hpcm.entropy_models import (GeneralizedGaussianConditional,
                                                                       MeanScaleHyperLatent, paper_scale_table)
from finetune_kit.tasks.compression.models.hpcm.layers import (analysis_transform, hyper_analysis, hyper_synthesis,
                                                               synthesis_transform)
from finetune_kit.tasks.compression.models.hpcm.paper_schedule import PaperSchedule
from finetune_kit.tasks.compression.models.hpcm.schedule import CodingSchedule, SCALE_STEPS
from finetune_kit.tasks.compression.models.training_noise import EntropyBottleneck, GaussianConditional

__all__ = ["HPCMPreset", "PRESETS", "GROUP_MATCHER", "HPCM", "HPCMTiny", "HPCMSmall", "HPCMBase", "HPCMLarge",
           "PRESET_CLASSES", "pad_to_multiple", "SCHEDULES", "Y_ENTROPY_MODELS", "Z_ENTROPY_MODELS"]

#: option values of :class:`HPCMPreset` (first = the paper's)
SCHEDULES = ("paper", "kit")
Y_ENTROPY_MODELS = ("generalized-gaussian", "gaussian")
Z_ENTROPY_MODELS = ("mean-scale", "bottleneck")


@dataclass(frozen=True)
class HPCMPreset:
    """Size of an HPCM model.

    Attributes:
        N: channels of z (hyper latent). M: channels of y (multiple of ``groups``).
        channels: widths of the three g_a stages (paper 96, 192, 384).
        depths: partial-conv blocks per g_a/g_s stage (paper base 2, 2, 4; large 2, 2, 8).
        hyper_depth: partial-conv blocks at width N in h_a and h_s (paper 3).
        prior_s12, prior_s3: (before gain, after gain) depth-wise blocks of the spatial priors.
        windows: attention windows of s1, s2, s3 (paper 4, 8, 8).
        heads: attention heads. groups: channel groups of the schedule (paper 8).
        mlp_ratio: MLP ratio of the partial-conv blocks (paper 4); dw_mlp_ratio: of the
            depth-wise blocks (paper 2).
        schedule: ``"paper"`` or ``"kit"`` (default ``"kit"``, so configs saved before this
            option existed rebuild the model they were trained with).
        y_entropy: ``"generalized-gaussian"`` or ``"gaussian"`` (default ``"gaussian"``).
        z_entropy: ``"mean-scale"`` or ``"bottleneck"`` (default ``"bottleneck"``).
    """

    N: int
    M: int
    channels: tuple[int, int, int]
    depths: tuple[int, int, int]
    hyper_depth: int
    prior_s12: tuple[int, int]
    prior_s3: tuple[int, int]
    windows: tuple[int, int, int] = (4, 8, 8)
    heads: int = 32
    groups: int = 8
    mlp_ratio: int = 4
    dw_mlp_ratio: int = 2
    schedule: str = "kit"
    y_entropy: str = "gaussian"
    z_entropy: str = "bottleneck"

    @property
    def pad_multiple(self) -> int:
        """Image sides must be multiples of this (pixels): windows fit every grid, z is 1/64."""
        w1, w2, w3 = self.windows
        return math.lcm(64 * w1, 32 * w2, 16 * w3, 64)


PRESETS: dict[str, HPCMPreset] = {
    "hpcm-tiny": HPCMPreset(N=64, M=64, channels=(32, 48, 96), depths=(1, 1, 1), hyper_depth=1,
                            prior_s12=(1, 1), prior_s3=(1, 1), windows=(2, 4, 4), heads=4, mlp_ratio=2),
    "hpcm-small": HPCMPreset(N=128, M=128, channels=(64, 96, 192), depths=(1, 1, 2), hyper_depth=1,
                             prior_s12=(1, 1), prior_s3=(2, 1), windows=(2, 4, 4), heads=8, mlp_ratio=2),
    "hpcm-base": HPCMPreset(N=256, M=320, channels=(96, 192, 384), depths=(2, 2, 4), hyper_depth=3,
                            prior_s12=(2, 1), prior_s3=(3, 2),
                            schedule="paper", y_entropy="generalized-gaussian", z_entropy="mean-scale"),
    "hpcm-large": HPCMPreset(N=256, M=320, channels=(96, 192, 384), depths=(2, 2, 8), hyper_depth=3,
                             prior_s12=(2, 2), prior_s3=(4, 3),
                             schedule="paper", y_entropy="generalized-gaussian", z_entropy="mean-scale"),
}


#: HPCM's layer groups, bottom to top, in timm's ``group_matcher`` format (regexes tried with
#: ``re.match`` on parameter names, first entry wins): the transforms, the hyper transforms, the
#: context model, the entropy bottleneck's density model and, apart, its ``quantiles`` (trained
#: only by the aux loss). The Gaussian conditional has no parameters.
GROUP_MATCHER: dict[str, str] = {
    "g_a": r"^g_a\.",
    "g_s": r"^g_s\.",
    "h_a": r"^h_a\.",
    "h_s": r"^h_s\.",
    "context": r"^context\.",
    "entropy_bottleneck": r"^entropy_bottleneck\.(?!quantiles$)",
    "quantiles": r"^entropy_bottleneck\.quantiles$",
}


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad ``x [B, C, H, W]`` on the right/bottom (edge replication) to sides multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


class HPCM(CompressionModel):
    """Hierarchical progressive context model for learned image compression.

    Args:
        preset: an :class:`HPCMPreset` or the name of one in :data:`PRESETS`.
        **options: overrides of the preset's ``schedule``, ``y_entropy``, ``z_entropy`` (see the
            module doc), e.g. ``HPCM("hpcm-tiny", schedule="paper")``.

    ``forward(x)`` with ``x [B, 3, H, W]`` in [0, 1] (any H, W >= 1; padded internally to
    :attr:`pad_multiple` and cropped back) returns::

        {"x_hat": [B, 3, H, W],
         "likelihoods": {"y": [B, M, H'/16, W'/16], "z": [B, N, H'/64, W'/64]},
         "y_scale_masks": {"s1"|"s2"|"s3": bool [B, M, H'/16, W'/16]}}

    (``H'``, ``W'`` the padded size). The masks partition y by the scale at which each
    element is coded. Training uses additive-noise likelihoods and straight-through rounding
    for ``y_hat`` (as the paper); eval mode rounds.

    Raises:
        KeyError: unknown preset name.
        ValueError: an unknown option or option value.
    """

    def __init__(self, preset: HPCMPreset | str = "hpcm-base", **options: str) -> None:
        super().__init__()
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise KeyError(f"unknown HPCM preset {preset!r}: use one of {', '.join(PRESETS)}")
            preset = PRESETS[preset]
        unknown = set(options) - {"schedule", "y_entropy", "z_entropy"}
        if unknown:
            raise ValueError(f"unknown HPCM option(s) {sorted(unknown)}: use schedule, y_entropy, z_entropy")
        p = replace(preset, **options) if options else preset
        for field, allowed in (("schedule", SCHEDULES), ("y_entropy", Y_ENTROPY_MODELS), ("z_entropy", Z_ENTROPY_MODELS)):
            if getattr(p, field) not in allowed:
                raise ValueError(f"HPCM {field}={getattr(p, field)!r}: use one of {', '.join(allowed)}")
        self.preset = p
        self.N, self.M = p.N, p.M
        self.g_a = analysis_transform(p.channels, p.depths, p.M, mlp_ratio=p.mlp_ratio)
        self.g_s = synthesis_transform(p.channels, p.depths, p.M, mlp_ratio=p.mlp_ratio)
        self.h_a = hyper_analysis(p.M, p.N, p.hyper_depth, mlp_ratio=p.mlp_ratio)
        self.h_s = hyper_synthesis(p.M, p.N, p.hyper_depth, mlp_ratio=p.mlp_ratio)
        self.context = HPCMContext(p.M, p.prior_s12, p.prior_s3, p.windows, p.heads, p.dw_mlp_ratio)
        if p.z_entropy == "mean-scale":
            self.entropy_bottleneck = MeanScaleHyperLatent(p.N)
        else:
            self.entropy_bottleneck = EntropyBottleneck(p.N)
        if p.y_entropy == "generalized-gaussian":
            self.gaussian_conditional = GeneralizedGaussianConditional(None)
        else:
            self.gaussian_conditional = GaussianConditional(None)
        self.schedule = PaperSchedule(p.M, p.groups) if p.schedule == "paper" else CodingSchedule(p.M, p.groups)

    @property
    def pad_multiple(self) -> int:
        """Image sides are padded to a multiple of this many pixels (256 for the paper's windows)."""
        return self.preset.pad_multiple

    #: scale-table levels used by :meth:`update` (CompressAI's default is 64; see there)
    SCALE_TABLE_LEVELS = 128

    def update(self, scale_table=None, force: bool = False, update_quantiles: bool = False) -> bool:
        """Build the rANS tables (CompressAI ``CompressionModel.update``) with a finer scale table.

        Gaussian y: scales are snapped up to the next entry of a log-spaced table from 0.11 to
        256. CompressAI's 64 levels (13 % apart) cost 3-5 % over the estimated rate on our
        low-rate latents (measured on Kodak with hpcm-tiny); 128 levels (6 % apart) halve that
        for about 10 % more coding time. Generalized-Gaussian y: the official table (60 levels,
        0.12 to 64, :func:`...entropy_models.paper_scale_table`). A mean-scale z model gets one
        table per channel. Pass ``scale_table`` to choose another y table.

        Returns True when at least one table was (re)built.
        """
        if scale_table is None:
            if isinstance(self.gaussian_conditional, GeneralizedGaussianConditional):
                scale_table = paper_scale_table()
            else:

                scale_table = get_scale_table(0.11, 256, self.SCALE_TABLE_LEVELS)
        updated = super().update(scale_table=scale_table, force=force, update_quantiles=update_quantiles)
        if isinstance(self.entropy_bottleneck, MeanScaleHyperLatent):
            updated |= self.entropy_bottleneck.update(force=force)
        return updated

    def aux_loss(self) -> Tensor:
        """CompressAI's aux loss (``EntropyBottleneck`` quantiles); a zero tensor with the mean-scale z model."""
        if isinstance(self.entropy_bottleneck, MeanScaleHyperLatent):
            return self.entropy_bottleneck.loss()
        return super().aux_loss()

    def config(self) -> dict[str, Any]:
        """The preset as a plain dict (stored in checkpoints)."""
        return asdict(self.preset)

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Layer groups for :func:`finetune_kit.layer_groups.resolve_layer_groups`, timm style.

        Returns a copy of :data:`GROUP_MATCHER`: ``{group name: regex}`` for ``g_a``, ``g_s``,
        ``h_a``, ``h_s``, ``context``, ``entropy_bottleneck`` and ``quantiles``, bottom to top;
        every parameter matches exactly one entry. HPCM has one granularity: ``coarse`` is
        accepted for timm's protocol (``group_matcher(coarse=...)``) and changes nothing.
        """
        return dict(GROUP_MATCHER)

    # ------------------------------------------------------------------ training / estimation
    def _z_hat(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.entropy_bottleneck, MeanScaleHyperLatent):
            return self.entropy_bottleneck(z)  # straight-through rounding around the mean in training
        z_noisy, z_likelihoods = self.entropy_bottleneck(z)
        if self.training:
            offset = self.entropy_bottleneck._get_medians()
            return quantize_ste(z - offset) + offset, z_likelihoods
        return z_noisy, z_likelihoods

    def _estimate_step(self, step: int, y: Optional[Tensor], scales: Tensor, means: Tensor, mask: Tensor) -> Tensor:
        if self.training:
            q = quantize_ste(y - means) + means
        else:
            q = torch.round(y - means) + means
        return torch.where(mask, q, 0.0)

    def forward(self, x: Tensor) -> dict[str, Any]:
        h, w = x.shape[-2:]
        x_p = pad_to_multiple(x, self.pad_multiple)
        y = self.g_a(x_p)
        z = self.h_a(y)
        z_hat, z_likelihoods = self._z_hat(z)
        params = self.h_s(z_hat)
        y_hat, scales, means = self.context.run(params, self.schedule, self._estimate_step, y)
        _, y_likelihoods = self.gaussian_conditional(y, scales, means)
        x_hat = self.g_s(y_hat)[..., :h, :w]
        B = x.shape[0]
        masks = self.schedule.scale_masks(y.shape[2], y.shape[3], y.device)
        return {
            "x_hat": x_hat,
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
            "y_scale_masks": {k: m.unsqueeze(0).expand(B, -1, -1, -1) for k, m in masks.items()},
        }

    # ------------------------------------------------------------------ real entropy coding
    def _coder_tables(self) -> tuple[list, list, list]:
        gc = self.gaussian_conditional
        if gc._quantized_cdf.numel() == 0 or self.entropy_bottleneck._quantized_cdf.numel() == 0:
            raise RuntimeError("entropy coder tables are empty: call model.update(force=True) "
                               "after training/loading and before compress()/decompress()")
        return (gc.quantized_cdf.tolist(), gc.cdf_length.reshape(-1).int().tolist(),
                gc.offset.reshape(-1).int().tolist())

    @torch.no_grad()
    def compress(self, x: Tensor) -> dict[str, Any]:
        """Encode ``x [B, 3, H, W]`` (in [0, 1]) with rANS.

        Returns ``{"strings": [y_s1, y_s2, y_s3, z], "shape": z's (h, w), "image_size": (H, W),
        "y_hat": [B, M, h*4, w*4]}``; each strings entry is a list of B byte strings (one rANS
        stream per scale, so the real rate of each scale is measurable). Images are coded one
        at a time. Real bpp = ``8 * sum of all string lengths / (B*H*W)``.

        Raises:
            RuntimeError: :meth:`update` was not called (empty CDF tables).
        """
        tables = self._coder_tables()
        size = tuple(x.shape[-2:])
        out: dict[str, Any] = {"strings": [[], [], [], []], "image_size": size, "y_hat": []}
        for b in range(x.shape[0]):
            x_p = pad_to_multiple(x[b:b + 1], self.pad_multiple)
            y = self.g_a(x_p)
            z = self.h_a(y)
            z_strings = self.entropy_bottleneck.compress(z)
            z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
            params = self.h_s(z_hat)
            encoders = {s: BufferedRansEncoder() for s in SCALE_STEPS}

            def encode(step, y_s, scales, means, mask, encoders=encoders):
                q = torch.round(y_s - means)
                m = mask.unsqueeze(0)
                idx = self.gaussian_conditional.build_indexes(scales)[m]
                enc = encoders[_scale_of(step)]
                enc.encode_with_indexes(q[m].int().tolist(), idx.tolist(), *tables)
                return torch.where(mask, q + means, 0.0)

            y_hat, _, _ = self.context.run(params, self.schedule, encode, y)
            for i, s in enumerate(SCALE_STEPS):
                out["strings"][i].append(encoders[s].flush())
            out["strings"][3].append(z_strings[0])
            out["shape"] = tuple(z.shape[-2:])
            out["y_hat"].append(y_hat)
        out["y_hat"] = torch.cat(out["y_hat"])
        return out

    @torch.no_grad()
    def decompress(self, strings: list, shape, image_size: Optional[tuple[int, int]] = None) -> dict[str, Tensor]:
        """Decode what :meth:`compress` produced.

        Args:
            strings: ``[y_s1, y_s2, y_s3, z]``, lists of byte strings (one per image).
            shape: z's spatial size ``(h, w)``.
            image_size: original ``(H, W)`` to crop to (default: the padded size ``64h x 64w``).

        Returns:
            ``{"x_hat": [B, 3, H, W] clamped to [0, 1], "y_hat": [B, M, 4h, 4w]}``.

        Raises:
            ValueError: ``strings`` is not the 4-list :meth:`compress` writes.
            RuntimeError: :meth:`update` was not called.
        """
        if not isinstance(strings, (list, tuple)) or len(strings) != 4:
            raise ValueError("strings must be [y_s1, y_s2, y_s3, z] as returned by HPCM.compress()")
        tables = self._coder_tables()
        x_hats, y_hats = [], []
        for b in range(len(strings[3])):
            z_hat = self.entropy_bottleneck.decompress([strings[3][b]], tuple(shape))
            params = self.h_s(z_hat)
            decoders = {}
            for i, s in enumerate(SCALE_STEPS):
                decoders[s] = RansDecoder()
                decoders[s].set_stream(strings[i][b])

            def decode(step, _y, scales, means, mask, decoders=decoders):
                m = mask.unsqueeze(0)
                idx = self.gaussian_conditional.build_indexes(scales)[m]
                vals = decoders[_scale_of(step)].decode_stream(idx.tolist(), *tables)
                out = torch.zeros_like(means)
                out[m] = torch.tensor(vals, dtype=means.dtype, device=means.device) + means[m]
                return out

            y_hat, _, _ = self.context.run(params, self.schedule, decode, None)
            x_hat = self.g_s(y_hat).clamp_(0, 1)
            if image_size is not None:
                x_hat = x_hat[..., : image_size[0], : image_size[1]]
            x_hats.append(x_hat)
            y_hats.append(y_hat)
        return {"x_hat": torch.cat(x_hats), "y_hat": torch.cat(y_hats)}


class _PresetHPCM(HPCM):
    """An :class:`HPCM` of one fixed preset, built without arguments (CompressAI's registry
    builds models as ``MODELS[name]()``)."""

    preset_name = "hpcm-base"

    def __init__(self) -> None:
        super().__init__(self.preset_name)


class HPCMTiny(_PresetHPCM):
    """``HPCM("hpcm-tiny")``: CPU tests and demos."""

    preset_name = "hpcm-tiny"


class HPCMSmall(_PresetHPCM):
    """``HPCM("hpcm-small")``: CPU demos."""

    preset_name = "hpcm-small"


class HPCMBase(_PresetHPCM):
    """``HPCM("hpcm-base")``: the paper's base model (N=256, M=320, 68.5 M parameters)."""

    preset_name = "hpcm-base"


class HPCMLarge(_PresetHPCM):
    """``HPCM("hpcm-large")``: the paper's large model (~89.7 M parameters)."""

    preset_name = "hpcm-large"


#: preset name -> argument-less class (what the package registers in ``compressai.registry.MODELS``)
PRESET_CLASSES: dict[str, type[HPCM]] = {c.preset_name: c for c in (HPCMTiny, HPCMSmall, HPCMBase, HPCMLarge)}


def _scale_of(step: int) -> str:
    for s, steps in SCALE_STEPS.items():
        if step in steps:
            return s
    raise ValueError(f"step {step} is not one of the 11 HPCM coding steps")
