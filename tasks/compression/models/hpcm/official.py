"""Key map from the official HPCM checkpoints (github.com/lyq133/LIC-HPCM) to this package's HPCM.

The official checkpoints (``HPCM_Base`` / ``HPCM_Large``, one file per lambda) are plain
``torch.save(net.state_dict())`` dicts of float tensors. Their key names and shapes (M=320,
N=256, ``B`` = blocks per stage: Base 2/2/4, Large 2/2/8; ``D`` = depth-wise blocks of the
spatial priors: Base s1_s2 2+1, s3 3+2; Large 2+2, 4+3):

=====================================================================  ===================================
official                                                               ours
=====================================================================  ===================================
``g_a.branch.{i}.{weight,bias}`` (stride convs)                        ``g_a.{i}.*``
``g_a.branch.{i}.branch.0.pconv.*`` / ``.branch.1.*`` / ``.branch.3.*``  ``g_a.{i}.pconv.*`` / ``.mlp.0.*`` / ``.mlp.2.*``
same for ``g_s``, ``h_a``, ``h_s``
``y_spatial_prior_adaptor_list_s1.0.*``                                ``context.s1_adaptor.0.*``
``y_spatial_prior_adaptor_list_s2.{k}.*`` (k = 0..2)                    ``context.s2_adaptor.{(k + 1) % 3}.*``
``y_spatial_prior_adaptor_list_s3.{k}.*`` (k = 0..5)                    ``context.s3_adaptor.{(k + 1) % 6}.*``
``y_spatial_prior_s1_s2.branch_1.{k}.branch.{0,1,3}.*``                 ``context.s12_prior.body.{k}.{dwconv,mlp.0,mlp.2}.*``
``y_spatial_prior_s1_s2.branch_2.{k}.branch.{0,1,3}.*``                 ``context.s12_prior.head.{k}.{dwconv,mlp.0,mlp.2}.*``
``y_spatial_prior_s1_s2.branch_2.{last}.*`` (1x1 conv 3M->2M)           ``context.s12_prior.head.{last}.*``
same for ``y_spatial_prior_s3`` -> ``context.s3_prior``
``adaptive_params_list.{k}`` ``[1, 3M, 1, 1]`` (k = 0..9)              row ``k`` of ``context.step_gains`` ``[10, 3M]``
``attn_s{1,2,3}.conv_{q,k,v,out}.*``                                   ``context.s{1,2,3}_attn.{q,k,v,out}.*``
``context_net.{0,1}.*``                                                ``context.context_net.{0,1}.*``
``means_hyper`` / ``scales_hyper`` ``[1, N, 1, 1]``                    ``entropy_bottleneck.means`` / ``.scales``
``entropy_estimation.beta`` ``[1]``                                    ``gaussian_conditional.beta``, ``entropy_bottleneck.beta``
``entropy_estimation.scale_lower_bound.bound`` ``[1]`` (0.12)          ``{gaussian_conditional,entropy_bottleneck}.lower_bound_scale.bound``, ``gaussian_conditional.scale_bound``
``entropy_estimation.likelihood_lower_bound.bound`` ``[1]`` (1e-9)     ``{gaussian_conditional,entropy_bottleneck}.likelihood_lower_bound.bound``
``scale_table``, ``{quantized_cdf,cdf_length,offset}_{y,z}``           not mapped: coder tables, rebuilt by ``update()``
=====================================================================  ===================================

The adaptor relabelling: the official loop uses ``list[i - 1]`` with ``i = 0, 1, 2`` (s2) and
``0..5`` (s3), so its adaptor ``k`` serves the scale's ``(k + 1) mod n``-th new step; here adaptor
``r`` serves the ``r``-th (:mod:`finetune_kit.tasks.compression.models.hpcm.paper_schedule`).
Base: 268 mapped tensors + 10 gains; Large: 334 + 10 (plus the 2 hyper parameters and 3
entropy-model buffers above, fanned out to both of our entropy models where both have them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor

__all__ = ["FANOUT", "ConversionReport", "convert_official_state_dict", "official_key_to_ours", "CODER_TABLE_KEYS",
           "ARCH_PRESETS"]

#: official architecture name -> our preset
ARCH_PRESETS = {"base": "hpcm-base", "large": "hpcm-large"}
#: official buffers written by ``update()``; rebuilt by our ``update()``, never mapped
CODER_TABLE_KEYS = ("scale_table", "quantized_cdf_z", "cdf_length_z", "offset_z",
                    "quantized_cdf_y", "cdf_length_y", "offset_y")

_BLOCK = {"0.pconv": "pconv", "0": "dwconv", "1": "mlp.0", "3": "mlp.2"}


def _block_part(rest: str) -> str | None:
    """``branch.0.pconv.weight`` -> ``pconv.weight`` (inside a PConvRB / DWConvRB)."""
    m = re.fullmatch(r"branch\.(0\.pconv|0|1|3)\.(weight|bias)", rest)
    return f"{_BLOCK[m.group(1)]}.{m.group(2)}" if m else None


def official_key_to_ours(key: str, prior_depths: Mapping[str, tuple[int, int]]) -> str | None:
    """Our key for one official key (see the module table), or None if it has no counterpart.

    Args:
        key: an official state-dict key.
        prior_depths: ``{"s12": (before, after), "s3": (before, after)}`` depth-wise blocks of
            the two spatial priors (the preset's ``prior_s12`` / ``prior_s3``).
    """
    m = re.fullmatch(r"(g_a|g_s|h_a|h_s)\.branch\.(\d+)\.(.+)", key)
    if m:
        mod, idx, rest = m.groups()
        if rest in ("weight", "bias"):
            return f"{mod}.{idx}.{rest}"
        part = _block_part(rest)
        return f"{mod}.{idx}.{part}" if part else None
    m = re.fullmatch(r"y_spatial_prior_adaptor_list_s([123])\.(\d+)\.(weight|bias)", key)
    if m:
        s, k, p = m.group(1), int(m.group(2)), m.group(3)
        n = {"1": 1, "2": 3, "3": 6}[s]
        return f"context.s{s}_adaptor.{(k + 1) % n}.{p}"
    m = re.fullmatch(r"y_spatial_prior_(s1_s2|s3)\.branch_([12])\.(\d+)\.(.+)", key)
    if m:
        which, br, k, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        ours = "s12_prior" if which == "s1_s2" else "s3_prior"
        after = prior_depths["s12" if which == "s1_s2" else "s3"][1]
        part = "body" if br == "1" else "head"
        if br == "2" and k == after and rest in ("weight", "bias"):
            return f"context.{ours}.head.{k}.{rest}"
        blk = _block_part(rest)
        return f"context.{ours}.{part}.{k}.{blk}" if blk else None
    m = re.fullmatch(r"attn_s([123])\.conv_(q|k|v|out)\.(weight|bias)", key)
    if m:
        return f"context.s{m.group(1)}_attn.{m.group(2)}.{m.group(3)}"
    m = re.fullmatch(r"context_net\.([01])\.(weight|bias)", key)
    if m:
        return f"context.context_net.{m.group(1)}.{m.group(2)}"
    if key in FANOUT:
        return FANOUT[key][0]
    return {"means_hyper": "entropy_bottleneck.means", "scales_hyper": "entropy_bottleneck.scales"}.get(key)


#: official entropy-model keys copied to several of ours (the first is what :func:`official_key_to_ours` returns)
FANOUT = {
    "entropy_estimation.beta": ("gaussian_conditional.beta", "entropy_bottleneck.beta"),
    "entropy_estimation.scale_lower_bound.bound": ("gaussian_conditional.lower_bound_scale.bound",
                                                   "entropy_bottleneck.lower_bound_scale.bound",
                                                   "gaussian_conditional.scale_bound"),
    "entropy_estimation.likelihood_lower_bound.bound": ("gaussian_conditional.likelihood_lower_bound.bound",
                                                        "entropy_bottleneck.likelihood_lower_bound.bound"),
}


@dataclass
class ConversionReport:
    """What :func:`convert_official_state_dict` did.

    Attributes:
        mapped: official tensors copied (count, gains included).
        unmapped: official keys with no counterpart (coder tables excluded).
        skipped_tables: official coder-table buffers left out (rebuilt by ``update()``).
        uninitialised: our keys no official tensor filled (coder tables excluded).
        shape_mismatches: ``"official -> ours: (shape) vs (shape)"`` lines.
    """

    mapped: int = 0
    unmapped: list[str] = field(default_factory=list)
    skipped_tables: list[str] = field(default_factory=list)
    uninitialised: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every official tensor mapped, every one of ours filled, all shapes equal."""
        return not (self.unmapped or self.uninitialised or self.shape_mismatches)

    def summary(self) -> str:
        """One line for the CLI."""
        parts = [f"{self.mapped} tensors mapped", f"{len(self.skipped_tables)} coder tables skipped (rebuilt by update())"]
        for name, items in (("unmapped official", self.unmapped), ("uninitialised ours", self.uninitialised),
                            ("shape mismatches", self.shape_mismatches)):
            if items:
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                parts.append(f"{len(items)} {name}: {', '.join(items[:3])}{more}")
        return "; ".join(parts)


_OURS_TABLES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def convert_official_state_dict(official: Mapping[str, Tensor], model: torch.nn.Module) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map an official HPCM state dict onto ``model`` (an :class:`HPCM` of the matching preset).

    Args:
        official: the official ``state_dict`` (``module.`` prefixes already stripped).
        model: our HPCM; its state dict provides the target keys and shapes and the values of
            our own coder-table buffers (``_quantized_cdf``, ... which ``update()`` rebuilds).

    Returns:
        ``(state_dict, report)``: a complete state dict for ``model`` (its own values where the
        official file has none, i.e. only the coder tables when ``report.ok``) and the report.
    """
    ours = model.state_dict()
    p = model.preset
    depths = {"s12": tuple(p.prior_s12), "s3": tuple(p.prior_s3)}
    out: dict[str, Tensor] = {}
    rep = ConversionReport()
    gains: dict[int, Tensor] = {}
    for key, value in official.items():
        if key in CODER_TABLE_KEYS:
            rep.skipped_tables.append(key)
            continue
        m = re.fullmatch(r"adaptive_params_list\.(\d+)", key)
        if m:
            gains[int(m.group(1))] = value
            continue
        target = official_key_to_ours(key, depths)
        if target is None or target not in ours:
            rep.unmapped.append(key)
            continue
        if tuple(value.shape) != tuple(ours[target].shape):
            rep.shape_mismatches.append(f"{key} -> {target}: {tuple(value.shape)} vs {tuple(ours[target].shape)}")
            continue
        out[target] = value.detach().to(ours[target].dtype).clone()
        rep.mapped += 1
        for extra in FANOUT.get(key, ())[1:]:
            if extra in ours and tuple(ours[extra].shape) == tuple(value.shape):
                out[extra] = value.detach().to(ours[extra].dtype).clone()
    if "context.step_gains" in ours:
        g = ours["context.step_gains"]
        if sorted(gains) == list(range(g.shape[0])) and all(v.numel() == g.shape[1] for v in gains.values()):
            out["context.step_gains"] = torch.stack([gains[k].reshape(-1) for k in range(g.shape[0])]).to(g.dtype)
            rep.mapped += len(gains)
        elif gains:
            rep.shape_mismatches.append(f"adaptive_params_list: {len(gains)} gains of "
                                        f"{sorted({v.numel() for v in gains.values()})} vs {tuple(g.shape)}")
    for key, value in ours.items():
        if key not in out:
            if key.rsplit(".", 1)[-1] not in _OURS_TABLES:
                rep.uninitialised.append(key)
            out[key] = value
    return out, rep
