"""Generated class folders for the reliability tests (random noise; glaucoma images carry a bright square)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def class_folders(root: Path, n: int = 12, size: int = 48) -> Path:
    """``root/normal/normal{i}.png`` and ``root/glaucoma/glaucoma{i}.png``, ``n`` each, ``size`` px, RGB."""
    rng = np.random.default_rng(0)
    for c in ("normal", "glaucoma"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            if c == "glaucoma":
                a[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 250
            Image.fromarray(a).save(root / c / f"{c}{i}.png")
    return root
