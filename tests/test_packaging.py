"""The built wheel, installed into a fresh virtual environment, works as a user would use it.

The wheel must claim only the ``finetune_kit`` import name (``strategies/`` and ``tasks/``
install as ``finetune_kit.strategies`` and ``finetune_kit.tasks``), so a user's own
``tasks.py`` / ``strategies.py`` in the working folder shadows nothing; the Kodak R-D anchors
ship inside the package. The environment is made with uv from the lock file's versions (uv's
cache makes this a matter of seconds once ``make test`` has synced ``.venv``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _uv() -> list[str]:
    if shutil.which("uv"):
        return [shutil.which("uv")]
    for py in ("python3", sys.executable):
        exe = shutil.which(py) or py
        if subprocess.run([exe, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [exe, "-m", "uv"]
    pytest.skip("uv is not installed (make test installs it): cannot build a fresh environment")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _images(folder: Path, n: int, size: int, seed: int, classes=None) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / classes[i % len(classes)] if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, size=(1, 1, 3)) if classes else 0
        img = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(sub / f"img{i:02d}.png")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from this checkout and the locked dependencies."""
    uv = _uv()
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    files = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    _run([*uv, "build", "--wheel", "--out-dir", tmp / "dist", src])
    wheel = next((tmp / "dist").glob("finetune_kit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"finetune_kit"}, f"the wheel claims import names besides finetune_kit: {top}"
    assert "finetune_kit/tasks/compression/anchors/kodak_rd.json" in names
    # the packaged reference set of the forgetting measures (issue 25), with its sources and licences
    assert "finetune_kit/tasks/classification/reference_images/README.md" in names
    assert sum(n.startswith("finetune_kit/tasks/classification/reference_images/") and n.endswith(".jpg")
               for n in names) == 50
    reqs = tmp / "requirements.txt"
    _run([*uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "-o", reqs], cwd=REPO)
    venv = tmp / "venv"
    _run([*uv, "venv", "--python", sys.executable, venv])
    _run([*uv, "pip", "install", "--python", venv / "bin" / "python", "-r", reqs, wheel])
    return venv


def test_wheel_runs_from_a_folder_with_its_own_tasks_and_strategies(installed, tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    for shadow in ("tasks.py", "strategies.py"):  # common in research code; must not be imported
        (work / shadow).write_text(f"raise RuntimeError('the user\\'s own {shadow} was imported')\n")
    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": ""}
    cli = installed / "bin" / "finetune-kit"

    out = _run([cli, "strategies"], cwd=work, env=env).stdout
    for name in ("linear", "gradual", "full", "progressive"):
        assert name in out

    _images(work / "fundus", 24, 48, seed=0, classes=("glaucoma", "normal"))
    _run([cli, "classify", "--data", "fundus", "--model_name", "resnet18", "--img_size", "32", "--num_epochs", "1",
          "--ft_strategy", "full", "--batch_size", "8", "--output_dir", "runs", "--experiment_tag", "wheel",
          "--wandb", "disabled", "--no-progress", "--num_threads", "1"], cwd=work, env=env)
    metrics = json.loads(next((work / "runs").glob("wheel*/metrics.json")).read_text())
    assert "test" in json.dumps(metrics)

    _images(work / "photos", 4, 96, seed=1)
    _run([cli, "compress", "train", "--data", "photos", "--model", "hpcm-tiny", "--epochs", "1", "--steps-per-epoch", "1",
          "--batch-size", "2", "--patch-size", "64", "--val-fraction", "0.25", "--output-dir", "runs/c", "--name", "tiny",
          "--wandb", "disabled", "--no-progress", "--threads", "1"], cwd=work, env=env)
    ckpt = next((work / "runs" / "c").rglob("last.pt"))
    _run([cli, "compress", "eval", ckpt, "--data", "photos", "--limit", "1", "--output", "eval", "--no-progress",
          "--threads", "1"], cwd=work, env=env)
    bd = json.loads((work / "eval" / "bd.json").read_text())
    assert bd.get("reason") != "no anchors file", bd  # the shipped anchors were found inside site-packages
    site = _run([installed / "bin" / "python", "-c", "import finetune_kit.tasks, sys; print(finetune_kit.tasks.__file__)"],
                cwd=work, env=env).stdout
    assert str(installed) in site and str(REPO) not in site
