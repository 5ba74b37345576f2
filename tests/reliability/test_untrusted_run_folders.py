"""Issue 24's findings that need more than one call: a full disk and a read-only output folder
(real ones, on a small tmpfs mounted in a user namespace), a kill during the first checkpoint save
followed by ``--resume`` (and a second ``--resume`` at the same time), every float option of every
config section refusing infinity, and a sweep storage whose schema is half-created.

The rest of the findings are rows of ``test_bad_input_table.py``.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from finetune_kit.runs.faults import FAULT_ENV
from finetune_kit.tasks.config_base import ConfigSection
from tests.reliability.bad_input_cases import Refused, cli
from tests.reliability.generated import class_folders

ROOT = Path(__file__).resolve().parents[2]

#: every module that defines configuration sections (the walk below also finds sections defined elsewhere
#: once imported, through ConfigSection's subclasses)
CONFIG_MODULES = ("finetune_kit.tasks.classification.config", "finetune_kit.tasks.compression.config",
                  "finetune_kit.tasks.compression.finetune.config", "finetune_kit.tasks.compression.compare.config")


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_namespace = pytest.mark.skipif(not _namespaces_work(), reason="needs `unshare -rm` (user and mount namespaces) "
                                     "to mount a small or read-only tmpfs without root")


def _in_small_fs(mount: Path, code: str, options: str) -> subprocess.CompletedProcess:
    """Run python ``code`` with a fresh tmpfs (``options``, e.g. ``size=1m`` or ``ro``) on ``mount``."""
    mount.mkdir(parents=True, exist_ok=True)
    script = f"mount -t tmpfs -o {options} tmpfs {mount} && exec {sys.executable} -c \"$0\""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, code], capture_output=True, text=True, env=env,
                          timeout=300)


@needs_namespace
def test_full_disk_is_one_line_naming_the_folder_and_the_fix(tmp_path):
    """Finding 4: a real ENOSPC during ``torch.save`` (which hides it behind "unexpected pos") is one
    line with the folder, the size and the fix; the previous checkpoint still loads."""
    code = f"""
import json, torch
from finetune_kit.runs.checkpoint import CheckpointManager, load_checkpoint
m = CheckpointManager({str(tmp_path / 'fs' / 'checkpoints')!r}, keep_last=1, keep_best=0)
m.save({{"w": torch.ones(1000)}}, 1)
try:
    m.save({{"w": torch.zeros(1_000_000)}}, 2)
    out = {{"error": None}}
except OSError as exc:
    out = {{"error": str(exc), "type": type(exc).__name__, "errno": exc.errno}}
