"""``finetune-kit export``: a finished run as one ONNX or TorchScript file that leaves Python.

The exported module takes a normalised image batch ``(B, 3, H, W)`` float32 (the run's eval
preprocessing, stated in the JSON sidecar) and returns calibrated class probabilities ``(B, C)``:
the run's best weights (EMA when the run kept one; LoRA adapters merged by
:func:`~finetune_kit.tasks.classification.evaluate.load_trained`) with the run's calibrator folded in
(:class:`CalibratedClassifier`). Beside the file: ``<file>.json`` (preprocessing, class names,
decision rule, calibrator, OOD statistics) and, when the run has an OOD detector, ``<file stem>.ood.npz``
(its class means, precision matrix and threshold on the penultimate features).

The command checks itself: the run's own test images (validation images when it has no test
split; up to ``check_images``) go through PyTorch and through the exported file (``onnxruntime`` /
the loaded TorchScript module) and the largest absolute difference of the probabilities must be at
most ``tolerance`` (default 1e-4), else :class:`ExportError`.

ONNX export uses PyTorch's TorchScript-based exporter (``torch.onnx.export(dynamo=False)``, opset
17, a dynamic batch axis), which works offline on CPU; TorchScript uses ``torch.jit.trace``.
"""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from finetune_kit.calibration import Calibrator
from finetune_kit.runs.checkpoint import atomic_write_text
from finetune_kit.runs.run_dir import RunDir
from finetune_kit.tasks.classification.data import read_split
from finetune_kit.tasks.classification.evaluate import load_calibrator, load_trained
from finetune_kit.tasks.classification.ood import OOD_FILE
from finetune_kit.tasks.classification.transforms import CachedImageDataset, ImageCache, normalize_batch

__all__ = ["ExportError", "ExportResult", "CalibratedClassifier", "EXPORT_FORMATS", "export_run", "check_exported",
           "run_onnx"]

#: the formats ``export --format`` writes, with their file suffix
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportError(ValueError):
    """A run that cannot be exported (unfinished, failed) or an export that fails its check; one line."""


@dataclass
class ExportResult:
    """What :func:`export_run` wrote and measured: the model file, the sidecar, the number of real
    images checked and the largest absolute probability difference to PyTorch."""

    path: Path
    sidecar: Path
    n_checked: int
    max_abs_diff: float
    tolerance: float


