"""Equivalence of our HPCM (paper presets) with the official code, on CPU, with the same random weights.

Usage::

    python benchmarks/hpcm_official_equivalence.py /path/to/LIC-HPCM [--arch base large]
        [--image ../shared/data/kodak/kodim01.png] [--crop 256] [--json out.json]

The official repository (github.com/lyq133/LIC-HPCM, MIT) is imported from the given path,
never copied. Its model needs CUDA and a Python-3.8 C++ extension; this script patches that at
run time only: ``torch.ones(..., device="cuda")`` in the constructor becomes CPU, and the
``src.entropy_models._CXX`` / ``unbounded_ans`` extensions are replaced by stand-ins (the
forward pass does not use them). Nothing in the official checkout is modified.

Steps: build the official model, give every tensor random values (gains, hyper means/scales
included), convert its state dict with our converter, run both forwards in eval mode on a
Kodak image (centre-padded to a multiple of 256 as the official ``test.py``), and report the
max abs differences of ``x_hat``, the likelihoods of y and z, and the scales and means
predicted at each of the 11 steps (plus whether the coded positions of every step agree).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_official_class", "compare", "official_commit"]


def official_commit(repo: str | Path) -> str:
    """``git rev-parse HEAD`` of the official checkout (``"unknown"`` when not a git work tree)."""
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def _stub_extensions() -> None:
    from compressai._CXX import pmf_to_quantized_cdf

    cxx = types.ModuleType("src.entropy_models._CXX")
    cxx.pmf_to_quantized_cdf = pmf_to_quantized_cdf
    ans = types.ModuleType("src.entropy_models.unbounded_ans")

    class _NoCoder:  # the official rANS coder is a Python-3.8 binary; not needed for forward()
        def __init__(self, *a, **k):
            raise RuntimeError("the official rANS extension is not available here")

    ans.ubransEncoder = ans.ubransDecoder = _NoCoder
    sys.modules["src.entropy_models._CXX"] = cxx
    sys.modules["src.entropy_models.unbounded_ans"] = ans


@contextlib.contextmanager
def _cpu_only():
    """Make ``torch.ones/zeros(..., device='cuda')`` build CPU tensors while the official model is constructed."""
    saved = {n: getattr(torch, n) for n in ("ones", "zeros")}

    def wrap(fn):
        def inner(*args, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return fn(*args, **kwargs)
        return inner

    for n, fn in saved.items():
        setattr(torch, n, wrap(fn))
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch, n, fn)


def load_official_class(repo: str | Path, arch: str = "base"):
    """The official ``HPCM`` class of ``src/models/HPCM_{Base,Large}.py`` in the checkout ``repo``.

    Raises:
        FileNotFoundError: ``repo`` has no ``src/models/HPCM_Base.py``.
    """
    repo = Path(repo).resolve()
    if not (repo / "src" / "models" / "HPCM_Base.py").is_file():
        raise FileNotFoundError(f"{repo} is not a checkout of github.com/lyq133/LIC-HPCM (no src/models/HPCM_Base.py)")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    for name in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        mod = sys.modules[name]
        if not str(getattr(mod, "__file__", "") or "").startswith(str(repo)) and not name.endswith(("_CXX", "unbounded_ans")):
            del sys.modules[name]
    _stub_extensions()
    module = importlib.import_module(f"src.models.HPCM_{arch.capitalize()}")
    cls = module.HPCM

    def build():
        with _cpu_only():
            return cls()
    return build


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("adaptive_params_list"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name == "scales_hyper":
                p.copy_(0.5 + 2 * torch.rand(p.shape, generator=g))
            elif name == "means_hyper":
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(p + 0.01 * torch.randn(p.shape, generator=g))


def _centre_pad(x: torch.Tensor, p: int = 256) -> torch.Tensor:
    from finetune_kit.tasks.compression.padding import pad_centred

    return pad_centred(x, p)[0]


def compare(repo: str | Path, arch: str, x: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    """Run both models on ``x [1, 3, H, W]`` (H, W multiples of 256) and return the max abs differences.

    Returns a dict with ``arch``, ``image_size``, ``x_hat``, ``likelihoods_y``, ``likelihoods_z``,
    ``y_hat``, ``steps`` (per step: ``positions_equal``, ``scales``, ``means``), ``conversion``
    (the converter's summary) and ``max_step_scales`` / ``max_step_means``.
    """
    from finetune_kit.tasks.compression.models.hpcm.model import HPCM
    from finetune_kit.tasks.compression.models.hpcm.official import ARCH_PRESETS, convert_official_state_dict

    torch.manual_seed(seed)
    official = load_official_class(repo, arch)()
    _randomize(official, seed)
    official.eval()
    ours = HPCM(ARCH_PRESETS[arch]).eval()
    sd, rep = convert_official_state_dict(official.state_dict(), ours)
    ours.load_state_dict(sd)

    rec_off: list[tuple] = []
    orig = official.process_with_mask

    def record_official(y, scales, means, mask):
        out = orig(y, scales, means, mask)
        rec_off.append((scales * mask, means * mask, mask.bool()))
        return out
    official.process_with_mask = record_official

    rec_ours: list[tuple] = []
    est = ours._estimate_step

    def record_ours(step, y, scales, means, mask):
        rec_ours.append((torch.where(mask, scales, 0.0), torch.where(mask, means, 0.0), mask.unsqueeze(0)))
        return est(step, y, scales, means, mask)
    ours._estimate_step = record_ours

    y_off: dict[str, torch.Tensor] = {}
    g_s = official.g_s.forward
    official.g_s.forward = lambda t: (y_off.__setitem__("y_hat", t), g_s(t))[1]
    y_ours: dict[str, torch.Tensor] = {}
    g_s2 = ours.g_s.forward
    ours.g_s.forward = lambda t: (y_ours.__setitem__("y_hat", t), g_s2(t))[1]

    with torch.no_grad():
        o = official(x)
        m = ours(x)

    def d(a, b):
        return float((a - b).abs().max())
    steps = []
    for (so, mo, ko), (su, mu, ku) in zip(rec_off, rec_ours):
        same = so.shape == su.shape and bool(torch.equal(ko.expand_as(so), ku.expand_as(su)))
        steps.append({"positions_equal": same, "scales": d(so, su) if same else None, "means": d(mo, mu) if same else None})
    res = {
        "arch": arch, "image_size": list(x.shape[-2:]), "conversion": rep.summary(), "conversion_ok": rep.ok,
        "x_hat": d(o["x_hat"], m["x_hat"]),
        "likelihoods_y": d(o["likelihoods"]["y"], m["likelihoods"]["y"]),
        "likelihoods_z": d(o["likelihoods"]["z"], m["likelihoods"]["z"]),
        "bits_y_official": float(-o["likelihoods"]["y"].log2().sum()),
        "bits_y_ours": float(-m["likelihoods"]["y"].log2().sum()),
        "y_hat": d(y_off["y_hat"], y_ours["y_hat"]),
        "steps": steps, "n_steps": len(steps),
    }
    ok = [s for s in steps if s["positions_equal"]]
    res["all_positions_equal"] = len(ok) == len(steps) == 11
    res["max_step_scales"] = max((s["scales"] for s in ok), default=None)
    res["max_step_means"] = max((s["means"] for s in ok), default=None)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("repo", help="path of a checkout of github.com/lyq133/LIC-HPCM")
    ap.add_argument("--arch", nargs="+", default=["base", "large"], choices=["base", "large"])
    ap.add_argument("--image", default=None, help="image (default: $FINETUNE_KIT_SHARED/data/kodak/kodim01.png)")
    ap.add_argument("--crop", type=int, default=0, help="centre crop side in px before padding (0: the whole image)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import os

    from PIL import Image
    import numpy as np

    img = args.image or os.path.join(os.environ.get("FINETUNE_KIT_SHARED", "../shared"), "data", "kodak", "kodim01.png")
    x = torch.from_numpy(np.asarray(Image.open(img).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    if args.crop:
        h, w = x.shape[-2:]
        t, l = (h - args.crop) // 2, (w - args.crop) // 2
        x = x[..., t:t + args.crop, l:l + args.crop]
    x = _centre_pad(x, 256)
    out = {"official_commit": official_commit(args.repo), "image": str(img), "torch": torch.__version__, "results": []}
    for arch in args.arch:
        r = compare(args.repo, arch, x)
        out["results"].append(r)
        print(f"{arch}: positions equal at all 11 steps: {r['all_positions_equal']}; max |diff| x_hat {r['x_hat']:.3g}, "
              f"y_hat {r['y_hat']:.3g}, step scales {r['max_step_scales']}, step means {r['max_step_means']}, "
              f"likelihoods y {r['likelihoods_y']:.3g}, z {r['likelihoods_z']:.3g}; bits y {r['bits_y_official']:.1f} "
              f"vs {r['bits_y_ours']:.1f}; conversion: {r['conversion']}")
    print(f"official commit {out['official_commit']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    ok = all(r["all_positions_equal"] and r["conversion_ok"] for r in out["results"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
