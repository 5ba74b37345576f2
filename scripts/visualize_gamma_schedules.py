"""The guides' name for drawing the gamma schedules: the same as scripts/plot_gamma_schedules.py
(every single-gamma and per-scale schedule, hpcm-guides and hierarchical-guides included).

Usage::

    python scripts/visualize_gamma_schedules.py --epochs 500 --gamma 0.003 --gamma_final 0.001 --out gamma.png
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plot_gamma_schedules import main  # noqa: E402

if __name__ == "__main__":
    main()
