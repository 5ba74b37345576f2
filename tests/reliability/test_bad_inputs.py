"""The bad-input table: every case a careful user or an attacker tried ends in one ``error:`` line
on stderr naming the thing (no traceback), a non-zero exit code and - for input errors caught
before training - no run folder; or in the documented behaviour (CMYK, 16-bit images decode)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune_kit.tasks.cli import app

from tests.reliability.generated import class_folders  # noqa: E402

N_PER_CLASS = 12


def _images(root: Path, n: int = N_PER_CLASS, size: int = 48) -> Path:
    return class_folders(root, n, size)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return _images(tmp_path_factory.mktemp("good"))


def _run(args, capfd) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        app(args)
    err = capfd.readouterr().err
    return info.value.code, err


def _classify(data, out, *extra):
    return ["classify", "--data", str(data), "--model_name", "resnet18", "--img_size", "32", "--num_epochs", "1",
            "--batch_size", "4", "--output_dir", str(out), "--num_threads", "1", "--no-progress", *extra]


def _with(good: Path, tmp: Path, name: str, write) -> Path:
    """A copy (links) of the good folder plus one file written by ``write(path)``."""
    root = tmp / "data"
    for c in ("normal", "glaucoma"):
        (root / c).mkdir(parents=True)
        for p in (good / c).iterdir():
            (root / c / p.name).symlink_to(p)
    write(root / "normal" / name)
    return root


def _truncated_jpeg(p):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(p, "JPEG")
    p.write_bytes(p.read_bytes()[:40])


def _weights(tmp: Path, kind: str) -> Path:
    p = tmp / f"{kind}.pth"
    if kind == "wrong":
        torch.save({"fc.weight": torch.zeros(3, 3)}, p)
    elif kind == "garbage":
        p.write_bytes(b"\x00garbage" * 100)
    elif kind == "truncated":
        import timm

        torch.save(timm.create_model("resnet18", pretrained=False, num_classes=2).state_dict(), p)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "pickle":
        class Payload:
            def __reduce__(self):
                return (open, (str(tmp / "pwned"), "w"))
        torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, p)
    return p


def _csv(good: Path, tmp: Path, extra: str) -> Path:
    rows = [f"{c}/{p.name},{c}" for c in ("normal", "glaucoma") for p in sorted((good / c).iterdir())]
    f = good / f"labels-{abs(hash(extra))}.csv"
    f.write_text("path,label\n" + "\n".join(rows) + "\n" + extra)
    return f


# (case id, how to build the command from (good, tmp), substring the one error line must hold)
CASES = [
    ("truncated image", lambda g, t: _classify(_with(g, t, "x.jpg", _truncated_jpeg), t / "o"), "corrupt"),
    ("zero-byte image", lambda g, t: _classify(_with(g, t, "x.png", lambda p: p.write_bytes(b"")), t / "o"), "corrupt"),
    ("non-image", lambda g, t: _classify(_with(g, t, "x.jpg", lambda p: p.write_text("hello")), t / "o"), "corrupt"),
    ("1x1 image", lambda g, t: _classify(_with(g, t, "x.png", lambda p: Image.new("RGB", (1, 1)).save(p)), t / "o"),
     "is 1x1 px, below the minimum of 32x32 px"),
    ("8x8 image", lambda g, t: _classify(_with(g, t, "x.png", lambda p: Image.new("RGB", (8, 8)).save(p)), t / "o"),
     "is 8x8 px, below the minimum"),
    ("empty folder", lambda g, t: (t / "empty").mkdir() or _classify(t / "empty", t / "o"), "--data"),
    ("one class", lambda g, t: _classify(g / "normal", t / "o", "--layout", "imagefolder"), "class"),
    ("unknown strategy", lambda g, t: _classify(g, t / "o", "--ft_strategy", "nosuch"), "nosuch"),
    ("unknown model", lambda g, t: _classify(g, t / "o", "--model_name", "resnet_nosuch"), "unknown --model_name"),
    ("wrong weights", lambda g, t: _classify(g, t / "o", "--custom_weights_path", str(_weights(t, "wrong"))),
     "--custom_weights_path"),
    ("garbage weights", lambda g, t: _classify(g, t / "o", "--custom_weights_path", str(_weights(t, "garbage"))),
     "not a readable weights file"),
    ("truncated weights", lambda g, t: _classify(g, t / "o", "--custom_weights_path", str(_weights(t, "truncated"))),
     "not a readable weights file"),
    ("crafted pickle weights", lambda g, t: _classify(g, t / "o", "--custom_weights_path", str(_weights(t, "pickle"))),
     "--trust-pickled-weights"),
    ("overlapping patterns", lambda g, t: _classify(g, t / "o", "--ft_strategy", "gradual", "--layer_patterns", "^layer",
                                                     "--layer_patterns", "^layer4"), "two groups"),
    ("malformed regex", lambda g, t: _classify(g, t / "o", "--ft_strategy", "gradual", "--layer_patterns", "("),
     "--layer_patterns '('"),
    ("csv contradictory labels", lambda g, t: _classify(_csv(g, t, "normal/normal0.png,glaucoma\n"), t / "o"),
     "contradictory labels"),
    ("csv duplicate path", lambda g, t: _classify(_csv(g, t, "normal/normal0.png,normal\n"), t / "o"),
     "listed more than once"),
    ("csv unknown label", lambda g, t: _classify(_csv(g, t, "".join(f"normal/normal{i}.png,cataract\n" for i in range(4))),
                                                 t / "o"), "outside the declared classes"),
    ("csv case variant", lambda g, t: _classify(_csv(g, t, "glaucoma/glaucoma0.png,Normal\n"), t / "o"),
     "differ only in case"),
    ("bad preset", lambda g, t: ["compress", "train", "--preset", "hpcm-nosuch", "--data", str(g / "normal"),
                                 "--output-dir", str(t / "o")], "hpcm-nosuch"),
    ("negative lambda", lambda g, t: ["compress", "train", "--data", str(g / "normal"), "--lambda", "-1",
                                      "--output-dir", str(t / "o")], "lmbda"),
]


@pytest.mark.parametrize("case,build,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_line(good, tmp_path, capfd, case, build, expected):
    code, err = _run(build(good, tmp_path), capfd)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("device:", "WARNING"))]
    assert code not in (0, None), err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    out = tmp_path / "o"
    assert not out.exists() or not any(out.iterdir()), f"{case}: a run folder was left"
    assert not (tmp_path / "pwned").exists()


def test_cmyk_and_16_bit_images_decode_as_rgb(tmp_path):
    """Documented behaviour: CMYK JPEGs and 16-bit PNGs are valid images, decoded to RGB uint8."""
    import cv2

    from finetune_kit.tasks.classification.transforms import decode_image

    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((40, 40, 3), 40000, np.uint16))
    for name in ("cmyk.jpg", "deep.png"):
        img = decode_image(str(tmp_path / name))
        assert img.shape == (40, 40, 3) and img.dtype == np.uint8


@pytest.mark.slow
def test_nan_loss_and_name_escape(good, tmp_path, capfd):
    """A NaN loss stops the run naming the step, keeps no broken checkpoint, records ``failed`` with
    the printed line and puts the traceback in the run folder; ``evaluate --name`` with ``..``
    stays inside the run folder."""
    code, err = _run(_classify(good, tmp_path / "nan", "--learning_rate", "1e6", "--ft_strategy", "full",
                               "--num_epochs", "2"), capfd)
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(line) == 1 and "step" in line[0] and "Traceback" not in err, err
    run = next((tmp_path / "nan").iterdir())
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and line[0].startswith(f"error: {status['error']}")
    assert "Traceback" in (run / "traceback.log").read_text()
    for ck in (run / "checkpoints").glob("epoch_*.pt"):  # what was saved before the NaN still loads
        from finetune_kit.runs.checkpoint import load_checkpoint

        load_checkpoint(ck)

    code, err = _run(_classify(good, tmp_path / "ok", "--ft_strategy", "linear"), capfd)
    assert code in (0, None), err
    run = next((tmp_path / "ok").iterdir())
    code, err = _run(["evaluate", str(run), "--data", str(good), "--name", "x/../../../../escaped"], capfd)
    assert code in (0, None), err
    assert not list(tmp_path.rglob("escaped")) or all(run in p.parents for p in tmp_path.rglob("*escaped*"))
    assert [p.name for p in run.glob("eval-*")] == ["eval-x-..-..-..-..-escaped"]
