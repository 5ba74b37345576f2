"""Builders of the bad inputs in ``test_bad_input_table.py``: images, CSVs, config files and crafted
run folders, all small and generated on the spot (PIL, numpy, json), plus the command-line runner.

Every builder writes under the case's own ``tmp`` folder; ``victim`` is a folder outside every run
folder whose files must never change (the table checks it after each case).
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ACRIMA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "acrima" / "images"


class Refused(Exception):
    """A command ended with a non-zero exit code and exactly one ``error:`` line (its text)."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code = code


def cli(args: list[str], capfd) -> None:
    """Run ``finetune-kit ARGS`` in this process; raise :class:`Refused` with the one error line, or
    fail the test when the output is not one ``error:`` line (a traceback, several lines)."""
    from finetune_kit.tasks.cli import app

    capfd.readouterr()
    try:
        app(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("device:", "threads:", "WARNING"))]
    if code == 0:
        return
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line (exit {code}):\n{err}"
    raise Refused(code, lines[0])


# -- images -------------------------------------------------------------------------------------
def rgb(size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (RGB, 8 bit) over a few bytes of data: a
    decompression bomb's header (decoding it would allocate width*height*3 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 4096)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose SOF0 header is patched to claim ``width`` x ``height``."""
    save(Image.fromarray(rgb(16)), path, format="JPEG")
    data = bytearray(path.read_bytes())
    at = data.index(b"\xff\xc0")
    data[at + 5: at + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def sixteen_bit(path: Path, gray: bool = False) -> Path:
    import cv2

    shape = (40, 40) if gray else (40, 40, 3)
    cv2.imwrite(str(path), np.full(shape, 40000, np.uint16))
    return path


def acrima_image() -> Path:
    files = sorted(ACRIMA.glob("*.jpg")) if ACRIMA.is_dir() else []
    if not files:
        pytest.skip(f"the shared ACRIMA images are not at {ACRIMA} (a checkout without ../shared/data)")
    return files[0]


# -- CSVs ---------------------------------------------------------------------------------------
def csv_file(tmp: Path, images: Path, rows: list[str] | None = None, header: str = "path,label", *,
             encoding: str = "utf-8", newline: str = "\n", extra: list[str] = ()) -> Path:
    """``tmp/labels.csv`` listing the images of ``images`` (class folders normal/glaucoma) with
    absolute paths (``rows`` replaces them), then ``extra`` rows."""
    if rows is None:
        rows = [f"{p},{c}" for c in ("normal", "glaucoma") for p in sorted((images / c).iterdir())]
    f = tmp / "labels.csv"
    f.write_bytes(newline.join([header, *rows, *extra, ""]).encode(encoding))
    return f


def discover_csv(path: Path):
    from finetune_kit.tasks.classification.config import DataConfig
    from finetune_kit.tasks.classification.data import discover

    return discover(DataConfig(data=str(path)))


# -- crafted run folders ------------------------------------------------------------------------
def run_folder(tmp: Path, entries: list | dict | str | None = None, epochs: tuple[int, ...] = (1,)) -> Path:
    """``tmp/run`` with ``checkpoints/epoch_NNNN.pt`` for ``epochs`` (tiny real checkpoints) and a
    ``checkpoints.json`` holding ``entries`` (a list, a whole JSON value, or raw text)."""
    import torch

    from finetune_kit.runs.checkpoint import CheckpointManager

    run = tmp / "run"
    ck = run / "checkpoints"
    manager = CheckpointManager(ck, keep_last=3, keep_best=0)
    for e in epochs:
        manager.save({"epoch": e, "w": torch.full((2,), float(e))}, e)
    if entries is not None:
        text = entries if isinstance(entries, str) else json.dumps(
            {"entries": entries} if isinstance(entries, list) else entries)
        (ck / "checkpoints.json").write_text(text)
    return run


def open_manager(run: Path, **kw):
    from finetune_kit.runs.checkpoint import CheckpointManager

    return CheckpointManager(run / "checkpoints", keep_last=kw.pop("keep_last", 1), keep_best=0, **kw)


def resume_save(run: Path, epoch: int = 2) -> None:
    """What a resumed run does: open a manager and save the next epoch (retention prunes)."""
    import torch

    open_manager(run).save({"epoch": epoch, "w": torch.zeros(2)}, epoch)


def victim_files(victim: Path) -> dict[str, bytes]:
    return {str(p.relative_to(victim)): p.read_bytes() for p in sorted(victim.rglob("*")) if p.is_file()}


def make_victim(root: Path) -> Path:
    victim = root / "victim"
    (victim / "checkpoints").mkdir(parents=True)
    for name in ("v1.txt", "v2.txt", "v3.txt", "v4.txt", "epoch_0007.pt", ".epoch_0008.pt.x.tmp",
                 "checkpoints/epoch_0001.pt", "checkpoints/.epoch_0002.pt.x.tmp", "metrics.jsonl"):
        (victim / name).write_text(f"keep {name}")
    return victim


def symlink(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link
