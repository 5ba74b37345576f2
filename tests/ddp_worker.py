"""The program the DDP tests start under torchrun (``python -m torch.distributed.run ... -m tests.ddp_worker``).

``python -m tests.ddp_worker TASK CONFIG.json OUT.json [--fail-after-epoch N] [--resume]``:
runs the task's real entry point with the config (``classify``: ``run_training``; ``compress``:
``compress train``; ``finetune``: ``compress finetune``) and writes, from every rank, what the
tests compare to ``OUT.json.rank<R>`` (results, weights digest, balanced ``w``). With
``--fail-after-epoch N`` rank 1 dies (``os._exit(3)``) at the end of epoch N + 1 (by then rank 0
has written epoch N's checkpoint), as a crashed
process would, to test that the job ends and resumes from rank 0's last checkpoint.
"""
from __future__ import annotations

import json
import os
import sys

import torch


def _die_after(n: int):
    rank = int(os.environ.get("RANK", 0))

    def hook(epoch_done: int) -> None:
        # at the end of epoch n + 1: rank 0 has passed that epoch's all-reduces, so it saved epoch n
        if rank == 1 and epoch_done >= n + 1:
            sys.stderr.flush()
            os._exit(3)
    return hook


def _classify(cfg_path: str, out: str, fail_after: int | None, resume: bool) -> dict:
    from finetune_kit.tasks.classification import loop
    from finetune_kit.tasks.classification.train import resume_config, run_training
    from tests.tasks.classification.conftest import small_config

    if fail_after is not None:
        die, end = _die_after(fail_after), loop.end_epoch

        def end_epoch(state, record):
            end(state, record)
            die(record["epoch"])
        loop.end_epoch = end_epoch
    spec = json.loads(open(cfg_path).read())  # {"data", "output_dir", **small_config overrides}
    if resume:
        cfg = resume_config(spec["run_dir"])
    else:
        cfg = small_config(spec.pop("data"), spec.pop("output_dir"), **spec)
    return run_training(cfg, resume=resume)


def _compress(kind: str, cfg_path: str, fail_after: int | None, resume: bool) -> dict:
    """``compress train`` (``kind`` "compress") or ``compress finetune`` ("finetune") on the spec's
    options; ``--resume`` continues ``spec["run_dir"]`` alone; ``--fail-after-epoch N`` kills rank 1
    at the end of epoch N + 1 (after its validation, i.e. after rank 0 saved epoch N)."""
    from finetune_kit.tasks.compression import engine
    from finetune_kit.tasks.compression.run import fit

    if fail_after is not None:
        die, evaluate = _die_after(fail_after), engine.evaluate
        calls = {"n": 0}

        def counting_evaluate(*a, **k):
            res = evaluate(*a, **k)
            calls["n"] += 1
            die(calls["n"] - 1)
            return res
        engine.evaluate = fit.evaluate = counting_evaluate
    spec = json.loads(open(cfg_path).read())  # the config's options, plus "run_dir" to --resume
    run_dir = spec.pop("run_dir", None)
    if resume:
        spec["resume"] = run_dir
    from finetune_kit.tasks.compression.run.config import FinetuneConfig, TrainConfig
    from finetune_kit.tasks.compression.run.loop import run

    return run((TrainConfig if kind == "compress" else FinetuneConfig).model_validate(spec))


def main(argv: list[str]) -> None:
    task, cfg_path, out = argv[:3]
    fail_after = int(argv[argv.index("--fail-after-epoch") + 1]) if "--fail-after-epoch" in argv else None
    resume = "--resume" in argv
    torch.set_num_threads(1)
    if task == "classify":
        res = _classify(cfg_path, out, fail_after, resume)
    elif task in ("compress", "finetune"):
        res = _compress(task, cfg_path, fail_after, resume)
    else:
        raise SystemExit(f"unknown task {task}")
    from finetune_kit.distributed import dist_info

    with open(f"{out}.rank{dist_info().rank}", "w") as fh:
        json.dump(res, fh, default=str)


if __name__ == "__main__":
    main(sys.argv[1:])