class CalibratedClassifier(nn.Module):
    """``model`` followed by the run's calibrator: normalised images ``(B, 3, H, W)`` -> calibrated
    probabilities ``(B, C)``, as :meth:`finetune_kit.calibration.Calibrator.probs` computes them.

    Temperature scaling: ``softmax(z / T)``; vector scaling: ``softmax(w * z + b)``; isotonic
    (binary): ``p1 = interp(softmax(z)[:, 1], x, y)`` written as a sum of clamped ramps
    ``y0 + sum_i s_i * clamp(p - x_i, 0, x_{i+1} - x_i)`` plus a step ``(y_{i+1} - y_i) [p > x_i]`` at a
    repeated knot (exact piecewise-linear interpolation with constant ends, as ``numpy.interp``,
    exportable without a search op), then clipped to ``[1e-6, 1 - 1e-6]``.
    """

    def __init__(self, model: nn.Module, calibrator: Calibrator):
        super().__init__()
        self.model, self.method = model, calibrator.method
        p = calibrator.params
        c = int(getattr(model, "num_classes", 2))
        scale = torch.ones(c)
        bias = torch.zeros(c)
        if self.method == "temperature":
            scale = scale / float(p["T"])
        elif self.method == "vector":
            scale, bias = torch.tensor(p["w"], dtype=torch.float32), torch.tensor(p["b"], dtype=torch.float32)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", bias.float())
        x = np.asarray(p.get("x", [0.0, 1.0]), np.float64)
        y = np.asarray(p.get("y", [0.0, 1.0]), np.float64)
        widths = np.diff(x)
        slopes = np.divide(np.diff(y), widths, out=np.zeros_like(widths), where=widths > 0)
        self.register_buffer("knots", torch.tensor(x[:-1], dtype=torch.float32))
        self.register_buffer("widths", torch.tensor(widths, dtype=torch.float32))
        self.register_buffer("slopes", torch.tensor(slopes, dtype=torch.float32))
        self.register_buffer("jumps", torch.tensor(np.where(widths > 0, 0.0, np.diff(y)), dtype=torch.float32))
        self.y0 = float(y[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(B, C)`` of normalised images ``(B, 3, H, W)``."""
        p = torch.softmax(self.model(x).float() * self.scale + self.bias, dim=1)
        if self.method != "isotonic":
            return p
        ramps = torch.minimum(torch.clamp(p[:, 1:2] - self.knots, min=0.0), self.widths)
        steps = (p[:, 1:2] > self.knots).float() * self.jumps  # repeated knots: a jump
        p1 = torch.clamp(self.y0 + (ramps * self.slopes + steps).sum(dim=1, keepdim=True), 1e-6, 1 - 1e-6)
        return torch.cat([1 - p1, p1], dim=1)


def _check_finished(run_path: Path) -> None:
    """Raises ExportError unless ``run_path`` is a completed classification run."""
    run = RunDir(run_path)
    status_file = run.path / "status.json"
    if not (run.path / "config.json").is_file() or not status_file.is_file():
        raise ExportError(f"{run.path}: not a run folder (no config.json/status.json); pass a folder written by "
                          "finetune-kit classify or one strategy's folder of a compare run")
    status = json.loads(status_file.read_text()).get("status")
    if status != "completed":
        fix = f"finish it with finetune-kit classify --resume {run.path}" if status in ("running", "interrupted") \
            else "train it again (finetune-kit rerun RUN)"
        raise ExportError(f"{run.path}: the run is {status}, not completed; {fix} before exporting")


def _check_images(run_path: Path, tf, n: int) -> tuple[list[str], torch.Tensor]:
    """Up to ``n`` of the run's test images (else validation) as a normalised batch ``(n, 3, H, W)``."""
    samples, _ = read_split(Path(run_path) / "split.csv")
    part = [s for s in samples if s.split == "test"] or [s for s in samples if s.split == "val"]
    paths = [s.path for s in part[:n]]
    cache = ImageCache(tf.cache_size)
    bad = set(cache.load(paths, skip_corrupt=True))
    paths = [p for p in paths if p not in bad]
    if not paths:
        raise ExportError(f"{run_path}/split.csv: no readable test or validation image to check the export against; "
                          "export a run whose split.csv lists its images")
    ds = CachedImageDataset(cache, paths, [0] * len(paths), tf.eval)
    images = np.stack([ds[i][0] for i in range(len(ds))])
    return paths, normalize_batch(torch.from_numpy(images), tf.mean, tf.std)


def run_onnx(path: str | Path, inputs: np.ndarray) -> np.ndarray:
    """Probabilities ``(B, C)`` of the exported ONNX file ``path`` on ``inputs`` ``(B, 3, H, W)`` float32,
    with ``onnxruntime`` on the CPU."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(inputs, np.float32)})[0]


def check_exported(path: str | Path, fmt: str, reference: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference between ``reference(inputs)`` and the exported file's output
    (``fmt``: ``onnx`` through onnxruntime, ``torchscript`` through ``torch.jit.load``)."""
    with torch.inference_mode():
        want = reference(inputs).numpy()
        if fmt == "onnx":
            got = run_onnx(path, inputs.numpy())
        else:
            got = torch.jit.load(str(path), map_location="cpu")(inputs).numpy()
    return float(np.abs(got - want).max()) if len(want) else 0.0


def _sidecar(run_path: Path, cfg, tf, class_names, calibrator: Calibrator, fmt: str, ood: Path | None) -> dict:
    metrics = RunDir(run_path).read_json("metrics.json") if (Path(run_path) / "metrics.json").is_file() else {}
    op = metrics.get("operating_point") or metrics.get("threshold")
    return {
        "format": fmt, "run": str(Path(run_path).resolve()), "model_name": cfg.model.model_name,
        "input": {"name": "image", "shape": ["batch", 3, tf.img_size, tf.img_size], "dtype": "float32",
                  "layout": "NCHW, RGB"},
        "output": {"name": "probs", "shape": ["batch", len(class_names)], "what": "calibrated class probabilities"},
        "preprocessing": {"size": tf.img_size, "resize_to": tf.cache_size, "crop": "center",
                          "interpolation": "area (cv2.INTER_AREA)", "fov_crop": "crop to the bright field of view "
                          "(max over RGB > 12) before resizing", "mean": list(tf.mean), "std": list(tf.std),
                          "scale": "x / 255, then (x - mean) / std per channel"},
        "class_names": list(class_names),
        "decision": {"rule": "argmax of probs" if op is None else "operating point", "operating_point": op},
        "calibration": calibrator.to_dict(),
        "ood": None if ood is None else {"statistics": ood.name, "score": "squared Mahalanobis distance of the "
                                         "penultimate features to the nearest class mean (not part of the "
                                         "exported graph)", "threshold": float(np.load(ood)["threshold"])},
    }


def export_run(run_path: str | Path, fmt: str = "onnx", *, output: str | Path | None = None, tolerance: float = 1e-4,
               check_images: int = 32) -> ExportResult:
    """Export a finished run (see the module docstring) to ``output`` (default ``RUN/model.onnx`` or
    ``RUN/model.pt``) and check it on up to ``check_images`` of the run's real images.

    Args:
        run_path: a completed classification run folder.
        fmt: ``onnx`` or ``torchscript``.
        tolerance: largest allowed absolute difference of the probabilities (0-1 scale).

    Raises:
        ExportError: unfinished/failed run, unknown format, no test/validation image to check on, or the
            check exceeds ``tolerance``.
        FileNotFoundError: no ``checkpoints/best.pt``.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format {fmt!r}: unknown export format; use one of {', '.join(EXPORT_FORMATS)}")
    run_path = Path(run_path)
    _check_finished(run_path)
    model, cfg, class_names, temperature, tf = load_trained(run_path, "cpu")
    calibrator = load_calibrator(run_path, temperature)
    wrapped = CalibratedClassifier(model, calibrator).eval()
    paths, inputs = _check_images(run_path, tf, check_images)
    out = Path(output) if output else run_path / f"model{EXPORT_FORMATS[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    example = inputs[:2]
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters' deprecation notices (torch.jit, TorchScript-based ONNX)
        if fmt == "onnx":
            torch.onnx.export(wrapped, (example,), str(out), dynamo=False, opset_version=17, input_names=["image"],
                              output_names=["probs"], dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}})
        else:
            torch.jit.trace(wrapped, example, check_trace=False).save(str(out))
        diff = check_exported(out, fmt, wrapped, inputs)
    if diff > tolerance:
        raise ExportError(f"{out}: exported {fmt} differs from PyTorch by {diff:.2e} > --tolerance {tolerance:g} on "
                          f"{len(paths)} of the run's images; export with --format torchscript or raise --tolerance")
    ood = None
    if (run_path / OOD_FILE).is_file():
        ood = out.with_name(f"{out.stem}.ood.npz")
        shutil.copyfile(run_path / OOD_FILE, ood)
    sidecar = _sidecar(run_path, cfg, tf, class_names, calibrator, fmt, ood)
    sidecar["check"] = {"images": len(paths), "max_abs_diff": diff, "tolerance": tolerance}
    side = atomic_write_text(json.dumps(sidecar, indent=2), out.with_name(out.name + ".json"))
    return ExportResult(out, side, len(paths), diff, tolerance)