out["last"] = float(load_checkpoint(m.directory / "last.pt")["w"][0])
out["files"] = sorted(p.name for p in m.directory.iterdir())
print(json.dumps(out))
"""
    r = _in_small_fs(tmp_path / "fs", code, "size=1m")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["type"] == "DiskWriteError" and out["errno"] == 28, out
    msg = out["error"]
    assert "\n" not in msg and "unexpected pos" not in msg
    assert f"in {tmp_path / 'fs' / 'checkpoints'}: no space left on device (needs about 4.0 MB" in msg, msg
    assert "free space there or write the run to another output folder" in msg
    assert out["last"] == 1.0 and out["files"] == ["checkpoints.json", "epoch_0001.pt", "last.pt"], out


@needs_namespace
def test_read_only_output_folder_is_one_line(tmp_path):
    """An output folder on a read-only file system: ``classify`` ends with one line naming it."""
    data = class_folders(tmp_path / "data", 6, 40)
    out = tmp_path / "ro"
    code = (f"import sys; sys.argv = ['finetune-kit', 'classify', '--data', {str(data)!r}, '--model_name', 'resnet18', "
            f"'--img_size', '32', '--num_epochs', '2', '--output_dir', {str(out / 'runs')!r}, '--num_threads', '1', "
            "'--no-progress']; from finetune_kit.tasks.cli import app; app()")
    r = _in_small_fs(out, code, "ro")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and r.stderr.strip().endswith(errors[0]), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"in {out / 'runs'}: read-only file system; make the folder writable or write the run to" in errors[0]


def _classify_args(data: Path, out: Path) -> list[str]:
    return ["classify", "--data", str(data), "--model_name", "resnet18", "--img_size", "32", "--num_epochs", "2",
            "--batch_size", "4", "--output_dir", str(out), "--num_threads", "1", "--no-progress", "--ft_strategy",
            "full"]


def test_kill_in_the_first_save_resumes_and_a_second_resume_is_refused(tmp_path, capfd):
    """Finding 6: SIGKILL while the first checkpoint is written leaves a temp file and status
    ``running``; ``--resume RUN`` now starts the run again in its folder (the temp file goes, the
    status ends ``completed``). While one process runs on the folder, a second ``--resume`` is
    refused with one line (exit 2) and changes nothing."""
    data = class_folders(tmp_path / "data", 12, 48)
    env = {**os.environ, "OMP_NUM_THREADS": "1", FAULT_ENV: "mid_write@1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "finetune_kit.tasks.cli", *_classify_args(data, tmp_path / "out")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    run = next((tmp_path / "out").iterdir())
    assert json.loads((run / "status.json").read_text())["status"] == "running"
    assert list((run / "checkpoints").glob(".epoch_0001.pt.*.tmp")) and not list(run.glob("checkpoints/*.pt"))

    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from finetune_kit.runs.checkpoint_index import hold_folder; "
                               f"lock = hold_folder(Path({str(run / 'checkpoints')!r})); print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"held"
        before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
        with pytest.raises(Refused) as refused:
            cli(["classify", "--resume", str(run)], capfd)
        assert refused.value.code == 2 and "is in use by another process" in str(refused.value)
        assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before
    finally:
        holder.communicate(b"", timeout=30)

    cli(["classify", "--resume", str(run)], capfd)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert not list(run.rglob(".*.tmp"))
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_compress_train_killed_in_the_first_save_starts_again_on_resume(tmp_path, capfd):
    """Finding 6 for ``compress train``: the same kill, then ``--resume RUN`` alone completes the run
    in its folder, without the temp file or the killed attempt's record."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    args = ["compress", "train", "--preset", "hpcm-tiny", "--data", str(photos), "--name", "t", "--epochs", "2",
            "--steps-per-epoch", "1", "--batch-size", "2", "--patch-size", "64", "--wandb", "disabled", "--no-progress",
            "--quality", "6", "--threads", "1", "--output-dir", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", FAULT_ENV: "mid_write@1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "finetune_kit.tasks.cli", *args], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    run = next((tmp_path / "out").iterdir())
    assert list((run / "checkpoints").glob(".epoch_0001.pt.*.tmp")) and not list(run.glob("checkpoints/*.pt"))
    cli(["compress", "train", "--resume", str(run)], capfd)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert not list(run.rglob(".*.tmp")) and (run / "checkpoints" / "epoch_0002.pt").is_file()
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def _sections() -> list[type[ConfigSection]]:
    for name in CONFIG_MODULES:
        importlib.import_module(name)
    found, todo = [], list(ConfigSection.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__name__}")


def _holds_float(annotation) -> bool:
    if annotation is float:
        return True
    return any(_holds_float(a) for a in typing.get_args(annotation))


def _input_name(cls, name: str) -> str:
    field = cls.model_fields[name]
    alias = field.validation_alias or field.alias
    if cls.model_config.get("populate_by_name") or alias is None:
        return name
    return alias if isinstance(alias, str) else alias.choices[0]


def test_every_float_option_of_every_config_section_refuses_infinity():
    """Finding 5 for every option: each float field (also Optional and lists of floats) of each
    ConfigSection refuses inf, -inf and nan, unless it declares ``allow_inf``."""
    sections = _sections()
    assert {"ClassificationConfig", "DataConfig", "TrainConfig", "FinetuneConfig", "EvalConfig",
            "CompareConfig"} <= {c.__name__ for c in sections}
    checked = 0
    for cls in sections:
        for name, field in cls.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if not _holds_float(field.annotation) or extra.get("allow_inf"):
                continue
            list_like = typing.get_origin(field.annotation) in (list, tuple) or any(
                typing.get_origin(a) in (list, tuple) for a in typing.get_args(field.annotation))
            for bad in (math.inf, -math.inf, math.nan):
                with pytest.raises(ValidationError) as info:
                    cls.model_validate({_input_name(cls, name): [bad] if list_like else bad})
                at_field = [e for e in info.value.errors() if e["loc"] and e["loc"][0] in (name, _input_name(cls, name))]
                assert at_field, f"{cls.__name__}.{name} accepted {bad}"
            checked += 1
    assert checked >= 40, checked


def test_half_created_sweep_storage_is_completed(tmp_path):
    """Finding 9, without timing: another process creates one of Optuna's tables between this
    process's check and its own creation (what a second worker, or ``analyze`` polling, does); the
    storage is completed and a study runs on it."""
    import optuna
    import sqlalchemy
    from optuna.storages._rdb import models

    from finetune_kit.experiments.sweep.config import make_storage

    def other_process(metadata, connection, **kw):
        models.TrialUserAttributeModel.__table__.create(connection)

    sqlalchemy.event.listen(models.BaseModel.metadata, "before_create", other_process, once=True)
    try:
        storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    finally:
        if sqlalchemy.event.contains(models.BaseModel.metadata, "before_create", other_process):
            sqlalchemy.event.remove(models.BaseModel.metadata, "before_create", other_process)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
