"""Every command in README.md and docs/*.md runs, and every ```python block executes.

Each documented ``finetune-kit`` / ``train_classification.py`` line is run in-process (typer's
CliRunner) with its flags verbatim, except:

- paths are swapped for small fixtures made of the real data (a few ACRIMA, fundus-dr, photos-train
  and Kodak images, downsized), placeholders (``RUN_FOLDER``, ``CKPT``, ``DIR`` ...) for a run or
  checkpoint this file makes first, and output folders for a temporary folder (the same path always
  maps to the same folder, so ``analyze runs/sweep`` reads what ``sweep --output_dir runs/sweep`` wrote);
- sizes are tiny: epochs, steps, image and patch sizes, batch sizes, trials, folds and sweep grids
  are overridden (appended when the line leaves them at their default).

A shell line that is not run is in ``SKIPPED`` with the reason (GPU, torchrun, a file we do not
have, long measurement scripts); a new kind of command in the docs fails
``test_every_shell_line_is_run_or_skipped_with_a_reason`` until it is run or listed. Python blocks
run in a folder holding ``runs/`` (a finished run), with the same path swaps and tiny sizes.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from finetune_kit.tasks.classification.cli import classify_app
from finetune_kit.tasks.cli import app
from tests.conftest import DATA, WEIGHTS
from tests.test_docs_commands import _PROGRAM, _SYNOPSIS, MANUALS, _command_lines, _shell_blocks, _words

pytestmark = pytest.mark.slow

#: shell lines not run here, by a pattern they contain -> the reason
SKIPPED = {
    "make ": "make demo / make test run the demo and this whole suite",
    "torchrun": "several processes (multi-node rendezvous); DDP equivalence is tested in tests/tasks/*/test_ddp_*",
    "--nproc": "several processes; DDP equivalence is tested in tests/tasks/*/test_ddp_*",
    "--cuda": "needs a GPU",
    "--device cuda": "needs a GPU",
    "convert-official": "needs an official HPCM checkpoint (github.com/lyq133/LIC-HPCM), not stored here",
    "hpcm-base-0.0067.pt": "the converted official checkpoint (see convert-official)",
    "hpcm-base-*.pt": "the converted official checkpoints (see convert-official)",
    "benchmarks/": "measurement scripts (minutes to hours); they print their own reference ratios",
    "HPCM_OFFICIAL_REPO": "needs a clone of the official HPCM code",
    "pip install": "installs packages",
    "uv ": "installs packages",
    "scripts/": "thin wrappers over the commands run here (tests/test_scripts*.py run them)",
    "pytest": "runs tests",
    "sweeps/balanced": "an example folder of a compression sweep no command here makes",
    "mkdir -p KODAK4": "prepares a 4-image Kodak folder; the commands get a fixture instead",
    "mkdir -p runs/fundus60": "prepares a 60-image ACRIMA folder for a benchmark script (skipped above)",
    "RETFound_cfp_weights.pth": "a ViT-L foundation checkpoint not stored here; tests/tasks/classification/"
                                "test_foundation_weights.py loads each layout written with random weights",
}

_SHARED = {
    "../shared/data/acrima/images": "acrima", "runs/acrima120": "acrima",
    "new_images/": "acrima", "external_set/": "acrima_classes", "../shared/data/fundus-dr/labels.csv": "fundus_csv",
    "../shared/data/fundus-dr": "fundus", "../shared/data/photos-train": "photos", "../shared/data/kodak": "kodak",
    "KODAK4": "kodak", "../shared/data/fundus-dr/pdr": "fundus_pdr", "external_labels.csv": "fundus_csv",
    "heldout/": "acrima",
}
#: size options -> tiny value
_TINY = {"--num_epochs": "1", "--num-epochs": "1", "--epochs": "1", "--steps-per-epoch": "2", "--steps_per_epoch": "2",
         "--steps": "2", "--img_size": "32", "--img-size": "32", "--patch-size": "64", "--patch_size": "64",
         "--batch-size": "4", "--batch_size": "4", "-b": "4", "--trials": "1", "--workers": "1", "--parallel": "1",
         "--eval-limit": "1", "--folds": "2", "--linear_probe_epochs": "1", "--linear-probe-epochs": "1"}
#: appended when the line does not set them, per command
_APPEND = {
    "classify": ["--num-epochs", "1", "--img-size", "32", "--batch-size", "4", "--num-threads", "1", "--no-progress",
                 "--wandb", "disabled"],
    "compress train": ["--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2",
                       "--threads", "1", "--preset", "hpcm-tiny"],
    "compress eval": ["--threads", "1"],
    "compress compare": ["--steps", "2", "--epochs", "1", "--eval-limit", "1", "--threads", "1", "--batch-size", "2",
                         "--patch-size", "64"],
    "sweep": ["--trials", "1", "--workers", "1"],
}
_APPEND["compare"] = _APPEND["classify"]
_APPEND["compress finetune"] = [w for w in _APPEND["compress train"] if w not in ("--preset", "hpcm-tiny")]


def _shell_lines() -> list[tuple[str, str]]:
    """``(file, line)`` of every command line in the manuals' shell blocks (continuations joined)."""
    out = []
    for path in MANUALS:
        for block in _shell_blocks(path.read_text()):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split(" # ")[0].strip()
                if line and not line.startswith("#") and not re.match(r"^[A-Z][A-Z0-9_]*=(\"[^\"]*\"|\S+)$", line):
                    out.append((path.name, line))
    return out


