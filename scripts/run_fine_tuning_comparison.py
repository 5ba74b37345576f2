#!/usr/bin/env python
"""Compare fine-tuning strategies on one data set and split (same as ``finetune-kit compare``).

    python scripts/run_fine_tuning_comparison.py --demo --output-dir runs/demo
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune_kit.tasks.classification.cli import main_compare  # noqa: E402

if __name__ == "__main__":
    main_compare()
