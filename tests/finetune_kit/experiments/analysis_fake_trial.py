"""A stand-in for a task CLI in sweep tests: writes a real run folder through RunDir.

Usage: python analysis_fake_trial.py [--learning_rate X] [--ft_strategy S] [--num_epochs N] [--sleep S]
       [--fail_at E] --output_dir DIR --experiment_tag TAG

val_auroc per epoch = quality(strategy, lr) - 0.1 * (num_epochs - 1 - epoch), where quality is
highest for strategy "full" at lr 1e-3; ``--fail_at E`` raises at epoch E (status failed).

:data:`PROFILE` describes it to the sweep as a task would (the program is this script, so
its command is empty).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time


import finetune_kit.runs.run_dir as run_dir_module  # noqa: E402  (torch-free: finetune_kit.runs.atomic)
from finetune_kit.experiments.profiles import TaskProfile  # noqa: E402
from finetune_kit.runs.run_dir import RunDir, new_run_dir  # noqa: E402

#: This stand-in as a task profile: the flags below, objective val_auroc (higher is better).
PROFILE = TaskProfile(name="fake-trial", command=(), output_flag="--output_dir", name_flag="--experiment_tag",
                      metric="val_auroc", mode="max", rank_metrics=("test_auroc", "val_auroc"),
                      metric_modes={"test_auroc": "max"})
#: The program that runs it.
PROGRAM = [sys.executable, __file__]


def _light_environment() -> dict:
    return {"pid": os.getpid(), "host": os.uname().nodename, "argv": sys.argv}


def quality(strategy: str, lr: float) -> float:
    base = {"linear": 0.7, "full": 0.8}.get(strategy, 0.6)
    return base + 0.15 - 0.05 * abs(math.log10(lr) + 3)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--learning_rate", type=float, default=1e-3)
    ap.add_argument("--ft_strategy", default="full")
    ap.add_argument("--num_epochs", type=int, default=3)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--fail_at", type=int, default=-1)
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--experiment_tag", required=True)
    args = ap.parse_args()
    run_dir_module.environment_info = _light_environment  # only in this stand-in process, never on import
    run = RunDir(new_run_dir(args.output_dir, args.experiment_tag))
    run.start(vars(args))
    q = quality(args.ft_strategy, args.learning_rate)
    try:
        for epoch in range(args.num_epochs):
            time.sleep(args.sleep)
            if epoch == args.fail_at:
                raise RuntimeError(f"scripted failure at epoch {epoch}")
            run.log_epoch({"epoch": epoch, "val_auroc": q - 0.1 * (args.num_epochs - 1 - epoch),
                           "val_loss": 1 - q + 0.1 * (args.num_epochs - 1 - epoch), "lr": args.learning_rate})
        run.write_json("metrics.json", {"test_auroc": q - 0.01, "epochs": args.num_epochs})
        run.set_status("completed")
    except Exception as exc:  # noqa: BLE001 - recorded like a task does
        run.set_status("failed", f"{type(exc).__name__}: {exc}")
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
