"""Model building and weights files: formats, prefixes, head re-init, mismatch errors."""
from __future__ import annotations

import pytest
import torch

from finetune_kit.tasks.classification.model import ModelError, build_model, load_custom_weights


@pytest.fixture(scope="module")
def imagenet_like_resnet18():
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=1000)


def test_unknown_model_suggests_list_models():
    with pytest.raises(ModelError, match=r"unknown --model_name 'resnet181'.*timm.list_models\('\*resnet181\*'\)"):
        build_model("resnet181", 2)


def test_whole_checkpoint_with_module_prefix_and_head_reinit(imagenet_like_resnet18, tmp_path):
    sd = {f"module.{k}": v for k, v in imagenet_like_resnet18.state_dict().items()}
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 9, "state_dict": sd, "optimizer": {}}, path)
    model, rep = build_model("resnet18", 2, custom_weights_path=str(path))
    assert sorted(rep.reinitialized) == ["fc.bias", "fc.weight"] and not rep.missing and not rep.unexpected
    assert torch.equal(model.conv1.weight, imagenet_like_resnet18.conv1.weight)
    assert model.fc.weight.shape == (2, 512)
    assert "head re-initialised 2" in rep.summary()


def test_safetensors_and_model_key(imagenet_like_resnet18, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in imagenet_like_resnet18.state_dict().items()}, str(path))
    model, rep = build_model("resnet18", 2, custom_weights_path=str(path))
    assert rep.loaded > 100 and torch.equal(model.layer4[1].conv2.weight, imagenet_like_resnet18.layer4[1].conv2.weight)
    torch.save({"model": imagenet_like_resnet18.state_dict()}, tmp_path / "m.pth")
    assert build_model("resnet18", 2, custom_weights_path=str(tmp_path / "m.pth"))[1].loaded == rep.loaded


def test_wrong_weights_files_give_one_line_errors(imagenet_like_resnet18, tmp_path):
    junk = tmp_path / "notes.pth"
    junk.write_text("these are not weights")
    with pytest.raises(ModelError, match=r"notes.pth: not a readable weights file .*pass a PyTorch"):
        build_model("resnet18", 2, custom_weights_path=str(junk))
    with pytest.raises(ModelError, match="no such file"):
        build_model("resnet18", 2, custom_weights_path=str(tmp_path / "missing.pth"))
    torch.save(imagenet_like_resnet18.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match="another architecture; pick the matching --model_name"):
        build_model("mobilenetv2_050", 2, custom_weights_path=str(tmp_path / "r18.pth"))
    # a partly matching file (resnet34 has more blocks): error unless --allow-partial-weights
    import timm

    r34 = timm.create_model("resnet34", pretrained=False, num_classes=2)
    torch.save(r34.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ModelError, match="--allow-partial-weights"):
        build_model("resnet18", 2, custom_weights_path=str(tmp_path / "r34.pth"))
    model = timm.create_model("resnet18", pretrained=False, num_classes=2)
    rep = load_custom_weights(model, tmp_path / "r34.pth", allow_partial=True)
    assert rep.unexpected and rep.loaded > 0


def test_real_mobilenetv2_weights_load_strictly(weights_file):
    model, rep = build_model("mobilenetv2_100", 2, custom_weights_path=str(weights_file))
    assert rep.loaded == 312 and not rep.missing and not rep.unexpected and not rep.mismatched
    assert sorted(rep.reinitialized) == ["classifier.bias", "classifier.weight"]
