"""Forgetting in real runs (issue 25): measures, WiSE-FT, L2-SP and LoRA on the real ImageNet MobileNetV2
and real ACRIMA images (skipped with the reason when ../shared is absent)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tests.tasks.classification.conftest import small_config


def _cfg(acrima_flat, tmp_path, weights_file, **kw):
    base = dict(model_name="mobilenetv2_100", custom_weights_path=str(weights_file), label_preset="acrima",
                img_size=64, num_epochs=1, batch_size=8, split_seed=0)
    return small_config(acrima_flat, tmp_path, **{**base, **kw})


def _run(cfg):
    from finetune_kit.tasks.classification.train import run_training

    return run_training(cfg)


@pytest.fixture(scope="module")
def linear_run(acrima_flat, tmp_path_factory, weights_file):
    return _run(_cfg(acrima_flat, tmp_path_factory.mktemp("lin"), weights_file, ft_strategy="linear",
                     forgetting={"external_data": str(acrima_flat)}))


@pytest.fixture(scope="module")
def full_run(acrima_flat, tmp_path_factory, weights_file):
    return _run(_cfg(acrima_flat, tmp_path_factory.mktemp("full"), weights_file, ft_strategy="full",
                     learning_rate=3e-3, num_epochs=2))


def test_linear_probe_keeps_everything(linear_run):
    """The probe's backbone is untouched: retention 1.0, KL 0, CKA 1.0 and zero drift, known exactly
    without passing any image through the pretrained and the fine-tuned model (the probe's report cost)."""
    f = linear_run["forgetting"]
    r = f["retention"]
    assert r["source_head"] and r["source_classes"] == 1000
    assert r["n_reference"] == 0 and "backbone unchanged" in r["note"]
    assert r["top1_agreement"] == 1.0
    assert r["kl"] == pytest.approx(0.0, abs=1e-9)
    assert r["reference_cka"] == pytest.approx(1.0, abs=1e-9) and f["val_cka"] == pytest.approx(1.0, abs=1e-9)
    assert "stem" in f["drift"] and "head" not in f["drift"]  # the new head has no pretrained value
    assert max(f["drift"].values()) == 0.0
    assert (Path(linear_run["run_dir"]) / f["drift_figure"]).is_file()
    # external data: evaluated at the end with the test metrics and the run's calibrator
    ext = linear_run["external"]
    assert ext["n_images"] == 24 and 0.0 <= ext["metrics"]["auroc"] <= 1.0
    saved = json.loads((Path(linear_run["run_dir"]) / "metrics.json").read_text())
    assert saved["external"] == ext and (Path(linear_run["run_dir"]) / "eval-external" / "metrics.json").is_file()


def test_full_fine_tuning_moves_the_backbone(full_run, linear_run):
    f = full_run["forgetting"]
    assert f["retention"]["top1_agreement"] < 1.0 and f["retention"]["kl"] > 0.0
    assert max(v for k, v in f["drift"].items() if k != "head") > 1e-3
    assert 0 < f["seconds"] < 60  # a fixed cost (reference set + validation, twice); see docs/classification.md


def test_wise_ft_endpoints_reproduce_probe_and_fine_tuned_run(full_run, linear_run, tmp_path):
    """alpha = 1 gives the fine-tuned run's logits exactly; alpha = 0 the exact linear probe's
    predictions (the same probe, solved on the same split's features)."""
    from finetune_kit.tasks.classification.evaluate import load_trained
    from finetune_kit.tasks.classification.wise_ft import run_wise_ft

    res = run_wise_ft(full_run["run_dir"], alphas=[0.0, 0.5, 1.0], output=tmp_path / "wise")
    ft = np.load(Path(full_run["run_dir"]) / "logits.npz")
    assert np.array_equal(res["test_logits"][1.0], ft["test_logits"])
    assert np.array_equal(res["val_logits"][1.0], ft["val_logits"])
    lp = np.load(Path(linear_run["run_dir"]) / "logits.npz")
    np.testing.assert_allclose(res["test_logits"][0.0], lp["test_logits"], atol=1e-4)
    assert [g["alpha"] for g in res["grid"]] == [0.0, 0.5, 1.0]
    assert res["grid"][0]["retention"]["top1_agreement"] == 1.0
    assert res["alpha"] in (0.0, 0.5, 1.0)
    m = json.loads((tmp_path / "wise" / "metrics.json").read_text())
    assert m["wise_ft"]["alpha"] == res["alpha"] and m["calibration"]["method"]
    assert (tmp_path / "wise" / "frontier.png").is_file()
    model, cfg, classes, _, _ = load_trained(tmp_path / "wise")  # a run like any other
    assert classes == m["class_names"]


def test_wise_ft_bad_input(linear_run, acrima_flat, tmp_path):
    from finetune_kit.tasks.classification.train import run_training
    from finetune_kit.tasks.classification.wise_ft import run_wise_ft

    with pytest.raises(ValueError, match=r"alpha 1.5 is outside \[0, 1\]"):
        run_wise_ft(linear_run["run_dir"], alphas=[0.0, 1.5])
    with pytest.raises(ValidationError, match=r"alpha -0.1 is outside \[0, 1\]"):
        small_config(acrima_flat, tmp_path, forgetting={"wise_ft_alphas": [-0.1, 1.0]})
    scratch = run_training(small_config(acrima_flat, tmp_path, ft_strategy="linear", label_preset="acrima"))
    with pytest.raises(ValueError, match="no pretrained model") as exc:
        run_wise_ft(scratch["run_dir"])
    assert "\n" not in str(exc.value)
    # a run from random weights has no source head: the output says so
    assert scratch["forgetting"]["retention"]["source_head"] is False
    assert "no source head" in scratch["forgetting"]["retention"]["note"]


def test_reference_folder_without_images_is_one_line(acrima_flat, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(ValidationError, match="holds no image") as exc:
        small_config(acrima_flat, tmp_path, forgetting={"reference_data": str(tmp_path / "empty")})
    assert len(exc.value.errors()) == 1 and "\n" not in exc.value.errors()[0]["msg"]
    with pytest.raises(ValidationError, match="ALPHA"):
        small_config(acrima_flat, tmp_path, forgetting={"l2_sp": "big"})


@pytest.mark.slow
def test_l2sp_with_a_huge_alpha_keeps_the_backbone_near_w0(acrima_flat, tmp_path, weights_file):
    """Adam normalises the step, so the backbone moves ~lr per step either way; with a huge alpha the
    penalty's pull back to w0 dominates and the drift stays at that scale instead of growing."""
    spec = dict(ft_strategy="full", learning_rate=3e-3, num_epochs=3, batch_size=4)
    free = _run(_cfg(acrima_flat, tmp_path / "free", weights_file, **spec))
    res = _run(_cfg(acrima_flat, tmp_path / "sp", weights_file, forgetting={"l2_sp": "1e6,0.01"}, **spec))
    drift = max(res["forgetting"]["drift"].values())
    free_drift = max(free["forgetting"]["drift"].values())
    assert drift < 0.01 and drift < 0.5 * free_drift, (drift, free_drift)
    hist = [json.loads(x) for x in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert all("l2_sp_backbone" in h and "l2_sp_head" in h for h in hist)
    assert not any("l2_sp_backbone" in json.loads(x) for x in (Path(free["run_dir"]) / "metrics.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_lora_trainable_count_and_merge(acrima_flat, tmp_path, weights_file):
    """LoRA's trainable count is peft's plus the head; the merged model (what predict/evaluate load)
    gives the unmerged model's logits within 1e-4."""
    import timm
    from peft import LoraConfig, get_peft_model

    from finetune_kit.runs.checkpoint import load_checkpoint
    from finetune_kit.strategy import get_strategy
    from finetune_kit.tasks.classification.evaluate import load_trained

    res = _run(_cfg(acrima_flat, tmp_path, weights_file, ft_strategy="lora", learning_rate=3e-3,
                    strategy_kwargs={"lora_rank": 4}))
    run = Path(res["run_dir"])
    strategy = get_strategy("lora", lora_rank=4)
    model = strategy.prepare_model(timm.create_model("mobilenetv2_100", num_classes=2))
    ref = timm.create_model("mobilenetv2_100", num_classes=2)
    peft_model = get_peft_model(ref, LoraConfig(r=4, lora_alpha=8, target_modules=strategy.lora_config(ref).target_modules))
    adapters, _ = peft_model.get_nb_trainable_parameters()
    head = sum(p.numel() for p in model.get_classifier().parameters())
    trainable = round(res["trainable_fraction_final"] * res["total_params"])
    assert trainable == adapters + head
    ck = load_checkpoint(run / "checkpoints" / "best.pt")
    model.load_state_dict(ck["model"])
    model.eval()
    merged = load_trained(run)[0]
    assert not any("lora" in n for n, _ in merged.named_parameters())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(merged(x).numpy(), model(x).numpy(), atol=1e-4)
    assert res["forgetting"]["retention"]["top1_agreement"] > 0


def test_lora_targets_matching_nothing_is_one_line():
    import timm

    from finetune_kit.strategy import get_strategy

    with pytest.raises(ValueError, match="match no Linear/Conv2d module") as exc:
        get_strategy("lora", lora_targets="nosuchlayer").prepare_model(timm.create_model("mobilenetv2_100", num_classes=2))
    assert "\n" not in str(exc.value)


def test_packaged_reference_set():
    from finetune_kit.tasks.classification.forgetting_config import default_reference_dir, reference_images

    files = reference_images(None)
    assert len(files) >= 36 and all(f.suffix == ".jpg" for f in files)
    from PIL import Image

    assert max(max(Image.open(f).size) for f in files) <= 160
    readme = (default_reference_dir() / "README.md").read_text()
    assert "CC0" in readme and "public domain" in readme


@pytest.mark.slow
def test_two_process_lora_matches_one_process(tmp_path):
    """DDP LoRA (2 gloo processes x batch B/2) equals 1 process x batch B: adapters and head within 1e-5."""
    from finetune_kit.tasks.classification.train import run_training
    from tests.torchrun_helpers import fundus_folder, rank_results, torchrun

    spec = dict(ft_strategy="lora", strategy_kwargs={"lora_rank": 2, "lora_targets": "conv1"}, num_epochs=2,
                batch_size=4, bn_stats="frozen", augment="none", drop_rate=0.0, img_size=32, feature_cache=False,
                learning_rate=3e-3)
    data = fundus_folder(tmp_path / "images")
    torch.set_num_threads(1)
    one = run_training(small_config(data, tmp_path / "one", run_dir=str(tmp_path / "one" / "r"), **spec))
    proc = torchrun("classify", {"data": str(data), "output_dir": str(tmp_path / "two"),
                                 "run_dir": str(tmp_path / "two" / "r"), **spec}, tmp_path / "out.json", 2)
    assert proc.returncode == 0, proc.stdout[-3000:]
    r0, _ = rank_results(tmp_path / "out.json", 2)
    a = torch.load(tmp_path / "one" / "r" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "two" / "r" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert any(".lora_A." in k for k in a) and a.keys() == b.keys()
    # the stem's adapter trained (B starts at 0; the blocks' conv1 sit in residual branches that timm's
    # zero-initialised bn2 silences in a random ResNet, so theirs get no gradient)
    assert a["conv1.lora_B.default.weight"].abs().sum() > 0
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-5
    assert one["test"]["auroc"] == pytest.approx(r0["test"]["auroc"])
    assert one["trainable_fraction_final"] == pytest.approx(r0["trainable_fraction_final"])
    assert one["trainable_fraction_final"] < 0.5


def test_wise_ft_command_one_line_errors(finished_run, tmp_path):
    """``finetune-kit wise-ft`` on a run from random weights, or with an alpha outside [0, 1]: one line, exit 2."""
    from typer.testing import CliRunner

    from finetune_kit.tasks.cli import app

    for args, words in (([str(finished_run)], "no pretrained model"),
                        ([str(finished_run), "--wise-ft-alphas", "0,2"], "outside [0, 1]"),
                        ([str(tmp_path)], "pass a finished run folder")):
        res = CliRunner().invoke(app, ["wise-ft", *args])
        assert res.exit_code == 2, res.output
        errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and words in errors[0], res.output


def test_forgetting_section_from_a_config_file(tmp_path):
    """The ``forgetting`` section is read from ``--config FILE`` like any section (its command-line options
    are generated from the same fields: ``--l2-sp``, ``--wise-ft``, ``--wise-ft-alphas`` ...)."""
    from finetune_kit.tasks.classification.config import ClassificationConfig
    from finetune_kit.tasks.classification.config_files import classification_file_values

    path = tmp_path / "run.yaml"
    path.write_text("ft_strategy: lora\nstrategy_kwargs: {lora_rank: 4}\n"
                    "forgetting: {l2_sp: '0.1,0.01', wise_ft: true, wise_ft_alphas: [0, 0.5, 1]}\n")
    cfg = ClassificationConfig.model_validate(classification_file_values(path))
    assert cfg.forgetting.l2_sp_values == (0.1, 0.01) and cfg.forgetting.wise_ft
    assert cfg.forgetting.wise_ft_alphas == [0.0, 0.5, 1.0] and cfg.strategy_options() == {"lora_rank": 4}
    assert cfg.forgetting.reference_data is None and cfg.forgetting.measure_forgetting


@pytest.mark.slow
def test_lora_resume_and_predict(acrima_flat, tmp_path, weights_file):
    """A LoRA run stopped after epoch 1 and resumed equals the uninterrupted run; ``predict`` reads it."""
    from finetune_kit.tasks.classification.predict import predict_images
    from finetune_kit.tasks.classification.train import resume_config, run_training

    spec = dict(ft_strategy="lora", learning_rate=3e-3, num_epochs=2, strategy_kwargs={"lora_rank": 2})
    whole = _run(_cfg(acrima_flat, tmp_path / "a", weights_file, **spec))
    part = _run(_cfg(acrima_flat, tmp_path / "b", weights_file, stop_after_epoch=1, **spec))
    assert part["status"] == "interrupted"
    resumed = run_training(resume_config(part["run_dir"]), resume=True)
    assert resumed["test"] == whole["test"] and resumed["forgetting"]["retention"] == whole["forgetting"]["retention"]
    images = sorted(str(p) for p in acrima_flat.iterdir())[:3]
    out = predict_images(whole["run_dir"], images, output=tmp_path / "pred.csv")
    assert len(out.read_text().splitlines()) == 4  # header + 3 rows, from the merged model