def _skip_reason(line: str) -> str | None:
    return next((why for pattern, why in SKIPPED.items() if pattern in line), None)


def _small_copy(files, out: Path, side: int, keep_tree: Path | None = None) -> Path:
    """Real images, downsized so the longer side is ``side`` px (class folders kept under ``keep_tree``)."""
    for f in files:
        dest = out / (f.relative_to(keep_tree) if keep_tree else f.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        img = Image.open(f).convert("RGB")
        img.thumbnail((side, side))
        img.save(dest)
    return out


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """The fixtures the documented paths are swapped for, and the temporary folder outputs go to."""
    for sub in ("acrima/images", "fundus-dr", "photos-train", "kodak"):
        if not (DATA / sub).exists():
            pytest.skip(f"{DATA / sub} not found (real data lives in ../shared beside the repo)")
    root = tmp_path_factory.mktemp("docs_run")
    acrima = sorted((DATA / "acrima/images").iterdir())
    g, n = [p for p in acrima if "_g_" in p.name][:10], [p for p in acrima if "_g_" not in p.name][:10]
    fundus = [p for c in ("normal", "dme", "npdr", "pdr") for p in _one_per_patient(DATA / "fundus-dr" / c, 12)]
    places = {
        "acrima": _small_copy(g + n, root / "acrima", 96),
        "fundus": _small_copy(fundus, root / "fundus", 96, keep_tree=DATA / "fundus-dr"),
        "photos": _small_copy(sorted((DATA / "photos-train").iterdir())[:2], root / "photos", 128),
        "kodak": _small_copy(sorted((DATA / "kodak").iterdir())[:1], root / "kodak", 128),
        "root": root, "done": set(),
    }
    for p in places["acrima"].iterdir():  # the same images with class sub-folders (a labelled external set)
        (root / "acrima_classes" / ("glaucoma" if "_g_" in p.name else "normal")).mkdir(parents=True, exist_ok=True)
        os.symlink(p, root / "acrima_classes" / ("glaucoma" if "_g_" in p.name else "normal") / p.name)
    places["acrima_classes"] = root / "acrima_classes"
    real = (DATA / "fundus-dr" / "labels.csv").read_text().splitlines()  # path,label,patient_id,eye,DME,NPDR,PDR
    keep = {str(p.relative_to(DATA / "fundus-dr")) for p in fundus}
    (places["fundus"] / "labels.csv").write_text("\n".join([real[0]] + [r for r in real[1:] if r.split(",")[0] in keep])
                                                 + "\n")
    places["fundus_csv"] = places["fundus"] / "labels.csv"
    places["fundus_pdr"] = places["fundus"] / "pdr"
    run = _invoke(app, ["classify", "--data", str(places["acrima"]), "--label-preset", "acrima", "--ft-strategy",
                        "linear", "--custom-weights-path", str(WEIGHTS / "mobilenetv2_100.in1k_int8dequant.pth"),
                        "--output-dir", str(root / "fixture-runs"), *_APPEND["classify"]])
    places["run"] = next(p.parent for p in (root / "fixture-runs").glob("*/metrics.json"))
    _invoke(app, ["compress", "train", "--data", str(places["photos"]), "--output-dir", str(root / "fixture-ckpt"),
                  "--lambda", "0.0067", *_APPEND["compress train"]])
    places["ckpt"] = sorted((root / "fixture-ckpt").glob("*/checkpoints/last.pt"))[0]
    assert run is not None
    return places


def _one_per_patient(folder: Path, n: int) -> list[Path]:
    """The first image of each of the first ``n`` patients (file names ``<patient>_<eye>_...``)."""
    seen, out = set(), []
    for p in sorted(folder.iterdir()):
        if p.name.split("_")[0] not in seen and len(out) < n:
            seen.add(p.name.split("_")[0])
            out.append(p)
    return out


def _multilabel_run(places: dict) -> Path:
    """A finished tiny ``--task multilabel`` run on the fundus fixture (made on first use)."""
    if "ml_run" not in places:
        out = places["root"] / "fixture-ml-runs"
        _invoke(app, ["classify", "--data", str(places["fundus_csv"]), "--task", "multilabel", "--label-columns",
                      "DME,NPDR,PDR", "--group-column", "patient_id", "--ft-strategy", "linear",
                      "--custom-weights-path", str(WEIGHTS / "mobilenetv2_100.in1k_int8dequant.pth"),
                      "--output-dir", str(out), *_APPEND["classify"]])
        places["ml_run"] = next(p.parent for p in out.glob("*/metrics.json"))
    return places["ml_run"]


def _invoke(target, args: list[str]):
    result = CliRunner().invoke(target, args, catch_exceptions=True)
    if result.exit_code != 0:
        tail = "\n".join((result.output or "").splitlines()[-15:])
        raise AssertionError(f"exit {result.exit_code}: {shlex.join(args)}\n{tail}\n{result.exception!r}")
    return result


def _swap(word: str, places: dict, command: str) -> str | list[str]:
    """A documented path -> its fixture; a glob that matches what an earlier command wrote -> the
    matches (as the shell expands it); other paths that do not exist -> a folder under the temporary root."""
    if "*" in word and glob.glob(word):
        return sorted(glob.glob(word))
    for doc, key in _SHARED.items():
        if word == doc or word.rstrip("/") == doc.rstrip("/"):
            return str(places[key])
    if word.startswith("../shared/weights/"):
        return str(Path(WEIGHTS, word.split("../shared/weights/", 1)[1]))
    if "multilabel/RUN_FOLDER" in word:
        return str(_multilabel_run(places))
    if "RUN_FOLDER" in word or "COMPARE_FOLDER/" in word:  # COMPARE_FOLDER/full: one strategy's run of a comparison
        return str(places["run"])
    if word in ("CKPT", "$B") or word.endswith(".pt") and not glob.glob(word):  # $B: a checkpoint variable
        return str(places["ckpt"])
    if word == "DIR":
        return str(places["photos" if command.startswith("compress") else "acrima"])
    if ("/" in word or word.isupper()) and "," not in word and not word.startswith("-") and not Path(word).exists():
        return str(places["root"] / "out" / re.sub(r"[^\w.-]+", "_", word.strip("/")))
    return word


_OUTPUTS = {"--output_dir", "--output-dir", "--output", "-o", "--save_path", "--save-path"}


def _swap_all(words: list[str], places: dict, command: str) -> list[str]:
    """Every word swapped; an output option's value always goes to the temporary root."""
    out = []
    for i, w in enumerate(words):
        if i and words[i - 1] in _OUTPUTS:
            out.append(str(places["root"] / "out" / re.sub(r"[^\w.-]+", "_", w.strip("/"))))
        else:
            new = _swap(w, places, command)
            out += new if isinstance(new, list) else [new]
    return out


def _tiny(words: list[str], command: str) -> list[str]:
    """Sizes overridden to tiny values; the defaults of ``_APPEND[command]`` added when not given."""
    out, i = [], 0
    while i < len(words):
        w = words[i]
        out.append(w)
        if w in _TINY and i + 1 < len(words):
            out.append(_TINY[w])
            i += 2
            continue
        if w == "--lambda" and command == "compress compare" and "," in words[i + 1]:
            out.append(words[i + 1].split(",")[0])  # one lambda of the grid
            i += 2
            continue
        if w == "--param" and i + 1 < len(words) and "," in words[i + 1] and "(" not in words[i + 1]:
            out.append(words[i + 1].split(",")[0])  # a grid of one point
            i += 2
            continue
        i += 1
    given = {w.replace("_", "-") for w in out if w.startswith("-")}
    extra = _APPEND.get(command, [])
    for j, w in enumerate(extra):
        if w.startswith("-") and w.replace("_", "-") not in given and not (w == "--no-progress" and "--progress" in given):
            out.append(w)
            if j + 1 < len(extra) and not extra[j + 1].startswith("-"):
                out.append(extra[j + 1])
    return out


def _documented_runs() -> list[tuple[str, str]]:
    return [(where, line) for where, line in _command_lines() if not _skip_reason(line)]


def _run_id(i: int, where: str, line: str) -> str:
    """``README.md-03-compare``: file, position, the command's words (no spaces, for ``-k``)."""
    words = [w for w in _words(line)[1:3] if not w.startswith("-")] or ["classify"]
    return f"{where.split(':')[0]}-{i:02d}-{'-'.join(words[:2] if words[0] == 'compress' else words[:1])}"


@pytest.mark.parametrize("line", [pytest.param(line, id=_run_id(i, where, line))
                                  for i, (where, line) in enumerate(_documented_runs())])
def test_documented_command_runs(line, place, monkeypatch):
    monkeypatch.chdir(place["root"])  # default output folders (runs/...) land in the temporary root
    words = _words(line)
    target = classify_app() if words[0].endswith("train_classification.py") else app
    args = words[1:]
    command = "classify" if target is not app else " ".join(args[:2] if args[0] == "compress" else args[:1])
    if "--" in args:  # sweep -- <task options>: both halves tiny
        i = args.index("--")
        head, task = args[:i], args[i + 1:]
        task_cmd = {"classification": "classify"}.get(head[head.index("--task") + 1], "compress train")
        args = _tiny(_swap_all(head, place, command), command) + ["--"] + \
            _tiny(_swap_all(task, place, task_cmd), task_cmd)
    else:
        args = _tiny(_swap_all(args, place, command), command)
    key = (target is app, tuple(args))
    if key in place["done"]:
        pytest.skip("the same command (at tiny size) ran above")
    _invoke(target, args)
    place["done"].add(key)


def test_every_shell_line_is_run_or_skipped_with_a_reason():
    """A shell line in the manuals is a documented command (run above) or skipped with a reason."""
    run = {line for _, line in _command_lines()}
    loose = [f"{where}: {line}" for where, line in _shell_lines()
             if not _skip_reason(line) and not _SYNOPSIS.search(line) and not _PROGRAM.match(line)]
    assert not loose, "documented commands neither run nor skipped:\n" + "\n".join(loose)
    assert len(_documented_runs()) >= 20


def _python_blocks() -> list[tuple[str, str]]:
    out = []
    for path in MANUALS:
        blocks, current = [], None
        for line in path.read_text().splitlines():
            if current is None and re.match(r"^\s*```python\s*$", line):
                current = []
            elif current is not None and re.match(r"^\s*```\s*$", line):
                blocks.append("\n".join(current))
                current = None
            elif current is not None:
                current.append(line)
        out += [(f"{path.name}#{i}", b) for i, b in enumerate(blocks)]
    return out


@pytest.mark.parametrize("code", [pytest.param(code, id=where) for where, code in _python_blocks()])
def test_documented_python_block_runs(code, place, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(place["run"], runs / place["run"].name)
    monkeypatch.chdir(tmp_path)
    for doc, key in sorted(_SHARED.items(), key=lambda kv: -len(kv[0])):
        code = code.replace(f'"{doc}"', repr(str(place[key])))
    code = code.replace('"../shared/weights/', f'"{WEIGHTS}/')
    code = re.sub(r"\b(num_epochs|epochs)=\d+", r"\1=1", code)
    code = re.sub(r"\bimg_size=\d+", "img_size=32", code)
    exec(compile(code, "<docs python block>", "exec"), {"__name__": "__docs__"})
