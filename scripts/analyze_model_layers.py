"""Per-module parameter counts, learning rates and frozen state of a compression model under the
``compress finetune`` options (thin wrapper over finetune_kit.tasks.compression.run.layer_analysis).

Usage::

    python scripts/analyze_model_layers.py --model hpcm-small --freeze-entropy --context-lr-ratio 0.1
    python scripts/analyze_model_layers.py --checkpoint RUN/checkpoints/best.pt --progressive-unfreeze --epoch 0 --depth 2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", "-m", help="model name, e.g. hpcm-small (default: the checkpoint's)")
    ap.add_argument("--checkpoint", type=Path, help="checkpoint whose model (and weights) to analyse")
    ap.add_argument("--depth", type=int, default=1, help="module depth of the rows (1: g_a, g_s ...; 2: g_a.0 ...)")
    ap.add_argument("--epoch", type=int, default=0, help="0-based epoch at which to read LRs and freezing (progressive)")
    ap.add_argument("--learning-rate", "--learning_rate", "--lr", dest="learning_rate", type=float, default=1e-5)
    ap.add_argument("--lr-mults", "--lr_mults", dest="lr_mults", default=None, help="e.g. g_a:1.0,context:0.1")
    ap.add_argument("--context-lr-ratio", "--context_lr_ratio", dest="context_lr_ratio", type=float, default=None)
    ap.add_argument("--freeze-entropy", "--freeze_entropy", dest="freeze_entropy", action="store_true")
    ap.add_argument("--freeze-pattern", "--freeze_pattern", dest="freeze_patterns", action="append", default=[])
    ap.add_argument("--progressive-unfreeze", "--progressive_unfreeze", dest="progressive_unfreeze", action="store_true")
    ap.add_argument("--unfreeze-schedule", "--unfreeze_schedule", dest="unfreeze_schedule", default="100,200")
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from finetune_kit.tasks.compression.run.layer_analysis import analyze_layers, format_rows, rows_as_dicts
    from finetune_kit.tasks.compression.finetune.lr_manager import DEFAULT_LR_MULTS, print_lr_table

    opts = {k: getattr(args, k) for k in ("learning_rate", "context_lr_ratio", "freeze_entropy", "freeze_patterns",
                                          "progressive_unfreeze", "unfreeze_schedule")}
    opts["lr_mults"] = args.lr_mults or DEFAULT_LR_MULTS
    try:
        rows, table = analyze_layers(args.model, args.checkpoint, depth=args.depth, epoch=args.epoch, **opts)
    except (ValueError, FileNotFoundError) as exc:
        ap.error(str(exc))
    print(format_rows(rows))
    print_lr_table(table, title=f"optimizer groups at epoch {args.epoch} (base LR {args.learning_rate:g})")
    if args.json:
        args.json.write_text(json.dumps(rows_as_dicts(rows), indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
