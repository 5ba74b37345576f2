"""Helpers of the DDP tests: start ``tests.ddp_worker`` under torchrun, make tiny image folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def torchrun(task: str, spec: dict, out: Path, nproc: int, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run --standalone --nproc-per-node N -m tests.ddp_worker``
    with gloo on CPU (1 thread per process); returns the finished process (stdout+stderr in ``stdout``)."""
    cfg = out.with_suffix(".spec.json")
    cfg.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "tests.ddp_worker", task, str(cfg), str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def rank_results(out: Path, nproc: int) -> list[dict]:
    """What each rank of a worker run wrote (``OUT.rank<R>``)."""
    return [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(nproc)]


def fundus_folder(root: Path, per_class: int = 12, size: int = 48) -> Path:
    """An ImageFolder of generated fundus-like PNGs (``normal/``, ``glaucoma/``; synthetic, tiny)."""
    from PIL import Image

    from finetune_kit.tasks.classification.synthetic import make_synthetic_fundus

    rng = np.random.default_rng(0)
    for cls in ("normal", "glaucoma"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(make_synthetic_fundus(rng, size, cls == "glaucoma")).save(root / cls / f"{cls}_{i:02d}.png")
    return root
