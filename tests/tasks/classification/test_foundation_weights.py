"""Foundation checkpoints (MAE/RETFound, DINOv2, timm) load into timm ViTs through --custom-weights-path:
random-weight files written in each layout map every backbone key to the right tensor, a 384 px source
is interpolated into a 224 px model, a foreign layout is refused in one line, and RETFound's LLRD
(layer decay 0.65) comes out of the existing layer groups."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from finetune_kit.layer_groups import resolve_layer_groups
from finetune_kit.strategy import get_strategy
from finetune_kit.tasks.classification.foundation_weights import FoundationWeightsError, detect_layout, match_pooling
from finetune_kit.tasks.classification.model import build_model, head_param_names, load_custom_weights
from tests.conftest import WEIGHTS

NAME = "vit_tiny_patch16_224"


def _source(**kw) -> dict[str, torch.Tensor]:
    """The state dict of a random-weight ViT-Tiny (the 'foundation model'), without its head."""
    torch.manual_seed(123)
    sd = timm.create_model(NAME, num_classes=0, **kw).state_dict()
    return {k: v.clone() for k, v in sd.items()}


def _assert_backbone_equal(model, expected: dict[str, torch.Tensor], rep) -> None:
    own = model.state_dict()
    head = head_param_names(model)
    backbone = [k for k in own if k not in head]
    assert rep.missing == [] and rep.mismatched == [], rep.summary()
    assert rep.loaded == len(backbone), rep.summary()
    assert set(rep.reinitialized) == head
    for k in backbone:
        torch.testing.assert_close(own[k], expected[k], rtol=0, atol=1e-6, msg=k)  # 1e-6: DINOv2 cls + pos sum


def test_timm_layout_state_dict_wrapper(tmp_path):
    src = _source()
    torch.save({"state_dict": {**src, "head.weight": torch.zeros(1000, 192), "head.bias": torch.zeros(1000)}},
               tmp_path / "w.pth")
    model, rep = build_model(NAME, 2, custom_weights_path=str(tmp_path / "w.pth"))
    assert rep.layout == "timm"
    _assert_backbone_equal(model, src, rep)


def test_mae_pretraining_layout(tmp_path):
    """MAE/RETFound pre-training: 'model' wrapper, decoder and mask_token beside the encoder."""
    src = _source()
    extra = {"mask_token": torch.randn(1, 1, 128), "decoder_embed.weight": torch.randn(128, 192),
             "decoder_blocks.0.norm1.weight": torch.randn(128), "decoder_pos_embed": torch.randn(1, 197, 128),
             "decoder_norm.weight": torch.randn(128), "decoder_pred.weight": torch.randn(768, 128)}
    torch.save({"model": {**src, **extra}, "epoch": 799}, tmp_path / "mae.pth")
    model, rep = build_model(NAME, 2, custom_weights_path=str(tmp_path / "mae.pth"))
    assert rep.layout == "mae" and model.global_pool == "token"
    _assert_backbone_equal(model, src, rep)


def test_retfound_finetuned_layout_pools_like_its_source(tmp_path):
    """RETFound fine-tuned with global_pool: fc_norm instead of norm, its own 5-class head: the model
    pools the patch tokens through fc_norm, and the head is re-initialised."""
    src = _source()
    norm = {k.replace("norm.", "fc_norm.", 1): src.pop(k) for k in ("norm.weight", "norm.bias")}
    torch.save({"model": {**src, **norm, "head.weight": torch.randn(5, 192), "head.bias": torch.randn(5)}},
               tmp_path / "retfound.pth")
    model, rep = build_model(NAME, 2, custom_weights_path=str(tmp_path / "retfound.pth"))
    assert rep.layout == "mae" and model.global_pool == "avg" and isinstance(model.norm, torch.nn.Identity)
    _assert_backbone_equal(model, {**src, **norm}, rep)
    x = torch.randn(2, 3, 224, 224)
    feats = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), model.fc_norm(feats[:, 1:].mean(1)))
    # a run's checkpoint of this model loads back (predict, evaluate, export rebuild it): same pooling
    again, _ = build_model(NAME, 2)
    match_pooling(again, model.state_dict()).load_state_dict(model.state_dict())
    torch.testing.assert_close(again.eval()(x), model.eval()(x))


@pytest.mark.parametrize("chunked", [False, True])
def test_dinov2_layout_teacher_backbone_registers(tmp_path, chunked):
    """DINOv2 training checkpoint: teacher/student wrapper, backbone. prefix, ls1.gamma layer scale,
    register tokens outside the position embedding (its class position folded into cls_token by timm),
    mask_token, dino_head; optionally chunked blocks (blocks.C.N)."""
    kw = dict(init_values=1e-5, reg_tokens=4, no_embed_class=True)
    src = _source(**kw)
    pos_cls = torch.randn(1, 1, 192)
    dino = {k: v for k, v in src.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    dino.update({"register_tokens": src["reg_token"], "cls_token": src["cls_token"] - pos_cls,
                 "pos_embed": torch.cat([pos_cls, src["pos_embed"]], 1), "mask_token": torch.randn(1, 192)})
    if chunked:  # DINOv2's BlockChunk: chunk C holds blocks by their global index
        dino = {(f"blocks.{int(k.split('.')[1]) // 6}.{k[len('blocks.'):]}" if k.startswith("blocks.") else k): v
                for k, v in dino.items()}
    teacher = {f"backbone.{k}": v for k, v in dino.items()}
    teacher.update({"dino_head.mlp.0.weight": torch.randn(64, 192), "ibot_head.last_layer.weight": torch.randn(8, 64)})
    torch.save({"teacher": teacher, "student": {k: torch.zeros_like(v) for k, v in teacher.items()}},
               tmp_path / "dinov2.pth")
    model = timm.create_model(NAME, num_classes=2, **kw)
    rep = load_custom_weights(model, tmp_path / "dinov2.pth")
    assert rep.layout == "dinov2"
    assert "blocks.3.ls1.gamma" in model.state_dict()
    _assert_backbone_equal(model, src, rep)


def test_384px_source_interpolated_into_224px_model(tmp_path):
    torch.manual_seed(5)
    src = {k: v for k, v in timm.create_model(NAME, img_size=384, num_classes=0).state_dict().items()}
    torch.save({"model": {**src, "mask_token": torch.randn(1, 1, 128), "decoder_embed.weight": torch.randn(128, 192)}},
               tmp_path / "mae384.pth")
    model, rep = build_model(NAME, 2, custom_weights_path=str(tmp_path / "mae384.pth"), img_size=224)
    assert src["pos_embed"].shape == (1, 1 + 24 * 24, 192) and model.pos_embed.shape == (1, 1 + 14 * 14, 192)
    want = {**src, "pos_embed": resample_abs_pos_embed(src["pos_embed"], new_size=[14, 14], num_prefix_tokens=1)}
    _assert_backbone_equal(model, want, rep)


def test_layout_mapping_too_few_keys_is_one_line_error(tmp_path):
    """A DINOv2 ViT-Small file for a ViT-Tiny: every tensor mis-shaped -> refused, naming the layout."""
    torch.manual_seed(0)
    small = timm.create_model("vit_small_patch16_224", num_classes=0).state_dict()
    torch.save({"teacher": {f"backbone.{k}": v for k, v in {**small, "mask_token": torch.zeros(1, 384)}.items()}},
               tmp_path / "small.pth")
    with pytest.raises(FoundationWeightsError, match=r"dinov2 layout maps only \d+ of the \d+ backbone keys") as e:
        build_model(NAME, 2, custom_weights_path=str(tmp_path / "small.pth"))
    assert "\n" not in str(e.value)


def test_detect_layout():
    assert detect_layout({"blocks.0.norm1.weight": 0}) == "timm"
    assert detect_layout({"decoder_embed.weight": 0, "mask_token": 0}) == "mae"
    assert detect_layout({"blocks.0.0.norm1.weight": 0}) == "dinov2"


def test_llrd_at_retfound_layer_decay():
    """--llrd_decay 0.65 (RETFound's --layer_decay) on ViT-Tiny: the head gets 1, block i (0-11) gets
    0.65 ** (12 - i), the patch/position embedding 0.65 ** 13 -- RETFound's param_groups_lrd."""
    model = timm.create_model(NAME, num_classes=2)
    groups = resolve_layer_groups(model)
    strategy = get_strategy("full", llrd_decay=0.65)
    scale = {g["group_name"]: g["lr_scale"] for g in strategy.build_param_groups(groups)}
    assert math.isclose(scale["head"], 1.0)
    for i in range(11):
        assert math.isclose(scale[f"blocks.{i}"], 0.65 ** (12 - i)), (i, scale)
    assert math.isclose(scale[next(n for n in scale if n.startswith("blocks.11"))], 0.65)
    assert math.isclose(scale[groups[0].name], 0.65 ** 13) and groups[0].index == 0


def test_a_cnn_checkpoint_with_nested_block_keys_is_read_as_timm_layout():
    """MobileNetV2's ``blocks.0.0.`` keys look like DINOv2's chunked blocks; for a CNN the file is a
    timm state dict, loaded as it is and reported as such."""
    path = WEIGHTS / "mobilenetv2_100.in1k_int8dequant.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found (real weights live in ../shared/weights)")
    _, rep = build_model("mobilenetv2_100", 2, pretrained=False, custom_weights_path=str(path))
    assert rep.layout == "timm" and not rep.missing and rep.loaded == 312
